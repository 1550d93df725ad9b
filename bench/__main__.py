"""Run the device benchmarks in one command: `python -m bench` (or `make bench`)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench import pipeline_bench

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "H02_20230420_074000.ogg"
EXAMPLE_44K = REPO / "examples" / "spinetail.wav"
EXAMPLE_FROG = REPO / "examples" / "birdclef_train_2.ogg"  # Allobates femoralis calling for 105 s


def bundle_home(bundle: str | None):
    """The home whose trust list verifies the bundle: the user's, or a scratch one with the demo bundle."""
    from device.home import ExplorerHome

    home = ExplorerHome.resolve()
    if bundle or home.active_bundle():
        return home, bundle
    from exporter.demo_bundle import build_demo_bundle

    scratch = ExplorerHome.resolve(tempfile.mkdtemp(prefix="explorer-bench-")).ensure()
    return scratch, str(build_demo_bundle(scratch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", help="bundle directory (default: the active one, else the demo bundle)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    from device.engine.loader import load_engine

    home, bundle = bundle_home(args.bundle)
    print(f"bundle: {bundle or home.active_bundle()}  cores: {os.cpu_count()}")
    pipeline_bench.real_time_factor(lambda threads: load_engine(home, bundle, threads), EXAMPLE, windows=12)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # "on one core"
    engine = load_engine(home, bundle, 1)
    for recording in (EXAMPLE, EXAMPLE_44K):
        pipeline_bench.overhead(engine, recording, args.repeats)
    if not args.skip_latency:
        pipeline_bench.latency(engine, EXAMPLE_FROG, args.latency_seconds)


if __name__ == "__main__":
    main()
