"""Export cost: seconds and peak memory to write N detections to each export format, beside
reading the same rows alone in the same run.

    python -m bench.export_cost                       # 100,000 detections, 3 rounds
    python -m bench.export_cost --rows 20000 --rounds 1 --formats csv dwca
    python -m bench.export_cost --db /tmp/agg.db      # fill it once, reuse it on later runs

The database is a temporary aggregate SQLite database filled through `ServerStore.store_ingest`
(the ingest's own write path, in its own batches of 5,000): detections from 4 devices on
one-hour tours at two sites, three species (a frog, a bird, an insect), 10 % judged by a guide
(one in twenty of those rejected), 1 % with a clip the server holds (a real 5 s FLAC cut from
the shared recordings, so the Darwin Core Archive and the labelled list copy real files).

Each measurement runs in a fresh Python process (what `explorer-server export` is), so one
format's memory never inflates the next's:

- baseline: `sync_server.db.queries.iter_detection_rows` over every row, nothing written (the
  read path every format shares, and the floor under any of them);
- one row per format of `sync_server.export.formats.export` (csv, parquet, raven, dwca,
  labelled), every row selected, default options (the archive copies its clips).

The child reports its own clock (after its imports), its peak RSS (`ru_maxrss`) and its RSS
right after importing what the format needs (pyarrow for CSV/Parquet/DwC-A), so `grown` is
what the export itself held at its peak. Prints medians over rounds and each row's ratio to
the baseline's seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDING = REPO.parent / "shared" / "data" / "audio" / "birdclef_train_audio" / "3.ogg"
"""A real recording from the reserve's species (the clip every 100th detection holds)."""
FORMATS = ("csv", "parquet", "raven", "dwca", "labelled")
WRITERS = {"csv": "sync_server.export.tables", "parquet": "sync_server.export.tables",
           "raven": "sync_server.export.raven", "dwca": "sync_server.export.dwca",
           "labelled": "sync_server.export.labelled"}
"""What each format's child imports before its clock starts (import time is not export time)."""
SPECIES = {
    "21211": {"scientific_name": "Allobates femoralis", "common_name": "Spotted-thighed Poison Frog",
              "class_name": "Amphibia"},
    "littin1": {"scientific_name": "Crypturellus soui", "common_name": "Little Tinamou", "class_name": "Aves"},
    "50186": {"scientific_name": "Cicadidae", "common_name": "Typical Cicadas", "class_name": "Insecta"},
}
DEVICES = 4
TOUR_DETECTIONS = 720
"""One tour is an hour of 5 s detections (and one recording source, as a file run logs it)."""
BATCH = 5_000
"""Detections per `store_ingest` call (the ingest commits in batches too)."""
SITES = (("Quebrada H02", 6.5571, -74.2211), ("Bosque H04", 6.5602, -74.2189))


def cut_clip(folder: Path) -> tuple[Path, str, int, int]:
    """A 5 s FLAC from the shared recording: (path, sha256, size, sample rate)."""
    import soundfile as sf

    if not RECORDING.is_file():
        raise SystemExit(f"{RECORDING}: the shared recording the clips are cut from is missing")
    audio, rate = sf.read(RECORDING, frames=5 * 32_000, dtype="float32")
    path = folder / "clip.flac"
    sf.write(path, audio, rate, format="FLAC", subtype="PCM_16")
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size, rate


