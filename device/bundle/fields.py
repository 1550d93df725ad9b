"""The manifest's field checks, each refusal a `BundleError` naming the key and the reason; and the
optional `branches[].cost` field (BranchCost), parsed here to keep manifest.py one reading long."""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BranchCost:
    """A branch's measured cost per analysis window (`branches[].cost`)."""

    ms_1_thread: float
    ms_2_threads: float
    macs: int | None = None


_COST_KEYS = ("ms_1_thread", "ms_2_threads", "macs")


def _parse_cost(raw: Any, where: str) -> BranchCost | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: expected an object {{ms_1_thread, ms_2_threads, macs}}")
    unknown = sorted(set(raw) - set(_COST_KEYS))
    if unknown:
        raise BundleError(f"{where}: unknown keys {unknown} (known: {list(_COST_KEYS)})")
    times = []
    for key in ("ms_1_thread", "ms_2_threads"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise BundleError(f"{where}.{key}: {value!r} is not a positive number of milliseconds")
        times.append(float(value))
    macs = raw.get("macs")
    if macs is not None and (isinstance(macs, bool) or not isinstance(macs, int) or macs < 0):
        raise BundleError(f"{where}.macs: {macs!r} is not a non-negative integer or null")
    return BranchCost(ms_1_thread=times[0], ms_2_threads=times[1], macs=macs)
