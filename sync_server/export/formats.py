"""One entry point for every export format: the CLI and the API call `export` alike.

Each format's writer reads the rows `iter_detection_rows` streams (bounded memory) and writes
one file: CSV, Parquet, or a zip (Raven tables; the Darwin Core Archive; the labelled list, which
is a folder unless the output's name ends in .zip).
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sync_server.db.queries import DetectionFilter, iter_detection_rows
from sync_server.export.eml import DatasetInfo


@dataclass(frozen=True)
class Format:
    name: str
    media_type: str
    suffix: str
    """The file name's ending (what the API's download is called)."""


FORMATS = {
    "csv": Format("csv", "text/csv; charset=utf-8", ".csv"),
    "parquet": Format("parquet", "application/vnd.apache.parquet", ".parquet"),
    "raven": Format("raven", "application/zip", ".raven.zip"),
    "dwca": Format("dwca", "application/zip", ".dwca.zip"),
    "labelled": Format("labelled", "application/zip", ".labelled.zip"),
}


@dataclass(frozen=True)
class ExportOptions:
    """What some formats need beyond the rows."""

    base_url: str | None = None
    """The server's address (https://explorer.example.org): clip URLs in CSV, Parquet and the
    archive's multimedia are made absolute with it; without it they stay /api/v1/clips/..."""
    dataset: DatasetInfo = field(default_factory=DatasetInfo)
    """The Darwin Core Archive's title, licence, contact and the models' terms."""
    clips: str = "copy"
    """Darwin Core Archive: 'copy' the clips into it, link them by 'url', or 'none'."""
    include_rejected: bool = False
    """Darwin Core Archive: keep what guides rejected (implied by a filter on status=rejected)."""


@dataclass
class ExportSummary:
    format: str
    out: Path
    rows: int
    left_out: dict[str, int] = field(default_factory=dict)
    """Why rows of the selection are not in the file, and how many (reason -> count)."""

    def describe(self) -> str:
        """One line for people: what was written, and what was left out and why."""
        text = f"{self.format}: {self.rows} detection(s) -> {self.out}"
        reasons = [f"{count} {reason}" for reason, count in self.left_out.items() if count]
        return text + (f" (left out: {', '.join(reasons)})" if reasons else "")


def export(store, format: str, filter: DetectionFilter, out: Path,
           options: ExportOptions = ExportOptions()) -> ExportSummary:
    """Write the detections `filter` selects from `store` as `format` to `out`.

    Raises:
        ValueError: an unknown format, or options the format refuses (named).
        FileExistsError: a labelled-list folder that is not empty.
    """
    if format not in FORMATS:
        raise ValueError(f"format: {format!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    rows = iter_detection_rows(store, filter)
    if format == "csv":
        from sync_server.export.tables import write_csv

        return ExportSummary(format, out, write_csv(rows, out, options.base_url))
    if format == "parquet":
        from sync_server.export.tables import write_parquet

        return ExportSummary(format, out, write_parquet(rows, out, options.base_url))
    if format == "raven":
        from sync_server.export.raven import write_raven

        return ExportSummary(format, out, write_raven(rows, out))
    if format == "dwca":
        from sync_server.export.dwca import write_dwca

        include = options.include_rejected or filter.status == "rejected"
        done = write_dwca(rows, out, options.dataset, options.clips, options.base_url, include)
        return ExportSummary(format, out, done.occurrences, {
            "rejected by a guide": done.rejected_left_out, "without a scientific name": done.unnamed_left_out,
            "clip file missing (occurrence kept)": len(done.missing_clip_files)})
    return _labelled(rows, out, options)


def _labelled(rows, out: Path, options: ExportOptions) -> ExportSummary:
    from sync_server.export.labelled import write_labelled

    if out.suffix != ".zip":
        done = write_labelled(rows, out, options.dataset.licence_name)
    else:
        with tempfile.TemporaryDirectory(prefix="labelled-") as scratch:
            folder = Path(scratch) / "labelled"
            done = write_labelled(rows, folder, options.dataset.licence_name)
            zip_folder(folder, out)
    return ExportSummary("labelled", out, done.rows, {
        "without a verdict": done.unreviewed_left_out, "without a clip on the server": done.without_clip_left_out,
        "clip file missing": len(done.missing_clip_files)})


def zip_folder(folder: Path, out: Path) -> None:
    """Zip every file under `folder`, named relative to it (FLAC stored: it is compressed already)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                kind = zipfile.ZIP_STORED if path.suffix == ".flac" else zipfile.ZIP_DEFLATED
                archive.write(path, path.relative_to(folder).as_posix(), compress_type=kind)


def remove(path: Path) -> None:
    """Delete an export file or folder (the API's temporary copy once sent)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