def fill(target: Path, rows: int, scratch: Path) -> float:
    """Store `rows` detections (and their tours, verdicts, clips) in a new database at `target`;
    returns the seconds it took."""
    from device.contracts.detection import detection_to_payload
    from device.contracts.feedback import feedback_to_payload
    from device.contracts.tour import tour_to_payload
    from device.domain import Detection, Feedback, Tour
    from sync_server.clips import ClipRecord
    from sync_server.db import ServerStore

    clip_path, sha, size, rate = cut_clip(scratch)
    started = time.perf_counter()
    store = ServerStore.open(target)
    rng = random.Random(1)
    t0 = datetime(2026, 4, 20, 6, 0, tzinfo=timezone.utc)
    labels = list(SPECIES)
    tours: dict[int, dict] = {}
    try:
        for first in range(0, rows, BATCH):
            detections, verdicts, clips, new_tours = [], [], [], []
            for n in range(first, min(rows, first + BATCH)):
                device, hour = n % DEVICES, n // (DEVICES * TOUR_DETECTIONS)
                tour_key = hour * DEVICES + device
                site, latitude, longitude = SITES[device % len(SITES)]
                begun = t0 + timedelta(hours=hour)
                if tour_key not in tours:
                    tours[tour_key] = tour_to_payload(Tour(
                        str(uuid.UUID(int=tour_key + 1, version=4)), f"Tour {hour} on pi-h0{device}", "Ana",
                        begun, begun + timedelta(hours=1), f"pi-h0{device}", site, latitude, longitude))
                    new_tours.append(tours[tour_key])
                offset = 5.0 * ((n // DEVICES) % TOUR_DETECTIONS)
                start = begun + timedelta(seconds=offset)
                det = Detection(
                    label=labels[n % len(labels)], started_on=start, ended_on=start + timedelta(seconds=5),
                    confidence=rng.random() * 0.5 + 0.5, branch_scores={"birdnet": rng.random(), "frog_head": None},
                    bundle_name="elsilencio-default", bundle_version="1.2.0", bundle_sha256="b" * 64,
                    device_id=f"pi-h0{device}", tour_id=tours[tour_key]["tour_id"],
                    source=f"/recordings/H0{device}_{hour:05d}.ogg", start_s=offset, end_s=offset + 5,
                    site=site, latitude=latitude, longitude=longitude, coordinate_uncertainty_m=30.0)
                detections.append(detection_to_payload(det, SPECIES))
                if n % 10 == 0:
                    verdict = "reject" if n % 200 == 0 else "confirm"
                    verdicts.append(feedback_to_payload(
                        Feedback(str(uuid.uuid4()), det.detection_id, verdict, None, start + timedelta(minutes=1)),
                        det.device_id))
                if n % 100 == 0:
                    clips.append(ClipRecord(str(uuid.uuid4()), det.device_id, det.detection_id, str(clip_path), sha,
                                            size, rate, 5.0, det.start_s))
            store.store_ingest(detections, verdicts, (), (), clips, new_tours)
        stored = store.counts().detections
    finally:
        store.close()
    if stored != rows:
        raise SystemExit(f"{target}: holds {stored} detections, expected {rows} (an existing database?)")
    return time.perf_counter() - started


def rss_now_kb() -> int:
    """This process's resident set now (Linux /proc), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(what: str, db: str, out: str) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import importlib
    import resource

    from sync_server.db import ServerStore
    from sync_server.db.queries import DetectionFilter, iter_detection_rows

    if what != "rows":
        from sync_server.export.formats import ExportOptions, export

        importlib.import_module(WRITERS[what])
    store = ServerStore.open(db, must_exist=True)
    after_imports = rss_now_kb()
    started = time.perf_counter()
    if what == "rows":
        rows = sum(1 for _ in iter_detection_rows(store, DetectionFilter()))
    else:
        rows = export(store, what, DetectionFilter(), Path(out), ExportOptions()).rows
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    target = Path(out)
    size = (target.stat().st_size if target.is_file()
            else sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.exists() else 0)
    print(json.dumps({"seconds": seconds, "peak_kb": peak, "imports_kb": after_imports, "rows": rows,
                      "bytes": size}))


def measure(what: str, db: Path, out: Path) -> dict:
    """Run one measurement in a fresh interpreter and return what it reported."""
    done = subprocess.run([sys.executable, "-m", "bench.export_cost", "--child", what, str(db), str(out)],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what}: the export process failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--db", type=Path, help="aggregate.db to use: filled first when it does not exist "
                        "(then kept), used as it is when it does (default: a temporary one)")
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "DB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    with tempfile.TemporaryDirectory(prefix="export-cost-") as scratch_dir:
        scratch = Path(scratch_dir)
        db = args.db or scratch / "aggregate.db"
        if db.exists():
            print(f"database: {db} (as it is)")
        else:
            if args.db:  # the clip must outlive this run too
                db.parent.mkdir(parents=True, exist_ok=True)
            seconds = fill(db, args.rows, db.parent if args.db else scratch)
            print(f"database: {args.rows:,} detections stored through store_ingest in {seconds:.1f} s")
        results: dict[str, list[dict]] = {"rows": []}
        for _ in range(args.rounds):
            for what in ["rows", *args.formats]:
                out = scratch / f"out-{what}{'' if what in ('rows', 'labelled') else '.' + what}"
                results.setdefault(what, []).append(measure(what, db, out))
                remove(out)

    def median(what: str, key: str) -> float:
        return statistics.median(r[key] for r in results[what])

    base = median("rows", "seconds")
    print(f"every row selected, {args.rounds} round(s), each in a fresh process; medians\n")
    print(f"{'path':<44}{'rows':>8}{'s':>8}{'× baseline':>12}{'peak MiB':>10}{'imports':>9}{'grown':>7}"
          f"{'out MB':>9}")
    for what in results:
        label = ("baseline: iter_detection_rows, nothing written" if what == "rows"
                 else f"export --format {what}")
        peak, imports = median(what, "peak_kb") / 1024, median(what, "imports_kb") / 1024
        seconds = median(what, "seconds")
        print(f"{label:<44}{int(median(what, 'rows')):>8}{seconds:>8.2f}{seconds / base:>12.2f}{peak:>10.0f}"
              f"{imports:>9.0f}{peak - imports:>7.0f}{median(what, 'bytes') / 1e6:>9.1f}")


if __name__ == "__main__":
    main()
