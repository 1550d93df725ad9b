"""Clip chunks in, whole verified FLAC files out: the server's half of resumable clip upload.

Files live under `<clips dir>/<device id>/`: `<clip id>.part` while a clip arrives (its size is
how many bytes the server holds: the offset the device resumes from), `<clip id>.json` beside
it (the sha256 and size the first chunk announced), and `<clip id>.flac` once the last byte is
in and the whole file's sha256 is the one announced. A chunk is appended only at the held
offset and fsynced before it is acknowledged, so a server killed mid-clip resumes where its
disk says, and a resend or a chunk after a gap changes nothing (the ack tells the device where
to go on from). Appends take an exclusive lock on the part file: with several ingest workers
(a shared subscription, one clips folder) two chunks of one clip may reach two workers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from device.contracts.clip import ClipAck, ClipChunk


@dataclass(frozen=True)
class ClipRecord:
    """A clip the server now holds whole: its row in the `clip` table."""

    clip_id: str
    device_id: str
    detection_id: str
    path: str
    sha256: str
    size_bytes: int
    sample_rate_hz: int
    duration_s: float
    start_s: float


class ClipAssembler:
    """Writes chunks under `root`; one per ingest worker (workers may share the folder)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def paths(self, device_id: str, clip_id: str) -> tuple[Path, Path, Path]:
        """(part, announcement, final) for a clip; ids are checked UUIDs and device ids, so
        they are safe as file names."""
        folder = self.root / device_id
        return folder / f"{clip_id}.part", folder / f"{clip_id}.json", folder / f"{clip_id}.flac"

    def accept(self, chunk: ClipChunk) -> tuple[ClipAck, ClipRecord | None]:
        """Take one chunk; the ack to send, and the record to commit when the clip is now whole.

        Raises:
            OSError: the disk refused a write (full, failing): nothing was acknowledged, the
                caller leaves the message with the broker and tries again.
        """
        part, announced, final = self.paths(chunk.device_id, chunk.clip_id)
        if final.exists():  # already whole: a resend of its last chunk, say
            return ClipAck(chunk.device_id, chunk.clip_id, final.stat().st_size, "complete"), self._record(chunk, final)
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                return self._append(chunk, handle, part, announced, final)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _append(self, chunk: ClipChunk, handle, part: Path, announced: Path, final: Path):
        if final.exists():  # another worker finished it while we waited for the lock
            return ClipAck(chunk.device_id, chunk.clip_id, final.stat().st_size, "complete"), self._record(chunk, final)
        held = os.fstat(handle.fileno()).st_size
        expected = _read_announcement(announced)
        if chunk.offset == 0 and (held == 0 or expected != (chunk.sha256, chunk.size_bytes)):
            # The clip starts (again): a new clip, or one the device restarted after a refusal.
            handle.truncate(0)
            held = 0
            _write_announcement(announced, chunk.sha256, chunk.size_bytes)
        elif expected != (chunk.sha256, chunk.size_bytes):
            return ClipAck(chunk.device_id, chunk.clip_id, 0, "partial",
                           "the chunk names another sha256 or size than the clip's first: start again"), None
        if chunk.offset != held:  # a resend, or a gap: keep what is held, say where to go on
            return ClipAck(chunk.device_id, chunk.clip_id, held, "partial"), None
        handle.write(chunk.data)
        handle.flush()
        os.fsync(handle.fileno())
        held += len(chunk.data)
        if held < chunk.size_bytes:
            return ClipAck(chunk.device_id, chunk.clip_id, held, "partial"), None
        digest = _sha256(part)
        if digest != chunk.sha256:
            part.unlink()
            announced.unlink(missing_ok=True)
            return ClipAck(chunk.device_id, chunk.clip_id, 0, "refused",
                           f"sha256 mismatch: the {held} bytes received hash to {digest[:16]}..., not "
                           f"{chunk.sha256[:16]}...: start again"), None
        os.replace(part, final)
        announced.unlink(missing_ok=True)
        _fsync_folder(final.parent)
        return ClipAck(chunk.device_id, chunk.clip_id, held, "complete"), self._record(chunk, final)

    @staticmethod
    def _record(chunk: ClipChunk, final: Path) -> ClipRecord:
        return ClipRecord(chunk.clip_id, chunk.device_id, chunk.detection_id, str(final), chunk.sha256,
                          chunk.size_bytes, chunk.sample_rate_hz, chunk.duration_s, chunk.start_s)


def _read_announcement(path: Path) -> tuple[str, int] | None:
    try:
        raw = json.loads(path.read_text())
        return raw["sha256"], raw["size_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_announcement(path: Path, sha256: str, size_bytes: int) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as handle:
        json.dump({"sha256": sha256, "size_bytes": size_bytes}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
