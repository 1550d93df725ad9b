"""What the trainer's data pipeline feeds per CPU worker: cached 5 s windows per second.

    python -m bench.trainer_data                       # cache the shared recordings, then measure
    python -m bench.trainer_data --cache DIR           # measure an existing cache (e.g. BirdCLEF's)
    python -m bench.trainer_data --workers 1 2 4 8     # worker counts run side by side

A worker here is one process doing what a DataLoader worker does per batch: draw clips, cut a
random 5 s window from the memmap cache (int16 -> float32), optionally augment it, stack a batch.
Rows: "plain" (windows only) and "augmented" (the waveform augmentation of trainer/augment.py:
a second call mixed in at one of its SNRs by `active_power`, a real soundscape background under
it, a time shift, a random peak gain in its range). Each row runs N workers at once (they share
the page cache and the cores, as DataLoader workers do) and reports the median windows/s per
worker over repeats and the total; the last column is how many such workers keep one GPU fed at
the issue's fastest compiled head (RawAudioCNN, 6,269 windows/s on an H200, batch 256).

Decoding is measured as well (the one-time cost): seconds of audio decoded per second of wall
time, so the time to cache BirdCLEF's 28,564 recordings can be read off.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from trainer.audio_cache import CACHE_RATE_HZ, AudioCache, build_cache, items_from_examples
from trainer.augment import GAIN_DB, SECOND_CALL_P, SNR_DB, active_power
from trainer.labelled import examples_from_recordings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WINDOW = int(5 * CACHE_RATE_HZ)
BATCH = 128
"""The issue's eager batch size (compiled runs use 256; windows/s per worker barely depends on it)."""
GPU_WINDOWS_PER_S = 6_269
"""RawAudioCNN, channels_last + torch.compile, batch 256, bf16 on an H200 (issue 11): the fastest head."""
SHIFT_S = 1.0
"""Largest time shift of a window (circular, as a call may fall anywhere in 5 s)."""


def augment(cache: AudioCache, window: np.ndarray, calls: list[str], backgrounds: list[str],
            rng: np.random.Generator) -> np.ndarray:
    """trainer/augment.py's mix on a cached window: background at its level, the window (and
    sometimes a second call) at a drawn SNR above it, shifted, scaled to a drawn peak."""
    out = np.roll(window, int(rng.integers(-SHIFT_S * CACHE_RATE_HZ, SHIFT_S * CACHE_RATE_HZ + 1)))
    if backgrounds:
        mixed = cache.random_window(backgrounds[int(rng.integers(len(backgrounds)))], rng, WINDOW)
        bg_power = max(float(np.dot(mixed, mixed)) / WINDOW, 1e-12)
        layers = [out]
        if rng.random() < SECOND_CALL_P:
            layers.append(cache.random_window(calls[int(rng.integers(len(calls)))], rng, WINDOW))
        for call in layers:
            power = active_power(call, CACHE_RATE_HZ)
            if power > 0:
                mixed += call * np.float32(math.sqrt(bg_power * 10 ** (float(rng.choice(SNR_DB)) / 10) / power))
        out = mixed
    peak = float(np.abs(out).max())
    if peak > 0:
        out = out * np.float32(10 ** (rng.uniform(*GAIN_DB) / 20) / peak)
    return np.clip(out, -1.0, 1.0, out=out)


def worker(root: str, augmented: bool, seconds: float, repeats: int, seed: int, start, results) -> None:
    """One process: wait for the start, then time `repeats` rounds of batches; windows/s per round."""
    cache = AudioCache(Path(root))
    ids = sorted(cache.entries)
    backgrounds = [i for i in ids if "soundscape" in i or "unlabeled" in i or "1min" in i]
    calls = [i for i in ids if i not in backgrounds]
    rng = np.random.default_rng(seed)
    start.wait()
    rates = []
    for _ in range(repeats):
        began, windows = time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            batch = np.empty((BATCH, WINDOW), dtype=np.float32)
            for k in range(BATCH):
                window = cache.random_window(calls[int(rng.integers(len(calls)))], rng, WINDOW)
                batch[k] = augment(cache, window, calls, backgrounds, rng) if augmented else window
            windows += BATCH
        rates.append(windows / (time.perf_counter() - began))
    results.put(rates)


def measure(root: Path, workers: int, augmented: bool, seconds: float, repeats: int) -> tuple[float, float]:
    """(median windows/s per worker, median total) with `workers` processes running at once."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    procs = [context.Process(target=worker, args=(str(root), augmented, seconds, repeats, k, start, results))
             for k in range(workers)]
    for proc in procs:
        proc.start()
    start.set()
    rates = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    per_round = [sum(r[i] for r in rates) for i in range(repeats)]
    return statistics.median(x for r in rates for x in r), statistics.median(per_round)


def build(root: Path) -> None:
    examples = examples_from_recordings(SHARED)
    began = time.perf_counter()
    report = build_cache(root, items_from_examples(examples), workers=os.cpu_count() or 1, bar=True)
    took = time.perf_counter() - began
    audio_s = report.samples / CACHE_RATE_HZ
    print(f"{report.summary()}\ndecoded {audio_s:.0f} s of audio in {took:.1f} s with {os.cpu_count()} processes: "
          f"{audio_s / took:.0f} s of audio per second")
    for skipped in report.skipped:
        print(f"  skipped {skipped.clip_id}: {skipped.reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="an existing cache folder (default: cache the shared recordings)")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1, 2, ... up to the cores)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed round")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = args.cache
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="trainer-data-bench-")) / "cache"
        build(root)
    cores = os.cpu_count() or 1
    counts = args.workers or sorted({1, 2, *[n for n in (4, 8, 16) if n <= cores], cores})
    print(f"cache: {root}  clips: {len(AudioCache(root))}  cores: {cores}  batch: {BATCH} windows of 5 s")
    print(f"{'pipeline':<10} {'workers':>7} {'windows/s/worker':>17} {'total':>8} {'workers/GPU':>12}")
    for augmented in (False, True):
        for n in counts:
            per_worker, total = measure(root, n, augmented, args.seconds, args.repeats)
            need = math.ceil(GPU_WINDOWS_PER_S / per_worker)
            print(f"{'augmented' if augmented else 'plain':<10} {n:>7} {per_worker:>17,.0f} {total:>8,.0f} {need:>12}")


if __name__ == "__main__":
    main()
