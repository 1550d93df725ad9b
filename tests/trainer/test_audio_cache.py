"""The decode-once audio cache, on real recordings: the int16 round trip, corrupt clips listed,
windows read without decoding, and a build killed with SIGKILL resuming to the same bytes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.audio.resample import resample
from device.audio.samples import sanitize, to_mono
from trainer.audio_cache import (
    CACHE_RATE_HZ, INDEX, INT16_SCALE, LOCK, MAX_ROUND_TRIP_ERROR, SAMPLES, SKIPPED, AudioCache, CacheItem,
    build_cache, from_int16, items_from_examples, to_int16,
)
from trainer.labelled import read_examples

REPO = Path(__file__).resolve().parents[2]
SOURCES = (
    "audio/mammals/minetest_sounds_jaguar_saw.ogg",  # 44.1 kHz OGG
    "audio/birds/tico.wav",
    "audio/colombian_frogs/Centrolene_hybrida.wav",  # 44.1 kHz WAV
    "audio/birdclef_train_audio/3.ogg",  # 32 kHz OGG, 38 s
    "audio/other/birds_10s.wav",
    "audio/mammals/minetest_sounds_raccoon_chatter.ogg",
)
"""Short real recordings in the formats and rates training audio arrives in."""


@pytest.fixture
def clips(tmp_path, shared_data) -> list[CacheItem]:
    """Copies of the real recordings (so a test may delete them), with one corrupt file second:
    the first 3,000 bytes of a real OGG, which libsndfile refuses as malformed."""
    folder = tmp_path / "audio"
    folder.mkdir()
    items = []
    for name in SOURCES:
        target = folder / Path(name).name
        shutil.copyfile(shared_data / name, target)
        items.append(CacheItem(Path(name).name, target))
    corrupt = folder / "truncated.ogg"
    corrupt.write_bytes((shared_data / "audio/birdclef_train_audio/2.ogg").read_bytes()[:3000])
    items.insert(1, CacheItem("truncated.ogg", corrupt))
    return items


def reference(path: Path, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """The float pipeline without the cache: decode, mono, sanitize, resample to 32 kHz."""
    rate = sf.info(str(path)).samplerate
    frames, rate = sf.read(str(path), start=round(start_s * rate), stop=None if end_s is None else round(end_s * rate),
                           dtype="float32", always_2d=True)
    mono = np.ascontiguousarray(to_mono(frames))
    sanitize(mono)
    return resample(mono, rate, CACHE_RATE_HZ)


def cache_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in (SAMPLES, INDEX, SKIPPED)}


def test_a_build_stores_every_readable_clip_and_lists_the_corrupt_one(tmp_path, clips):
    seen = []
    report = build_cache(tmp_path / "cache", clips, progress=seen.append)
    assert (report.total, report.decoded, report.reused) == (7, 6, 0)
    assert [s.clip_id for s in report.skipped] == ["truncated.ogg"]
    assert "malformed" in report.skipped[0].reason
    assert [p.status for p in seen] == ["decoded", "skipped"] + ["decoded"] * 5
    assert [p.done for p in seen] == list(range(1, 8)) and seen[-1].total == 7
    listed = [json.loads(line) for line in (tmp_path / "cache" / SKIPPED).read_text().splitlines()]
    assert [(s["id"], s["path"]) for s in listed] == [("truncated.ogg", str(clips[1].path))]
    cache = AudioCache(tmp_path / "cache")
    assert len(cache) == 6 and "truncated.ogg" not in cache
    assert [s.clip_id for s in cache.skipped] == ["truncated.ogg"]
    with pytest.raises(KeyError, match="truncated.ogg.*skipped, or never built"):
        cache.samples("truncated.ogg")
    assert report.samples == sum(cache.length(c.clip_id) for c in clips if c.clip_id in cache)
    assert "7 clips, 6 decoded, 0 already cached, 1 skipped" in report.summary()


def test_the_int16_round_trip_error_is_half_a_step_on_real_audio(tmp_path, clips):
    build_cache(tmp_path / "cache", clips)
    cache = AudioCache(tmp_path / "cache")
    worst, loudest = 0.0, 0.0
    for item in clips:
        if item.clip_id not in cache:
            continue
        want = reference(item.path)
        got = from_int16(cache.samples(item.clip_id))
        assert len(got) == len(want) == cache.length(item.clip_id)
        inside = np.abs(want) <= 1.0  # resampling may overshoot full scale; those are clipped (counted)
        assert np.count_nonzero(~inside) == cache.entries[item.clip_id].clipped
        worst = max(worst, float(np.abs(got[inside] - want[inside]).max()))
        loudest = max(loudest, float(np.abs(want).max()))
    # half a quantisation step, plus float32 rounding of x * 32767 and q / 32767 (~1e-7 at full scale)
    assert MAX_ROUND_TRIP_ERROR / 2 < worst <= MAX_ROUND_TRIP_ERROR + 2e-7
    assert loudest > 0.3, "the recordings reach a real level, not near-silence"
    assert np.array_equal(to_int16(np.array([1.0, -1.0, 1.2, 0.5 / INT16_SCALE * 0.99], np.float32))[0],
                          [32767, -32767, 32767, 0])


def test_windows_come_from_the_cache_without_the_source_files(tmp_path, clips):
    build_cache(tmp_path / "cache", clips)
    wanted = {c.clip_id: reference(c.path) for c in clips if c.clip_id != "truncated.ogg"}
    shutil.rmtree(clips[0].path.parent)  # nothing left to decode
    cache = AudioCache(tmp_path / "cache")
    for clip_id, want in wanted.items():
        window = cache.window(clip_id, 1000, 5 * CACHE_RATE_HZ)
        real = min(len(want) - 1000, 5 * CACHE_RATE_HZ)
        assert window.dtype == np.float32 and len(window) == 5 * CACHE_RATE_HZ
        assert np.allclose(window[:real], want[1000 : 1000 + real], atol=MAX_ROUND_TRIP_ERROR + 2e-7)
        assert not window[real:].any(), "past the clip's end: zero padding"
    rng = np.random.default_rng(0)
    long = cache.random_window("3.ogg", rng, 5 * CACHE_RATE_HZ)
    start = int(np.random.default_rng(0).integers(0, cache.length("3.ogg") - 5 * CACHE_RATE_HZ + 1))
    assert np.array_equal(long, cache.window("3.ogg", start, 5 * CACHE_RATE_HZ))


def test_a_rebuild_decodes_only_what_is_missing_or_changed(tmp_path, clips, shared_data):
    root = tmp_path / "cache"
    build_cache(root, clips[:4])
    seen = []
    report = build_cache(root, clips, progress=seen.append)
    assert (report.decoded, report.reused, len(report.skipped)) == (3, 3, 1)
    assert sorted(p.status for p in seen) == ["cached"] * 3 + ["decoded"] * 3 + ["skipped"]
    # a replaced source is decoded again and its newest entry wins
    shutil.copyfile(shared_data / "audio/birds/Phae.long1.wav", clips[2].path)
    again = build_cache(root, clips)
    assert (again.decoded, again.reused) == (1, 5)
    assert np.array_equal(from_int16(AudioCache(root).samples("tico.wav")),
                          from_int16(to_int16(reference(clips[2].path))[0]))
    assert len((root / INDEX).read_text().splitlines()) == 7


def test_parallel_decoding_writes_the_same_bytes(tmp_path, clips):
    build_cache(tmp_path / "one", clips, workers=1)
    build_cache(tmp_path / "three", clips, workers=3)
    assert cache_bytes(tmp_path / "one") == cache_bytes(tmp_path / "three")


CHILD = """
import sys
from pathlib import Path
from trainer.audio_cache import CacheItem, build_cache

