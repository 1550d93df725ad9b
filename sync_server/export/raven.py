"""Raven selection tables: one per recording source, zipped, for Raven Pro and the tools that read
its tables (crowsetta, opensoundscape, Koogu).

A selection table annotates one audio file, so detections are grouped by where their audio came
from: the device and its `source` (a recording file, or the live microphone's stream). Each table
is Raven's tab-separated text with its standard columns (Selection, View, Channel, Begin Time (s),
End Time (s), Low Freq (Hz), High Freq (Hz)) then ours: Species (the name a person reads, the
annotation column tools ask for: "Little Tinamou (Crypturellus soui)", and for a family-level
label "a cicada (Cicadidae)", never the family's plural as if it were a species; see
device/naming.py), Species Code (the label, as BirdNET's tables call it), Scientific Name, Common
Name (the taxonomy's, for a family its plural vernacular), Class, Taxon Rank, Confidence,
Verification, Bundle, Begin Date Time (UTC) and Detection ID. Times are the detection's offsets within its source, so a researcher
who opens the source file in Raven with the table sees each selection over its call.

The detections carry no frequency band (the models score whole windows), so each selection
spans the band the audio holds: 0 Hz to the Nyquist frequency of the clip when the server holds
one, else `DEFAULT_HIGH_FREQ_HZ`.

The archive also holds `index.tsv`: each table's file name, device, source and row count (a
file name cannot carry a whole source path).

Memory stays bounded: rows are appended to per-source files in a scratch folder as they stream
past (at most `OPEN_TABLES` files open at once), then the files are zipped.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from device.naming import taxon_name

COLUMNS = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
    "Species", "Species Code", "Scientific Name", "Common Name", "Class", "Taxon Rank", "Confidence",
    "Verification", "Bundle", "Begin Date Time (UTC)", "Detection ID",
)
ANNOTATION_COLUMN = "Species"
"""The column a reader names as the annotation (crowsetta: `annot_col`); the label itself is in
"Species Code"."""
VIEW = "Spectrogram 1"
CHANNEL = 1
"""The device records mono, and Raven numbers channels from 1."""
DEFAULT_HIGH_FREQ_HZ = 16_000.0
"""Upper edge of a selection whose clip the server lacks: the Nyquist frequency of 32 kHz, the
BirdCLEF rate the shared recordings and the demo models use (what the models could hear)."""
TABLE_SUFFIX = ".Table.1.selections.txt"
"""Raven's own name for an exported selection table (and the `.txt` crowsetta requires)."""
INDEX = "index.tsv"
OPEN_TABLES = 32
"""Tables kept open while rows stream past: rows come in seq (arrival) order, so a device's
sources interleave; more would risk the process's file limit on a server exporting thousands of
sources, fewer would reopen files for every row."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def table_name(device_id: str, source: str) -> str:
    """A file name for the table of one source: readable (device and the source's file name)
    and unique (a hash of both, since two folders may hold files of the same name)."""
    stem = Path(source.replace("\\", "/")).stem or "live"
    digest = hashlib.sha256(f"{device_id}\0{source}".encode()).hexdigest()[:10]
    readable = _UNSAFE.sub("_", f"{device_id}__{stem}")[:80]
    return f"{readable}__{digest}{TABLE_SUFFIX}"


def _cell(value: Any) -> str:
    """Raven's tables are tab-separated with no quoting: a tab or newline inside a value would
    shift every column after it, so each becomes a space."""
    text = "" if value is None else (repr(value) if isinstance(value, float) else str(value))
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def selection_fields(number: int, row: dict[str, Any]) -> list[str]:
    """One selection's cells, in `COLUMNS` order."""
    held = row.get("clip")
    high = held["sample_rate_hz"] / 2 if held and held.get("sample_rate_hz") else DEFAULT_HIGH_FREQ_HZ
    name = taxon_name(row["scientific_name"], row["common_name"], row["class_name"], row["label"])
    return [_cell(v) for v in (
        number, VIEW, CHANNEL, float(row["start_s"]), float(row["end_s"]), 0.0, float(high),
        name.text, row["label"], row["scientific_name"], row["common_name"], row["class_name"], name.rank,
        float(row["confidence"]),
        row["verification_status"], f"{row['bundle_name']} {row['bundle_version']}", row["started_on"],
        row["detection_id"],
    )]


def write_raven(rows: Iterable[dict[str, Any]], out: Path) -> int:
    """Write a zip of one Raven selection table per (device, source), and `index.tsv`; return
    the number of selections written."""
    tables: dict[tuple[str, str], list] = {}  # (device, source) -> [file name, selections so far]
    handles: OrderedDict[str, Any] = OrderedDict()
    count = 0
    with tempfile.TemporaryDirectory(prefix="raven-") as scratch:
        folder = Path(scratch)
        try:
            for row in rows:
                key = (row["device_id"], row["source"])
                entry = tables.get(key)
                if entry is None:
                    entry = tables[key] = [table_name(*key), 0]
                    (folder / entry[0]).write_text("\t".join(COLUMNS) + "\n", encoding="utf-8")
                handle = handles.pop(entry[0], None) or open(folder / entry[0], "a", encoding="utf-8", newline="")
                handles[entry[0]] = handle
                if len(handles) > OPEN_TABLES:
                    handles.popitem(last=False)[1].close()
                entry[1] += 1
                handle.write("\t".join(selection_fields(entry[1], row)) + "\n")
                count += 1
        finally:
            for handle in handles.values():
                handle.close()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            lines = ["table\tdevice_id\tsource\tselections"]
            for (device_id, source), (name, selections) in tables.items():
                archive.write(folder / name, name)
                lines.append("\t".join(_cell(v) for v in (name, device_id, source, selections)))
            archive.writestr(INDEX, "\n".join(lines) + "\n")
    return count
