"""WatchFolder: files still being written are never offered; each file is offered once, across restarts."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from device.audio.watch import WatchFolder, files_open_for_writing

SETTLE_S = 0.2
"""Short, so the tests are quick; the files in them are complete when they appear."""

WRITE_SETTLE_S = 0.4
"""For files written while scanned: pauses between pieces stay well below it."""


class Done:
    """What the store would remember: (path, size, mtime) of every analysed file."""

    def __init__(self) -> None:
        self.versions: set[tuple[Path, int, float]] = set()
        self.asked = 0

    def __call__(self, path: Path, size: int, mtime: float) -> bool:
        self.asked += 1
        return (path, size, mtime) in self.versions

    def record(self, path: Path) -> None:
        st = path.stat()
        self.versions.add((path, st.st_size, st.st_mtime))


def scan_until(folder: WatchFolder, is_done: Done, seconds: float) -> list[Path]:
    found: list[Path] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found += folder.ready_files(is_done)
        time.sleep(0.05)
    return found


def copy_slowly(source: Path, target: Path, chunks: int, pause_s: float, reopen: bool, finished: threading.Event) -> None:
    """Write `source` into `target` in pieces, like a recorder or a slow network copy."""
    data = source.read_bytes()
    size = -(-len(data) // chunks)
    handle = open(target, "wb")
    for i in range(chunks):
        handle.write(data[i * size : (i + 1) * size])
        handle.flush()
        if reopen:  # close between pieces: only the settle time can tell it is unfinished
            handle.close()
        time.sleep(pause_s)
        if reopen:
            handle = open(target, "ab")
    handle.close()
    finished.set()


@pytest.mark.parametrize(
    "chunks, pause_s, reopen",
    [(5, WRITE_SETTLE_S / 4, True), (3, WRITE_SETTLE_S * 2, False)],
    ids=["closed-between-pieces", "held-open-with-long-pauses"],
)
def test_a_file_being_written_is_offered_only_once_complete(
    tmp_path: Path, audio_dir: Path, chunks: int, pause_s: float, reopen: bool
) -> None:
    recording = audio_dir / "birds" / "spinetail.wav"
    target = tmp_path / "spinetail.wav"
    finished = threading.Event()
    writer = threading.Thread(target=copy_slowly, args=(recording, target, chunks, pause_s, reopen, finished))
    folder = WatchFolder(tmp_path, settle_s=WRITE_SETTLE_S)
    is_done = Done()
    writer.start()
    offered_while_writing: list[Path] = []
    while not finished.is_set():
        offered_while_writing += folder.ready_files(is_done)
        time.sleep(0.03)
    writer.join()
    assert offered_while_writing == []
    assert folder.pending() == 1
    offered = scan_until(folder, is_done, WRITE_SETTLE_S * 3)
    assert offered == [target]
    assert target.read_bytes() == recording.read_bytes()


def test_open_for_writing_is_seen_through_proc(tmp_path: Path) -> None:
    path = tmp_path / "recording.wav"
    with open(path, "wb") as handle:
        handle.write(b"RIFF")
        assert files_open_for_writing([path]) == {path}
    assert files_open_for_writing([path]) == set()
    with open(path, "rb"):
        assert files_open_for_writing([path]) == set()  # readers do not count


def test_temporary_and_hidden_names_and_other_files_are_ignored(tmp_path: Path, audio_dir: Path) -> None:
    recording = audio_dir / "birds" / "tico.wav"
    for name in ["a.wav.part", "b.WAV.tmp", ".c.wav", ".sync/d.flac", "notes.txt", "e.wav.crdownload"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(recording, tmp_path / name)
    (tmp_path / "day2").mkdir()
    shutil.copy(recording, tmp_path / "day2" / "20230420_074000.WAV")
    (tmp_path / "empty.wav").write_bytes(b"")
    folder = WatchFolder(tmp_path, settle_s=SETTLE_S)
    assert scan_until(folder, Done(), SETTLE_S * 3) == [tmp_path / "day2" / "20230420_074000.WAV"]
    assert folder.pending() == 0  # the empty file is not a recording on its way


def test_a_restart_neither_reprocesses_nor_skips(tmp_path: Path, audio_dir: Path) -> None:
    names = ["Boana_boans.wav", "Boana_pugnax.wav", "Boana_punctata.wav"]
    for i, name in enumerate(names):
        shutil.copy(audio_dir / "colombian_frogs" / name, tmp_path / name)
        os.utime(tmp_path / name, (1_700_000_000 + i, 1_700_000_000 + i))  # oldest first
    is_done = Done()
    first = WatchFolder(tmp_path, settle_s=SETTLE_S)
    offered = scan_until(first, is_done, SETTLE_S * 3)
    assert offered == [tmp_path / n for n in names]
    is_done.record(offered[0])  # analysed and stored; then the device lost power
    assert scan_until(first, is_done, SETTLE_S * 2) == []  # this run never offers twice

    second = WatchFolder(tmp_path, settle_s=SETTLE_S)  # after the restart
    assert scan_until(second, is_done, SETTLE_S * 3) == [tmp_path / n for n in names[1:]]
    for path in names[1:]:
        is_done.record(tmp_path / path)
    third = WatchFolder(tmp_path, settle_s=SETTLE_S)
    assert scan_until(third, is_done, SETTLE_S * 3) == []

    # A file replaced by a new version (new size and mtime) is a new recording to analyse.
    shutil.copy(audio_dir / "colombian_frogs" / "Boana_rosenbergi.wav", tmp_path / names[0])
    assert scan_until(third, is_done, SETTLE_S * 3) == [tmp_path / names[0]]


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        WatchFolder(tmp_path / "nowhere")
