"""What `/analyze` serves with 1, 8 and 32 concurrent clients, beside `explorer analyze`'s own loop.

    python -m bench.analyze_cost                        # the default bundle, pools 1x2, 2x1, 3 rounds
    python -m bench.analyze_cost --bundle demo-tiny --pools 1x1,1x2,2x1,4x1 --rounds 5
    python -m bench.analyze_cost --home ~/.local/share/elsilencio-explorer

The bundles come from `--home` (a data home as the device lays it out), else a scratch home
where the demo and the default bundle are built (about 20 s). The uploads are real shared
recordings in every format the device reads (OGG, WAV at 9/44.1 kHz, MP3, FLAC; 1 to 60 s).
Each round times:

- baseline: `device.analysis.analyze_file` + `write_submission` in this process, one engine
  loaded as `explorer analyze` loads it (the bundle's thread hints), over the same recordings
  one after another: what the CLI does, without its start-up;
- for each pool (`ENGINESxTHREADS`: engines per bundle x onnxruntime threads per engine): the
  server as its own process (`--serve`: uvicorn + the /analyze router, no auth), clients
  posting the recordings from a shared list, 1, 8 and 32 at a time, each level given
  max(8, clients) uploads. Windows/s is the windows answered over the level's wall time;
  latency is each request's, from the first byte sent to the last received (the
  baseline's: each file's).

Prints medians over rounds: windows/s, its ratio to the baseline, p50 and p95 latency. Then the
most batching across requests could gain: the bundle's first branch fed the engine's own crops
one window per `session.run` against 8 windows per call (1 and 2 threads).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RECORDINGS = (
    "audio/elsilencio_soundscape/H02_20230420_074000.ogg",
    "audio/birdclef_train_audio/3.ogg",
    "audio/birds/spinetail.wav",
    "audio/birds/Cryp.soui.wav",
    "audio/insects/LIS_Magicicada_neotredecim_Marshall_Hill.mp3",
    "audio/insects/Rthoptera_eumodicogryllus_bordigalensis.flac",
    "audio/birdclef_train_audio/4.ogg",
    "audio/birdclef_train_audio/1.ogg",
)
CLIENTS = (1, 8, 32)


def scratch_home() -> Path:
    from device.home import ExplorerHome
    from exporter.default_bundle import build_default_bundle
    from exporter.demo_bundle import build_demo_bundle

    home = ExplorerHome.resolve(tempfile.mkdtemp(prefix="explorer-analyze-bench-")).ensure()
    build_demo_bundle(home)
    build_default_bundle(home, progress=lambda line: None)
    return home.root


def serve(home: Path, port: int, engines: int, threads: int, bundle: str | None) -> None:
    """The server side: the /analyze router alone behind uvicorn (run in its own process)."""
    import uvicorn
    from fastapi import FastAPI

    from sync_server.analysis import Analyser, AnalysisSettings
    from sync_server.api.analyze import make_analyze_router

    analyser = Analyser(home, AnalysisSettings(engines_per_bundle=engines, threads_per_engine=threads))
    analyser.pool(analyser.bundle(bundle)).load()  # engines load once, before the first request
    app = FastAPI()
    app.include_router(make_analyze_router(analyser))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(home: Path, engines: int, threads: int, bundle: str | None) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "bench.analyze_cost", "--serve", "--home", str(home), "--port", str(port),
               "--pools", f"{engines}x{threads}"] + (["--bundle", bundle] if bundle else [])
    process = subprocess.Popen(command, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/api/v1/analyze/bundles", timeout=1)
            return process, url
        except httpx.TransportError:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start within 60 s")


def baseline(home: Path, bundle: str | None, files: list[Path]) -> tuple[float, int, list[float]]:
    """Seconds, windows and per-file seconds for `explorer analyze`'s loop over `files`, in this process."""
    from device.analysis import analyze_file, row_id, write_submission
    from device.engine.loader import load_engine
    from device.home import ExplorerHome

    home_ = ExplorerHome.resolve(home)
    bundle_dir = bundle_path(home_, bundle)
    engine = load_engine(home_, bundle_dir, 0)
    next(analyze_file(engine, files[0]))  # warm the sessions, as the server's are
    started = time.perf_counter()
    windows, per_file = 0, []
    with tempfile.TemporaryDirectory() as scratch:
        for path in files:
            file_started = time.perf_counter()
            rows = [(row_id(path, i), p.scores) for i, p in enumerate(analyze_file(engine, path))]
            write_submission(Path(scratch) / "out.csv", engine.labels, rows)
            windows += len(rows)
            per_file.append(time.perf_counter() - file_started)
    return time.perf_counter() - started, windows, per_file


def bundle_path(home, bundle: str | None) -> Path | None:
    if bundle is None:
        return None
    from sync_server.analysis import Analyser

    return Analyser(home).bundle(bundle).verified.path


