"""Clips: a few seconds of audio around each detection, kept as FLAC under the clips folder.

Writing is atomic: the FLAC is encoded in memory, written to a hidden temporary file in
the destination folder, fsynced, then renamed over the final name (and the folder fsynced),
so a power cut or a full SD card leaves either the whole clip or nothing. The row in
`clip` is committed only after the file is in place; if that commit fails the file is
removed, so no clip is on disk without its row.

Retention never deletes a detection: it marks the clip row `deleted_on` (committed first)
and then removes the file. A crash between the two leaves an orphan file, never a live
row pointing at nothing; so does a crash between a clip's rename and its row's commit.
`sweep_orphan_clips` removes such files at start-up, so they never eat the clip budget
unseen.

Privacy: a detection whose row says `clip_withheld` (a person was heard in or next to it) never
gets a clip: `Store.save_clip` refuses before a byte is written, and `add_clip` refuses to record
one (so no file of it survives: the caller removes what it wrote), raising `ClipWithheldError`.
"""

from __future__ import annotations

import errno
import io
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
import sqlite_utils

from device.domain import Detection, iso_utc, parse_iso_utc, utc_now
from device.store.database import NotFoundError, StoreError

CLIP_FORMAT, CLIP_SUBTYPE = "FLAC", "PCM_16"
"""16-bit FLAC: lossless for what a 16-bit microphone records, about half the size of WAV."""
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
"""No space, file-size limit, quota: each means "the clip does not fit", not a bug."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ClipWithheldError(ValueError):
    """A clip of a detection whose clip is withheld (`Detection.clip_withheld`): never kept."""


def withheld_reason(db: sqlite_utils.Database, detection_id: str) -> str | None:
    """Why this detection's clip is withheld ('privacy'), or None (also for an unknown id)."""
    found = db.execute("SELECT clip_withheld FROM detection WHERE detection_id = ?", [detection_id]).fetchone()
    return found[0] if found else None


def refuse_withheld(detection_id: str, reason: str | None) -> None:
    if reason:
        raise ClipWithheldError(f"detection {detection_id}: its clip is withheld ({reason}: a person was heard "
                                "in or next to it), so no clip of it is kept")


@dataclass(frozen=True)
class Clip:
    clip_id: str
    detection_id: str
    path: str
    sample_rate_hz: int
    duration_s: float
    start_s: float
    """Offset of the clip's first sample within the detection's source."""
    size_bytes: int
    created_on: datetime
    deleted_on: datetime | None


def row_to_clip(row: dict) -> Clip:
    return Clip(
        clip_id=row["clip_id"],
        detection_id=row["detection_id"],
        path=row["path"],
        sample_rate_hz=row["sample_rate_hz"],
        duration_s=row["duration_s"],
        start_s=row["start_s"],
        size_bytes=row["size_bytes"],
        created_on=parse_iso_utc(row["created_on"]),
        deleted_on=parse_iso_utc(row["deleted_on"]) if row["deleted_on"] else None,
    )


@dataclass(frozen=True)
class ClipBudgetResult:
    deleted: tuple[str, ...]
    """Paths of the clips retention removed, oldest first."""
    live_bytes: int
    """Bytes of clips still kept."""
    over_budget: bool
    """True when the clips kept still exceed the budget (each species is down to its minimum)."""


def clip_path_for(clips_dir: Path, det: Detection) -> Path:
    """`clips/<UTC date>/<label>_<detection_id>.flac`: a folder a day keeps listings short."""
    day = det.started_on.astimezone(timezone.utc).strftime("%Y-%m-%d")
    label = _UNSAFE.sub("_", det.label)[:64] or "label"
    return Path(clips_dir) / day / f"{label}_{det.detection_id}.flac"


