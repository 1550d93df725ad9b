"""Device pipeline benchmarks: overhead per window, sound-to-log latency, real-time factor.

    python -m bench                  # all three, on the active bundle (or the demo one)
    python -m bench --skip-latency   # without the 60 s paced run

Numbers are medians over repeats (these machines are noisy), printed as tables with ratios
against a baseline measured in the same process: the model's own inference time for the
overhead, one thread for the real-time factor.
"""

from __future__ import annotations

import uuid
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from device.audio.files import FileSource
from device.audio.queue import DropOldestQueue
from device.audio.resample import resample
from device.audio.types import AudioBlock
from device.audio.windows import Windower
from device.config import Settings
from device.detect.decide import Decider, thresholds_for
from device.detect.merge import EventMerger, EventStamp
from device.domain import Window
from device.engine.engine import Engine

WINDOW_S = 5.0
MIC_BLOCK_S = 0.5


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def read_seconds(path: Path, seconds: float) -> tuple[np.ndarray, int]:
    source = FileSource(path)
    parts, rate = [], None
    for block in source.blocks():
        rate = block.sample_rate_hz
        parts.append(block.samples)
        if sum(len(p) for p in parts) >= seconds * rate:
            break
    source.close()
    return np.concatenate(parts)[: round(seconds * rate)], rate


def print_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))


def overhead(engine: Engine, recording: Path, repeats: int) -> None:
    """Per 5 s window, everything but the model: capture hand-off, windowing, resampling, decide, log."""
    audio, rate = read_seconds(recording, WINDOW_S * 4)
    branch_rate = engine.manifest.branches[0].input.sample_rate_hz
    block = round(MIC_BLOCK_S * rate)
    blocks = [audio[i : i + block] for i in range(0, round(WINDOW_S * rate), block)]
    queue: DropOldestQueue = DropOldestQueue(64, "bench")
    from datetime import datetime, timezone

    t0 = datetime.now(timezone.utc)

    def capture_and_window():
        windower = Windower(rate, round(WINDOW_S * rate), round(2.5 * rate))
        for i, samples in enumerate(blocks):  # what the sound-card callback and capture thread do
            queue.put(AudioBlock(samples.copy(), rate, i * block, t0))
        while queue.snapshot().depth:
            windower.push(queue.get(timeout=1))

    window = Window(audio[: round(WINDOW_S * rate)], rate, 0.0, t0, "bench")
    prediction = engine.predict(window)
    manifest = engine.manifest
    decider = Decider(manifest.label_ids, thresholds_for(manifest))
    every_label = Decider(manifest.label_ids, thresholds_for(manifest) * 0)  # every label heard: the worst case
    stamp = EventStamp("bench", manifest.name, manifest.version, engine.bundle.sha256)

    def decide_and_merge(with_decider: Decider):
        merger = EventMerger(stamp)
        merger.push(prediction, with_decider.decide(prediction))

    from device.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db")
        merger = EventMerger(stamp)
        detection = merger.push(prediction, every_label.decide(prediction)[:1]).opened[0].detection

        def log_detection():
            d = replace(detection, detection_id=str(uuid.uuid4()))
            store.save_detection(d, final=False)
            store.save_detection(d, final=True)

        stages = [
            ("capture + window (10 blocks)", timed(capture_and_window, repeats)),
            (f"resample {rate} -> {branch_rate} Hz", timed(lambda: resample(window.samples, rate, branch_rate), repeats)),
            ("decide + merge (bundle thresholds)", timed(lambda: decide_and_merge(decider), repeats)),
            ("log: open + close + outbox", timed(log_detection, repeats)),
        ]
        worst = ("  decide + merge, every label heard", timed(lambda: decide_and_merge(every_label), repeats))
        store.close()
    inference = timed(lambda: engine.predict(window), repeats)
    base = median_ms(inference)
    rows = [(name, f"{median_ms(t):.3f}", f"{median_ms(t) / (WINDOW_S * 1000):.5f}", f"{median_ms(t) / base:.3f}")
            for name, t in stages]
    total = sum(median_ms(t) for _, t in stages)
    rows.append(("TOTAL overhead", f"{total:.3f}", f"{total / (WINDOW_S * 1000):.5f}", f"{total / base:.3f}"))
    worst_total = total - median_ms(stages[2][1]) + median_ms(worst[1])
    rows.append((worst[0], f"{median_ms(worst[1]):.3f}", "", f"{median_ms(worst[1]) / base:.3f}"))
    rows.append(("  TOTAL with every label heard", f"{worst_total:.3f}", f"{worst_total / (WINDOW_S * 1000):.5f}",
                 f"{worst_total / base:.3f}"))
    rows.append(("model inference (baseline)", f"{base:.3f}", f"{base / (WINDOW_S * 1000):.5f}", "1.000"))
    print_table(
        f"Pipeline overhead per {WINDOW_S:.0f} s window, one core ({recording.name}, {repeats} repeats, medians)",
        ("stage", "ms", "of window", "x inference"),
        rows,
    )


def real_time_factor(engine_for, recording: Path, windows: int) -> None:
    audio, rate = read_seconds(recording, WINDOW_S * windows)
    from datetime import datetime, timezone

    cuts = [Window(audio[i * round(WINDOW_S * rate) : (i + 1) * round(WINDOW_S * rate)], rate, i * WINDOW_S,
                   datetime.now(timezone.utc), "bench") for i in range(windows)]
    rows, base = [], None
    for threads in (1, 2):
        engine = engine_for(threads)
        engine.predict(cuts[0])  # warm-up
        per_window = [engine.predict(w).inference_s for w in cuts]
        ms = median_ms(per_window)
        base = base or ms
        rows.append((threads, f"{ms:.2f}", f"{ms / (WINDOW_S * 1000):.4f}", f"{base / ms:.2f}"))
    print_table(
        f"Real-time factor ({recording.name}, {windows} windows of {WINDOW_S:.0f} s, medians)",
        ("threads", "ms/window", "RTF", "speed-up vs 1 thread"),
        rows,
    )


def latency(engine: Engine, recording: Path, seconds: float) -> None:
    """Window end to committed detection, with the file paced as live audio."""
    from device.pipeline import Pipeline, latency_percentiles

    settings = Settings()  # the bundle's own thresholds: a frog calling through the recording
    with tempfile.TemporaryDirectory() as tmp:
        source = FileSource(recording, realtime=True)
        pipeline = Pipeline(engine, source, settings, Path(tmp) / "bench.db", Path(tmp) / "clips", live=True)
        pipeline.start()
        pipeline.wait(timeout=seconds)
        pipeline.stop()
        pipeline.wait()
        p50, p95 = latency_percentiles(list(pipeline.latencies_s))
        status = pipeline.status()
    print_table(
        f"Sound-to-log latency, {recording.name} paced in real time ({status.audio_s:.0f} s, "
        f"{len(pipeline.latencies_s)} detection commits)",
        ("p50 ms", "p95 ms", "windows", "dropped", "RTF"),
        [(f"{p50 * 1000:.1f}", f"{p95 * 1000:.1f}", status.windows_inferred, status.windows_dropped, f"{status.rtf:.3f}")],
    )