def level(url: str, files: list[Path], clients: int, bundle: str | None) -> tuple[float, int, list[float]]:
    """(wall seconds, windows answered, per-request latencies) for one concurrency level."""
    import httpx

    uploads = [files[i % len(files)] for i in range(max(8, clients))]
    params = {"bundle": bundle} if bundle else {}
    bodies = {path: path.read_bytes() for path in files}
    http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients))

    def one(path: Path) -> tuple[float, int]:
        started = time.perf_counter()
        response = http.post(f"{url}/api/v1/analyze", params=params, files={"file": (path.name, bodies[path])})
        took = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"{path.name}: {response.status_code} {response.text[:300]}")
        return took, response.content.count(b"\n") - 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, uploads))
    wall = time.perf_counter() - started
    http.close()
    return wall, sum(w for _, w in results), [t for t, _ in results]


def batching(home, bundle, files, threads_list=(1, 2), batch=8, rounds=3):
    """Windows/s of the bundle's model calls, one window per call vs `batch` windows per call.

    What batching across requests could at best gain: the same crops the engine feeds, in
    one `session.run` per `batch` windows instead of one per window (queueing not counted).
    """
    import numpy as np

    from device.analysis import file_windows
    from device.audio.resample import resample
    from device.engine.engine import make_crops
    from device.engine.session import BranchSession
    from device.home import ExplorerHome
    from sync_server.analysis import Analyser

    served = Analyser(ExplorerHome.resolve(home)).bundle(bundle)
    branch = served.verified.manifest.branches[0]
    rate = branch.input.sample_rate_hz
    crops = [make_crops(resample(w.samples, w.sample_rate_hz, rate), branch.input.window_samples,
                        round(w.real_samples * rate / w.sample_rate_hz))
             for path in files for w in file_windows(path)]
    out = {}
    for threads in threads_list:
        session = BranchSession(served.verified.path, branch, threads)
        session.run(np.concatenate(crops[:batch]))
        singles, batched = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            for c in crops:
                session.run(c)
            singles.append(time.perf_counter() - started)
            started = time.perf_counter()
            for i in range(0, len(crops), batch):
                session.run(np.concatenate(crops[i:i + batch]))
            batched.append(time.perf_counter() - started)
        out[threads] = (len(crops) / statistics.median(singles), len(crops) / statistics.median(batched))
    return served.dir_name, branch.name, len(crops), out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="data home holding the bundles (default: a scratch one, built)")
    parser.add_argument("--bundle", help="bundle name or name-version (default: the home's active one)")
    parser.add_argument("--pools", default="1x2,2x1", help="ENGINESxTHREADS,... (engines per bundle x threads)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-batching", action="store_true", help="leave out the model-call batching probe")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    pools = [tuple(int(n) for n in spec.split("x")) for spec in args.pools.split(",")]
    if args.serve:
        serve(args.home, args.port, *pools[0], args.bundle)
        return

    home = args.home or scratch_home()
    files = [SHARED / r for r in RECORDINGS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"the shared recordings are missing: {missing}")
    base_s, base_w, base_lat = [], 0, []
    served: dict[tuple, dict[int, list]] = {pool: {c: [] for c in CLIENTS} for pool in pools}
    for _ in range(args.rounds):
        took, base_w, per_file = baseline(home, args.bundle, files)
        base_s.append(took)
        base_lat.append(per_file)
        for pool in pools:
            process, url = start_server(home, *pool, args.bundle)
            try:
                for clients in CLIENTS:
                    served[pool][clients].append(level(url, files, clients, args.bundle))
            finally:
                process.terminate()
                process.wait(30)

    base_rate = base_w / statistics.median(base_s)
    load = os.getloadavg()[0]
    print(f"\nbundle: {args.bundle or 'the active one'} in {home}; {len(files)} shared recordings ({base_w} windows); "
          f"{os.cpu_count()} cores; {args.rounds} rounds; medians (load average at the end {load:.1f})\n")
    print(f"{'path':<50} {'windows/s':>10} {'× baseline':>11} {'p50 s':>8} {'p95 s':>8}")
    print(f"{'baseline: analyze_file in-process, 1 engine':<50} {base_rate:10.1f} {1.0:11.2f} "
          f"{statistics.median(percentile(l, 0.5) for l in base_lat):8.2f} "
          f"{statistics.median(percentile(l, 0.95) for l in base_lat):8.2f}")
    for pool, levels in served.items():
        for clients, runs in levels.items():
            rate = statistics.median(w / wall for wall, w, _ in runs)
            p50 = statistics.median(percentile(lat, 0.5) for _, _, lat in runs)
            p95 = statistics.median(percentile(lat, 0.95) for _, _, lat in runs)
            name = f"/analyze {pool[0]} engine(s) x {pool[1]} thread(s), {clients} client(s)"
            print(f"{name:<50} {rate:10.1f} {rate / base_rate:11.2f} {p50:8.2f} {p95:8.2f}")
    if not args.skip_batching:
        name, branch, windows, rates = batching(home, args.bundle, files, rounds=args.rounds)
        print(f"\nbatching across requests, at best: {name} branch {branch}, {windows} windows' crops, medians")
        for threads, (single, batched) in rates.items():
            print(f"  {threads} thread(s): one window per call {single:6.1f} windows/s, 8 per call {batched:6.1f} "
                  f"({batched / single:.2f}x)")


if __name__ == "__main__":
    main()