def encode_flac(samples: np.ndarray, sample_rate_hz: int) -> bytes:
    """Mono float samples in [-1, 1] as 16-bit FLAC bytes (values beyond are clipped)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"clip samples: expected a non-empty 1-D array, got shape {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("clip samples: hold NaN or infinity")
    if not isinstance(sample_rate_hz, (int, np.integer)) or not 1 <= sample_rate_hz <= 655_350:
        raise ValueError(f"clip sample_rate_hz: {sample_rate_hz!r} is not a rate FLAC can store")
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), int(sample_rate_hz), format=CLIP_FORMAT, subtype=CLIP_SUBTYPE)
    return buffer.getvalue()


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` all at once or not at all (temp file, fsync, rename, fsync dir).

    Raises:
        OSError: as the OS reported it; the temporary file is removed first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself survive a power cut
    finally:
        os.close(dir_fd)


def write_clip(clips_dir: Path | str, det: Detection, samples: np.ndarray, sample_rate_hz: int) -> Path:
    """Encode and write a detection's clip as FLAC, atomically; return its path.

    This writes the file only: record it with `Store.add_clip`, or use `Store.save_clip`,
    which does both and removes the file if recording it fails.

    Raises:
        StoreError: the disk is full (or the write failed); no partial file is left.
        ValueError: samples or rate that FLAC cannot hold.
    """
    data = encode_flac(samples, sample_rate_hz)
    path = clip_path_for(Path(clips_dir), det)
    try:
        write_file_atomic(path, data)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise StoreError(
                f"{path.parent}: the disk is full, so the clip of detection {det.detection_id} ({det.label}) "
                f"was not written ({len(data)} bytes needed; no partial file left)"
            ) from exc
        raise StoreError(f"{path}: cannot write the clip of detection {det.detection_id}: {exc.strerror}") from exc
    return path


def add_clip(
    db: sqlite_utils.Database,
    detection_id: str,
    path: Path | str,
    duration_s: float,
    sample_rate_hz: int,
    size_bytes: int | None = None,
    start_s: float | None = None,
) -> Clip:
    """Insert (or, for the same path, replace) a clip row; call inside a write transaction.

    Args:
        size_bytes: the file's size; read from the file when None.
        start_s: offset of the clip's first sample in the source; default the
            detection's peak window start.

    Raises:
        NotFoundError: no detection has that id.
        ClipWithheldError: the detection's clip is withheld (nothing recorded).
        StoreError: the file is missing (size_bytes None).
    """
    found = db.execute("SELECT peak_start_s FROM detection WHERE detection_id = ?", [detection_id]).fetchone()
    if found is None:
        raise NotFoundError(f"cannot add a clip: no detection with id {detection_id!r}")
    refuse_withheld(detection_id, withheld_reason(db, detection_id))
    if size_bytes is None:
        try:
            size_bytes = os.stat(path).st_size
        except OSError as exc:
            raise StoreError(f"{path}: cannot record the clip of detection {detection_id}: {exc.strerror}") from exc
    if not float(duration_s) > 0 or not int(sample_rate_hz) > 0:
        raise ValueError(f"clip {path}: duration_s {duration_s} and sample_rate_hz {sample_rate_hz} must be positive")
    clip = Clip(
        clip_id=str(uuid.uuid4()),
        detection_id=detection_id,
        path=os.path.abspath(os.fspath(path)),
        sample_rate_hz=int(sample_rate_hz),
        duration_s=float(duration_s),
        start_s=float(found[0] if start_s is None else start_s),
        size_bytes=int(size_bytes),
        created_on=utc_now(),
        deleted_on=None,
    )
    db.execute(
        """INSERT INTO clip (clip_id, detection_id, path, sample_rate_hz, duration_s, start_s, size_bytes,
               created_on, deleted_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)
           ON CONFLICT (path) DO UPDATE SET detection_id = excluded.detection_id,
               sample_rate_hz = excluded.sample_rate_hz, duration_s = excluded.duration_s,
               start_s = excluded.start_s, size_bytes = excluded.size_bytes,
               created_on = excluded.created_on, deleted_on = NULL""",
        [
            clip.clip_id, detection_id, clip.path, clip.sample_rate_hz, clip.duration_s, clip.start_s,
            clip.size_bytes, iso_utc(clip.created_on),
        ],
    )  # fmt: skip
    row = next(db.query("SELECT * FROM clip WHERE path = ?", [clip.path]))
    return row_to_clip(row)


def list_clips(db: sqlite_utils.Database, detection_id: str | None = None, include_deleted: bool = False) -> list[Clip]:
    """Clips, oldest first; retention-deleted ones only when asked."""
    clauses, params = [], []
    if detection_id is not None:
        clauses.append("detection_id = ?")
        params.append(detection_id)
    if not include_deleted:
        clauses.append("deleted_on IS NULL")
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    return [row_to_clip(r) for r in db.query(f"SELECT * FROM clip {where} ORDER BY created_on, rowid", params)]


def plan_clip_deletions(
    db: sqlite_utils.Database, budget_bytes: int, keep_per_species: int
) -> tuple[list[Clip], int]:
    """Which clips to delete to fit `budget_bytes`: oldest first, keeping `keep_per_species` per label.

    Returns the clips to delete and the bytes that will remain.
    """
    if budget_bytes < 0:
        raise ValueError(f"budget_bytes: {budget_bytes} is negative")
    if keep_per_species < 0:
        raise ValueError(f"keep_per_species: {keep_per_species} is negative")
    rows = list(
        db.query(
            """SELECT c.*, d.label FROM clip c JOIN detection d ON d.detection_id = c.detection_id
               WHERE c.deleted_on IS NULL ORDER BY c.created_on, c.rowid"""
        )
    )
    total = sum(row["size_bytes"] for row in rows)
    remaining = Counter(row["label"] for row in rows)
    doomed: list[Clip] = []
    for row in rows:
        if total <= budget_bytes:
            break
        if remaining[row["label"]] <= keep_per_species:
            continue  # the species is down to its minimum: its newest clips stay
        doomed.append(row_to_clip(row))
        remaining[row["label"]] -= 1
        total -= row["size_bytes"]
    return doomed, total


def mark_clips_deleted(db: sqlite_utils.Database, clip_ids: list[str]) -> None:
    """Set deleted_on on these clips (call inside a write transaction, before removing files)."""
    stamp = iso_utc(utc_now())
    for clip_id in clip_ids:
        db.execute("UPDATE clip SET deleted_on = ? WHERE clip_id = ? AND deleted_on IS NULL", [stamp, clip_id])


ORPHAN_AGE_S = 60.0
"""A clip file must be this old before a sweep may take it for an orphan: another process
on the same home may have renamed it into place a moment ago and not yet committed its row."""


@dataclass(frozen=True)
class SweepResult:
    removed: tuple[str, ...]
    freed_bytes: int


def sweep_orphan_clips(
    db: sqlite_utils.Database, clips_dir: Path | str, older_than_s: float = ORPHAN_AGE_S, now: float | None = None
) -> SweepResult:
    """Remove clip files no live row points at, and temporary files a crash left behind.

    Only `*.flac` files and our own hidden `.<name>.<hex>.tmp` files under `clips_dir` are
    considered, and only when older than `older_than_s`; anything else there is left alone.
    """
    root = Path(clips_dir)
    if not root.is_dir():
        return SweepResult((), 0)
    live = {row[0] for row in db.execute("SELECT path FROM clip WHERE deleted_on IS NULL").fetchall()}
    cutoff = (time.time() if now is None else now) - older_than_s
    removed: list[str] = []
    freed = 0
    for path in sorted(root.rglob("*")):
        is_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
        if not (is_tmp or path.suffix == ".flac") or not path.is_file() or path.is_symlink():
            continue
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_mtime > cutoff or (not is_tmp and os.path.abspath(path) in live):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path))
        freed += info.st_size
    return SweepResult(tuple(removed), freed)
