"""The manifest's field checks: each refusal a `BundleError` naming the key and the reason."""

from __future__ import annotations

import math
from typing import Any


class BundleError(ValueError):
    """A bundle the runtime refuses. The message names the file, key and reason."""


def _need(obj: dict, key: str, kind: type | tuple, where: str) -> Any:
    if not isinstance(obj, dict):
        raise BundleError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise BundleError(f"{where}.{key}: missing")
    value = obj[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BundleError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise BundleError(f"{where}.{key}: empty")
    return value


def _count(value: Any, kind: type, where: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
            or not math.isfinite(value) or value < 0:
        raise BundleError(f"{where}: {value!r} is not a count >= 0 or null")
    return kind(value)
