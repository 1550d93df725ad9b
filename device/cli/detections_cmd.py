"""`explorer detections`: get the detection log out of the device.

`export --format csv` writes one row per detection with species names (from the label
facts recorded with each bundle, so no bundle needs to be loaded), and the name a person reads
(a family as a family: "a cicada (Cicadidae)"). `--format raven`
writes Raven Pro selection tables: tab-separated, one selection per detection, times as
offsets within the source recording. Since those offsets only mean something within one
file, Raven output is grouped by source: one table per source recording.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path

import click

from device.cli.common import home_of
from device.domain import iso_utc
from device.naming import TaxonName, taxon_name

CSV_COLUMNS = (
    "detection_id", "tour_id", "device_id", "label", "scientific_name", "common_name", "class_name",
    "taxon_rank", "display_name", "started_on", "ended_on", "source", "start_s", "end_s", "confidence", "secondary", "window_count",
    "status", "close_reason", "verdict", "bundle_name", "bundle_version", "bundle_sha256", "branch_scores",
    "clip_path",
)  # fmt: skip
"""`taxon_rank` ('species', 'family'; '' without a name) and `display_name` ("a cicada
(Cicadidae)", "Little Tinamou (Crypturellus soui)"; see device/naming.py) say how a person names
the label: three labels are families, and a spreadsheet must not count one as a species."""

# Raven Pro's own columns first (Selection ... High Freq), then annotation columns;
# "Begin Path" and "File Offset (s)" are the names Raven and BirdNET use for the source.
RAVEN_COLUMNS = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
    "Species Code", "Common Name", "Scientific Name", "Confidence", "Begin Path", "File Offset (s)",
    "Detection ID", "Status", "Verdict",
)  # fmt: skip
RAVEN_VIEW = "Spectrogram 1"
DEFAULT_HIGH_FREQ_HZ = 16_000
"""Top of the selection box when no clip tells the rate: BirdCLEF-format models hear 32 kHz
audio, so nothing they detect lies above 16 kHz."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TABS = re.compile(r"[\t\r\n]+")


def _name(record) -> TaxonName:
    species = record.species
    if species is None:
        return taxon_name(None, None, None, record.detection.label)
    return taxon_name(species.scientific_name, species.common_name, species.class_name, record.detection.label)


def _csv_row(record) -> list:
    det, species = record.detection, record.species
    scores = {k: (None if math.isnan(v) else v) for k, v in det.branch_scores.items()}
    name = _name(record)
    return [
        det.detection_id, det.tour_id or "", det.device_id, det.label,
        species.scientific_name if species else "", species.common_name if species else "",
        species.class_name if species else "", name.rank or "", name.text,
        iso_utc(det.started_on), iso_utc(det.ended_on), det.source,
        f"{det.start_s:.3f}", f"{det.end_s:.3f}", f"{det.confidence:.4f}", int(det.secondary), det.window_count,
        record.status, record.close_reason or "", record.verdict or "", det.bundle_name, det.bundle_version,
        det.bundle_sha256, json.dumps(scores, sort_keys=True), record.clip_path or "",
    ]  # fmt: skip


def render_csv(records) -> str:
    """The CSV export: a header of CSV_COLUMNS, then one row per detection."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_csv_row(r) for r in records)
    return buffer.getvalue()


def _cell(value) -> str:
    return _TABS.sub(" ", str(value))


def render_raven(records) -> str:
    """One Raven selection table (records must all share one source).

    "Common Name" is what a person calls the label: "Little Tinamou", or for a family "a cicada"
    (beside "Scientific Name" Cicadidae), never the family's plural as if it were a species."""
    lines = ["\t".join(RAVEN_COLUMNS)]
    for number, record in enumerate(sorted(records, key=lambda r: (r.detection.start_s, r.detection.end_s)), 1):
        det, name = record.detection, _name(record)
        high = record.clip_sample_rate_hz / 2 if record.clip_sample_rate_hz else DEFAULT_HIGH_FREQ_HZ
        row = [
            number, RAVEN_VIEW, 1, f"{det.start_s:.3f}", f"{det.end_s:.3f}", "0.0", f"{high:.1f}", det.label,
            name.common or name.scientific, name.scientific,
            f"{det.confidence:.4f}", det.source, f"{det.start_s:.3f}", det.detection_id, record.status,
            record.verdict or "",
        ]  # fmt: skip
        lines.append("\t".join(_cell(v) for v in row))
    return "\n".join(lines) + "\n"


def group_by_source(records) -> "OrderedDict[str, list]":
    groups: OrderedDict[str, list] = OrderedDict()
    for record in records:
        groups.setdefault(record.detection.source, []).append(record)
    return groups


def raven_table_name(source: str, taken: set[str]) -> str:
    """`<source stem>.selections.txt`, made unique among `taken` (two folders may share a stem)."""
    stem = _UNSAFE.sub("_", Path(source.replace("mic:", "mic_")).stem or "unknown-source")[:80]
    name, n = f"{stem}.selections.txt", 2
    while name in taken:
        name, n = f"{stem}-{n}.selections.txt", n + 1
    taken.add(name)
    return name


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(f"{path}: cannot write the export ({exc.strerror})") from None


@click.group()
def detections() -> None:
    """The detection log: export it for spreadsheets or Raven Pro.

    Example:

    \b
        explorer detections export --format csv --out detections.csv
    """


@detections.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "raven"]), default="csv", show_default=True,
    help="csv: one row per detection. raven: Raven Pro selection tables, one per source recording.",
)  # fmt: skip
@click.option("--tour", "tour_id", metavar="ID", help="Only this tour's detections (an id or unique prefix).")
@click.option(
    "--out", type=click.Path(path_type=Path),
    help="Write here instead of standard output. For raven with several sources: a directory, one table per source.",
)  # fmt: skip
@click.pass_context
def export(ctx: click.Context, fmt: str, tour_id: str | None, out: Path | None) -> None:
    """Export detections, with scientific and common names where the bundle named them.

    Raven tables give each detection's times as offsets within its source recording, so
    they come one per source: to standard output or --out FILE when there is one source,
    into the directory --out DIR when there are several.

    Example:

    \b
        explorer detections export --format raven --tour 3f2a9c1e --out selections/
    """
    from device.store import Store, StoreError

    try:
        with Store.open(home_of(ctx).database) as store:
            resolved = store.tour(tour_id).tour_id if tour_id else None
            records = store.detection_records(tour_id=resolved)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "csv":
        text = render_csv(records)
        if out is None:
            sys.stdout.write(text)
        else:
            _write_atomic(out, text)
            click.echo(f"Wrote {len(records)} detections to {out}", err=True)
        return
    groups = group_by_source(records)
    if len(groups) <= 1 and (out is None or not out.is_dir()):
        text = render_raven(next(iter(groups.values()), []))
        if out is None:
            sys.stdout.write(text)
        else:
            _write_atomic(out, text)
            click.echo(f"Wrote {len(records)} selections to {out}", err=True)
        return
    if out is None:
        raise click.ClickException(
            f"the detections come from {len(groups)} source recordings, and Raven times are offsets within "
            "one recording: give --out DIR to write one selection table per source"
        )
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"{out}: {len(groups)} sources need a directory, one table per source")
    taken: set[str] = set()
    for source, group in groups.items():
        path = out / raven_table_name(source, taken)
        _write_atomic(path, render_raven(group))
        click.echo(f"Wrote {len(group)} selections from {source or '(unknown source)'} to {path}", err=True)
