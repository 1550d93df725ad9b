"""A folder that recorders, phones or `rsync` drop recordings into, analysed once each.

The danger is reading a file while it is still being written: the analysis would see half
a recording, record it as done, and the rest would never be heard. So a file is offered
only when (1) its name is not a temporary one (dotfiles, `*.part`, `*.tmp`: what rsync,
browsers and careful copiers write before renaming), (2) its size and mtime stayed the same
over `settle_s` between two scans, and (3) on Linux, no process of ours to see has it open
for writing. Whether a file was already analysed is the store's business: the caller passes
`is_done(path, size, mtime)`, so a restart neither analyses a file twice nor skips one.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from device.audio.files import AUDIO_EXTENSIONS

AUDIO_PATTERNS = tuple(f"*{ext}" for ext in AUDIO_EXTENSIONS) + tuple(f"*{ext.upper()}" for ext in AUDIO_EXTENSIONS)
"""Recorders write upper-case names too (AudioMoth: 20230420_074000.WAV)."""

TEMPORARY_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")
"""Names writers use until a file is complete (rsync --partial, browsers, our own exports)."""

IsDone = Callable[[Path, int, float], bool]
"""is_done(path, size_bytes, mtime): whether this version of the file was already analysed."""


@dataclass
class _Seen:
    size: int
    mtime: float
    since: float
    """time.monotonic() when this size and mtime were first seen."""


def _is_temporary(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return any(part.startswith(".") for part in parts) or path.name.lower().endswith(TEMPORARY_SUFFIXES)


def files_open_for_writing(candidates: Iterable[Path]) -> set[Path]:
    """Which of `candidates` some process has open for writing, from /proc (Linux).

    Only processes this user may inspect are visible (all of them for root); files written
    over the network (Samba, NFS) are not, which is why the settle time is kept as well.
    Returns an empty set where /proc does not exist.
    """
    wanted = {}
    for path in candidates:
        try:
            st = path.stat()
        except OSError:
            continue
        wanted[(st.st_dev, st.st_ino)] = path
    found: set[Path] = set()
    if not wanted or not os.path.isdir("/proc"):
        return found
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # not ours to see, or the process just exited
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
                key = (st.st_dev, st.st_ino)
                if key not in wanted:
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
            except (OSError, StopIteration, ValueError):
                continue
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                found.add(wanted[key])
    return found


class WatchFolder:
    """Offers each complete recording under `in_dir` once, oldest first."""

    def __init__(
        self,
        in_dir: str | Path,
        settle_s: float = 2.0,
        patterns: tuple[str, ...] = AUDIO_PATTERNS,
        recursive: bool = True,
    ) -> None:
        """
        Args:
            in_dir: The folder to watch (it must exist).
            settle_s: How long size and mtime must stay unchanged before a file is offered.
            patterns: Glob patterns of the files wanted.
            recursive: Also look in subfolders (Song Meters write one per day).
        """
        self.in_dir = Path(in_dir)
        if not self.in_dir.is_dir():
            raise FileNotFoundError(f"{self.in_dir}: watch folder does not exist or is not a folder")
        self.settle_s = float(settle_s)
        self.patterns = patterns
        self.recursive = recursive
        self._seen: dict[Path, _Seen] = {}
        self._finished: set[tuple[Path, int, float]] = set()  # done, or already offered by us
        self._pending = 0

    def _candidates(self) -> set[Path]:
        found: set[Path] = set()
        for pattern in self.patterns:
            matches = self.in_dir.rglob(pattern) if self.recursive else self.in_dir.glob(pattern)
            found.update(p for p in matches if not _is_temporary(p, self.in_dir))
        return found

    def pending(self) -> int:
        """Files the last scan saw still settling or being written (empty files excluded:
        a zero-byte file that stays empty is not a recording on its way)."""
        return self._pending

    def ready_files(self, is_done: IsDone) -> list[Path]:
        """Scan once; return the files that are complete and not yet analysed, oldest first.

        Each version (path, size, mtime) is returned at most once by this object; a new
        WatchFolder (after a restart) asks `is_done` again, so whatever was handed out but
        never recorded as done is offered again.

        Args:
            is_done: Tells whether a file at this size and mtime was already analysed.
        """
        now = time.monotonic()
        settled = []
        waiting = 0
        present = self._candidates()
        for path in present:
            try:
                st = path.stat()
            except OSError:
                continue  # vanished between listing and stat
            if not stat.S_ISREG(st.st_mode):
                continue
            version = (path, st.st_size, st.st_mtime)
            if version in self._finished:
                continue
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime) != (st.st_size, st.st_mtime):
                self._seen[path] = _Seen(st.st_size, st.st_mtime, now)
                waiting += 1
                continue
            if now - seen.since < self.settle_s:
                waiting += 1
                continue
            if st.st_size == 0:
                continue
            if is_done(path, st.st_size, st.st_mtime):
                self._finished.add(version)
                del self._seen[path]
                continue
            settled.append((st.st_mtime, path, version))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        self._finished = {version for version in self._finished if version[0] in present}
        busy = files_open_for_writing(path for _, path, _ in settled)
        ready = []
        for _, path, version in sorted(settled):
            if path in busy:
                self._seen[path].since = now  # still being written: settle again after it closes
                waiting += 1
                continue
            self._finished.add(version)
            del self._seen[path]
            ready.append(path)
        self._pending = waiting
        return ready
