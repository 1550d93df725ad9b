"""Hostile variants of a contract's golden JSON, for the refusal tests."""

from __future__ import annotations

import json

DROP = object()
"""As a value in `varied`: leave the field out."""


def varied(golden_json: str, **changes) -> bytes:
    """The golden payload with fields replaced (or dropped, with DROP), as bytes on the wire."""
    raw = json.loads(golden_json)
    for key, value in changes.items():
        if value is DROP:
            del raw[key]
        else:
            raw[key] = value
    return json.dumps(raw).encode()
