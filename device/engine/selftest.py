"""A bundle's self-test on this device, before it may become the active one.

A signature proves who made a bundle, not that it runs here: an opset this onnxruntime lacks,
a graph that emits NaN, or a branch that fails to load would each leave a guide on the trail
with a silent device. So a new bundle is loaded and run on real audio first, the device's own
most recent clips (what it will hear next), or one window of silence on a device that has
none yet, and it becomes active only if every branch loads and every score is a finite
probability.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from device.bundle.manifest import BundleError
from device.bundle.verify import VerifiedBundle
from device.domain import Window

CLIPS_USED = 3
"""Recent clips the self-test runs on: enough to exercise every branch, quick on a Pi."""
WINDOW_S = 5.0


class SelfTestError(BundleError):
    """The bundle verified but does not run correctly on this device; the message says how."""


@dataclass(frozen=True)
class SelfTestReport:
    windows: int
    audio: str
    """What it listened to: clip file names, or 'silence (no clips on this device yet)'."""
    ms_per_window: float
    top_label: str
    top_score: float


def recent_clip_windows(clips_dir: Path, limit: int = CLIPS_USED) -> list[Window]:
    """One 5 s window from each of the `limit` newest readable clips under `clips_dir`."""
    import soundfile as sf

    clips = sorted((p for p in Path(clips_dir).rglob("*.flac") if p.is_file()),
                   key=lambda p: p.stat().st_mtime, reverse=True) if Path(clips_dir).is_dir() else []
    windows = []
    for clip in clips:
        try:
            samples, rate = sf.read(clip, dtype="float32", always_2d=True)
        except (RuntimeError, OSError):  # a damaged clip says nothing about the bundle
            continue
        mono = samples.mean(axis=1)
        length = int(WINDOW_S * rate)
        window = np.zeros(length, dtype=np.float32)
        window[: min(length, len(mono))] = mono[:length]
        windows.append(Window(window, int(rate), 0.0, datetime.now(timezone.utc), str(clip),
                              valid_samples=max(1, min(length, len(mono))), index=len(windows)))
        if len(windows) == limit:
            break
    return windows


def self_test(bundle: VerifiedBundle, clips_dir: Path, threads: int = 1) -> SelfTestReport:
    """Load `bundle` and run it on recent clips (or silence); raise SelfTestError on any fault."""
    from device.engine.engine import Engine

    manifest = bundle.manifest
    try:
        engine = Engine(bundle, threads=threads)
    except BundleError as exc:
        raise SelfTestError(f"{manifest.name} {manifest.version}: does not load here: {exc}") from None
    missing = [b.name for b in manifest.branches if b.name not in engine.sessions]
    if missing:
        raise SelfTestError(f"{manifest.name} {manifest.version}: branches {missing} do not load on this device")
    windows = recent_clip_windows(clips_dir)
    audio = ", ".join(Path(w.source).name for w in windows)
    if not windows:
        rate = manifest.branches[0].input.sample_rate_hz
        windows = [Window(np.zeros(int(WINDOW_S * rate), dtype=np.float32), rate, 0.0, datetime.now(timezone.utc),
                          "silence")]
        audio = "silence (no clips on this device yet)"
    started = time.perf_counter()
    best = (0.0, "")
    for window in windows:
        try:
            prediction = engine.predict(window)
        except Exception as exc:
            raise SelfTestError(f"{manifest.name} {manifest.version}: fails on {Path(window.source).name}: {exc}") from None
        scores = prediction.scores
        if scores.shape != (len(engine.labels),):
            raise SelfTestError(f"{manifest.name} {manifest.version}: gave {scores.shape} scores for "
                                f"{len(engine.labels)} labels")
        top = int(np.argmax(scores))
        best = max(best, (float(scores[top]), engine.labels[top]))
    counters = engine.counters
    if counters.nonfinite_scores or counters.branch_failures:
        raise SelfTestError(
            f"{manifest.name} {manifest.version}: {counters.nonfinite_scores} branch output(s) held NaN or "
            f"infinity and {counters.branch_failures} branch run(s) failed on {audio}"
        )
    ms = 1000 * (time.perf_counter() - started) / len(windows)
    return SelfTestReport(len(windows), audio, ms, best[1], best[0])
