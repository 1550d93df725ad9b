"""Clips: atomic FLAC writes of real recordings, a full disk, and retention by budget."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.store import StoreError
from device.store.clips import clip_path_for, mark_clips_deleted, write_clip

REPO = Path(__file__).resolve().parents[3]


def _real_audio(shared_data, name="birds/Cryp.soui.wav", seconds=None):
    samples, rate = sf.read(shared_data / "audio" / name, dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if seconds is not None:
        samples = samples[: int(seconds * rate)]
    return samples, rate


def _files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_clip_of_a_real_recording_is_lossless_16_bit_flac(store, make_detection, shared_data, tmp_path):
    samples, rate = _real_audio(shared_data)  # Little Tinamou, 9 kHz, 16-bit source
    det = make_detection("littin1", peak_start_s=1.5)
    store.save_detection(det, final=True)
    path = store.save_clip(tmp_path / "clips", det, samples, rate)
    assert path == clip_path_for(tmp_path / "clips", det)
    assert path.parent.name == "2026-04-20" and path.name == f"littin1_{det.detection_id}.flac"
    assert _files_under(tmp_path / "clips") == [path]  # no temporary file left behind
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate, info.frames) == ("FLAC", "PCM_16", rate, len(samples))
    back, _ = sf.read(path, dtype="int16")
    original, _ = sf.read(shared_data / "audio" / "birds" / "Cryp.soui.wav", dtype="int16")
    np.testing.assert_array_equal(back, original)
    [clip] = store.list_clips(det.detection_id)
    assert clip.path == str(path) and clip.size_bytes == path.stat().st_size
    assert clip.duration_s == pytest.approx(len(samples) / rate) and clip.start_s == 1.5
    assert clip.size_bytes < 2 * len(samples)  # smaller than the 16-bit WAV would be


def test_bad_samples_are_refused_before_anything_is_written(store, make_detection, tmp_path):
    det = make_detection()
    store.save_detection(det)
    with pytest.raises(ValueError, match="1-D"):
        store.save_clip(tmp_path / "clips", det, np.zeros((2, 100), np.float32), 32_000)
    with pytest.raises(ValueError, match="NaN"):
        store.save_clip(tmp_path / "clips", det, np.full(100, np.nan, np.float32), 32_000)
    assert not (tmp_path / "clips").exists() and store.list_clips() == []


def test_a_clip_for_an_unknown_detection_leaves_no_file(store, make_detection, shared_data, tmp_path):
    samples, rate = _real_audio(shared_data, seconds=1)
    with pytest.raises(StoreError, match="no detection with id"):
        store.save_clip(tmp_path / "clips", make_detection(), samples, rate)  # never saved
    assert _files_under(tmp_path / "clips") == []


_FULL_DISK_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    import soundfile as sf
    from device.store import Store, StoreError
    from device.store.clips import write_clip

    db, clips_dir, audio, detection_id, limit = sys.argv[1:6]
    store = Store.open(db)
    det = store.detection(detection_id)
    samples, rate = sf.read(audio, dtype="float32")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, as a full card gives ENOSPC, not a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    try:
        store.save_clip(clips_dir, det, samples, rate)
        print("WROTE")
    except StoreError as exc:
        print("ERROR", exc)
    store.close()
    """
)


def test_a_full_disk_raises_a_clear_error_and_leaves_no_partial_clip(store, make_detection, shared_data, tmp_path):
    det = make_detection("65448")
    store.save_detection(det, final=True)
    audio = shared_data / "audio" / "colombian_frogs" / "Engystomops_pustulosus.wav"  # ~1 MB as FLAC
    clips_dir = tmp_path / "clips"
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(store.path), str(clips_dir), str(audio), det.detection_id, "65536"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ERROR"), result.stdout
    assert "the disk is full" in result.stdout and det.detection_id in result.stdout
    assert _files_under(clips_dir) == []  # neither the clip nor its temporary file
    assert store.list_clips(include_deleted=True) == []
    assert store.detection_status(det.detection_id) == "closed"  # the detection is untouched


def test_write_clip_alone_writes_the_file_for_add_clip_to_record(store, make_detection, shared_data, tmp_path):
    samples, rate = _real_audio(shared_data, "colombian_frogs/Boana_boans.wav", seconds=3)
    det = make_detection("555086")
    store.save_detection(det, final=True)
    path = write_clip(tmp_path / "clips", det, samples, rate)
    assert store.list_clips() == []
    clip = store.add_clip(det.detection_id, path, len(samples) / rate, rate)
    assert clip.size_bytes == path.stat().st_size and clip.sample_rate_hz == 44_100