def pause(progress):
    if progress.done == int(sys.argv[2]):
        print("committed", progress.done, flush=True)
        sys.stdin.readline()  # held here until the parent kills this process

items = [CacheItem(line.split("\\t")[0], Path(line.split("\\t")[1])) for line in sys.argv[3:]]
build_cache(Path(sys.argv[1]), items, progress=pause)
"""


def test_a_build_killed_with_sigkill_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path, clips):
    root = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), "4", *(f"{c.clip_id}\t{c.path}" for c in clips)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert child.stdout.readline().strip() == "committed 4"  # the event: four clips on disk
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert len((root / INDEX).read_text().splitlines()) == 3 and (root / SKIPPED).read_text().count("\n") == 1
    # and a kill in the middle of the next clip's writes: samples with no index line, a torn line
    with open(root / SAMPLES, "ab") as handle:
        handle.write(b"\x01\x02" * 12345)
    with open(root / INDEX, "ab") as handle:
        handle.write(b'{"id": "birds_10s.wav", "off')
    seen = []
    report = build_cache(root, clips, progress=seen.append)
    assert [p.status for p in seen] == ["cached", "skipped", "cached", "cached"] + ["decoded"] * 3
    assert (report.decoded, report.reused, [s.clip_id for s in report.skipped]) == (3, 3, ["truncated.ogg"])
    build_cache(tmp_path / "whole", clips)
    assert cache_bytes(root) == cache_bytes(tmp_path / "whole")


def test_a_second_build_on_a_busy_cache_is_refused(tmp_path, clips):
    root = tmp_path / "cache"
    build_cache(root, clips[:1])
    with open(root / LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BlockingIOError, match="another build is writing this cache"):
            build_cache(root, clips)


def test_a_confirmed_clips_list_caches_through_the_plain_list_path(tmp_path, shared_data):
    """The guides' confirmed clips: path and label (and a stretch), read as any labelled list."""
    confirmed = tmp_path / "confirmed.csv"
    confirmed.write_text("path,label,start_s,end_s\n"
                         "audio/birdclef_train_audio/2.ogg,21211,10.0,15.0\n"
                         "audio/birds/tico.wav,,,\n")
    examples = read_examples(confirmed, root=shared_data)
    assert [(e.primary, e.start_s, e.end_s) for e in examples] == [("21211", 10.0, 15.0), (None, 0.0, None)]
    build_cache(tmp_path / "cache", items_from_examples(examples))
    cache = AudioCache(tmp_path / "cache")
    stretch = cache.samples(examples[0].clip_id)
    assert len(stretch) == 5 * CACHE_RATE_HZ
    want = reference(examples[0].path, 10.0, 15.0)
    assert np.abs(from_int16(stretch) - want).max() <= MAX_ROUND_TRIP_ERROR + 2e-7
    with pytest.raises(ValueError, match="names two clips"):
        items_from_examples([examples[0], replace(examples[0], start_s=11.0)])


def test_a_cache_whose_samples_were_cut_short_is_refused_not_padded(tmp_path, clips):
    root = tmp_path / "cache"
    build_cache(root, clips[:1])
    with open(root / SAMPLES, "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(ValueError, match="samples.i16: holds 500 samples, its index needs"):
        build_cache(root, clips)
    with pytest.raises(ValueError, match="samples.i16: holds 500 samples, the index needs"):
        AudioCache(root)
