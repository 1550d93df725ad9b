"""Head artefacts on disk: a `.npz` that is byte-identical when rebuilt from the same data.

`np.savez` stamps each member with the current time, so an unchanged head would still change
the artefact's hash (and the bundle version derived from it). This writer fixes the member
times and order, and stores text fields as JSON strings (no pickles).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np


def save_artefact(path: Path, arrays: dict[str, np.ndarray], texts: dict[str, object]) -> Path:
    """Write arrays and JSON-able texts as a reproducible, pickle-free `.npz` (atomically)."""
    items = {**arrays, **{k: np.array(json.dumps(v, sort_keys=True, allow_nan=False)) for k, v in texts.items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(items):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.array(items[name], order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
    tmp.replace(path)
    return path