@pytest.fixture
def clipped(store, make_detection, shared_data, tmp_path):
    """Six detections with real clips, oldest first: littin1 x3, 65448 x2, 555086 x1."""
    samples, rate = _real_audio(shared_data, "colombian_frogs/Rhinella_horribilis.wav", seconds=2)
    made = []
    for i, label in enumerate(["littin1", "65448", "littin1", "555086", "littin1", "65448"]):
        det = make_detection(label, at_s=i * 60)
        store.save_detection(det, final=True)
        # distinct audio per clip (a different 2 s slice), so sizes differ as in the field
        made.append((det, store.save_clip(tmp_path / "clips", det, np.roll(samples, i * 977), rate)))
    return made


def test_retention_deletes_oldest_first_but_keeps_n_per_species(store, clipped):
    sizes = [path.stat().st_size for _, path in clipped]
    budget = sum(sizes) - 1  # one byte over: the oldest deletable clip must go
    result = store.enforce_clip_budget(budget, keep_per_species=1)
    assert result.deleted == (str(clipped[0][1]),)
    assert not clipped[0][1].exists() and all(path.exists() for _, path in clipped[1:])
    assert result.live_bytes == sum(sizes[1:]) and not result.over_budget

    result = store.enforce_clip_budget(0, keep_per_species=1)  # squeeze: one per species survives
    survivors = {c.detection_id for c in store.list_clips()}
    assert survivors == {clipped[3][0].detection_id, clipped[4][0].detection_id, clipped[5][0].detection_id}
    assert result.over_budget and result.live_bytes == sum(sizes[3:])
    assert len(store.detections()) == 6  # retention never deletes a detection
    deleted = store.list_clips(include_deleted=True)
    assert sum(c.deleted_on is not None for c in deleted) == 3
    assert {r.detection.detection_id: r.clip_path for r in store.detection_records()}[clipped[0][0].detection_id] is None


def test_within_budget_nothing_is_deleted(store, clipped):
    result = store.enforce_clip_budget(10**9, keep_per_species=0)
    assert result.deleted == () and all(path.exists() for _, path in clipped)


def test_keep_zero_can_empty_the_clips_folder(store, clipped, tmp_path):
    result = store.enforce_clip_budget(0, keep_per_species=0)
    assert len(result.deleted) == 6 and result.live_bytes == 0 and not result.over_budget
    assert _files_under(tmp_path / "clips") == []


def test_a_clip_file_already_gone_does_not_stop_retention(store, clipped):
    clipped[0][1].unlink()
    result = store.enforce_clip_budget(0, keep_per_species=0)
    assert len(result.deleted) == 6


def _age(path: Path, seconds: float) -> None:
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))


def test_a_sweep_removes_what_a_crash_left_and_nothing_else(store, clipped, make_detection, shared_data, tmp_path):
    clips_dir = tmp_path / "clips"
    # Crash after retention committed deleted_on, before the unlink: the row is dead, the file stays.
    store._write("marking a clip deleted", mark_clips_deleted, [store.list_clips()[0].clip_id])
    dead_row_file = clipped[0][1]
    # Crash between a clip's rename into place and its row's commit: a file with no row at all.
    samples, rate = _real_audio(shared_data, seconds=1)
    rowless = write_clip(clips_dir, make_detection("littin1", at_s=900), samples, rate)
    # Crash mid-write: our hidden temporary file.
    leftover = rowless.parent / f".{rowless.name}.0123abcd.tmp"
    leftover.write_bytes(b"half a clip")
    # Not ours to judge: a recent rowless clip (another run may be committing it) and a foreign file.
    fresh = write_clip(clips_dir, make_detection("65448", at_s=960), samples, rate)
    foreign = clips_dir / "README.txt"
    foreign.write_text("the guide's notes")
    for path in (dead_row_file, rowless, leftover, foreign, *(p for _, p in clipped[1:])):
        _age(path, 3600)

    result = store.sweep_orphan_clips(clips_dir)

    assert sorted(result.removed) == sorted(map(str, (dead_row_file, rowless, leftover)))
    assert result.freed_bytes > 0
    assert not dead_row_file.exists() and not rowless.exists() and not leftover.exists()
    assert fresh.exists() and foreign.read_text() == "the guide's notes"
    assert all(path.exists() for _, path in clipped[1:])  # every live clip stays
    assert len(store.list_clips()) == 5 and len(store.detections()) == 6
    assert store.sweep_orphan_clips(clips_dir).removed == ()  # nothing left to sweep
