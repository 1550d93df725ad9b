"""The watch folder (the seed design's online pipeline): files dropped in, results out.

Every new audio file in the input folder is analysed once: its BirdCLEF-format CSV goes to
the output folder and its detections to the local log. A file still being written is never
read early (`WatchFolder` waits until it settles), and the store remembers each finished file
by path, size and mtime, so a restart neither reprocesses nor skips one.

Crash safety: a file is marked 'processing' before it is analysed; its CSV is written
atomically; then its detections, their outbox messages and its 'done' mark are committed in
one transaction (`Store.save_watched_file_results`). A kill at any point leaves either
nothing of the file in the log (it is still 'processing', so the next start analyses it
again) or all of it, never its detections twice.

Privacy: the watch folder writes no clips at all (its results are the CSV and the log), but its
detections go through the same detector as a live run's, so one a person was heard in or next to
carries `clip_withheld = "privacy"` all the same: the server then knows no clip will come.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from device.analysis import analyze_file, row_id, write_submission
from device.audio.types import AudioError
from device.audio.watch import WatchFolder
from device.config import Settings
from device.detect.detector import Detector
from device.engine.engine import Engine
from device.home import ExplorerHome

log = logging.getLogger(__name__)

POLL_S = 1.0


def process_file(store, settings: Settings, engine: Engine, path: Path, out_dir: Path) -> tuple[Path, int]:
    """Analyse one file: mark it 'processing', write its CSV, then store its detections and
    mark it 'done' in one transaction; returns (csv path, detections).

    Raises:
        AudioError: the file cannot be analysed; it is marked 'failed' with the reason and
            nothing else of it is stored.
    """
    stat = path.stat()
    size, mtime = stat.st_size, stat.st_mtime
    store.mark_watched_file(path, size, mtime, status="processing")
    tour = store.active_tour()
    detector = Detector.for_engine(engine, settings, tour.tour_id if tour else None)
    rows, closed, unscored = [], [], 0
    try:
        for i, prediction in enumerate(analyze_file(engine, path)):
            rows.append((row_id(path, i), prediction.scores))
            unscored += bool(prediction.unscored_branches)
            closed.extend(detector.push(prediction).closed)
    except AudioError as exc:
        store.mark_watched_file(path, size, mtime, status="failed", result=str(exc))
        raise
    closed.extend(detector.flush())
    if unscored:
        log.warning("%s: %d of %d windows could not be scored (NaN/infinity or a failed branch); "
                    "their cells are empty in the CSV", path.name, unscored, len(rows))
    csv_path = write_submission(out_dir / f"{path.stem}.csv", engine.labels, rows)
    store.save_watched_file_results(path, size, mtime, [e.detection for e in closed], csv_path)
    withheld = sum(bool(e.detection.clip_withheld) for e in closed)
    if withheld:
        log.info("%s: %d of %d detections were heard next to a person talking (marked clip withheld)",
                 path.name, withheld, len(closed))
    return csv_path, len(closed)


def run_watch_folder(
    home: ExplorerHome, settings: Settings, engine: Engine, in_dir: Path, out_dir: Path, once: bool,
    settle_s: float = 2.0, stop: threading.Event | None = None,
) -> int:
    """Watch `in_dir` until `stop` is set (or, with `once`, until nothing is left to do).

    A file being analysed when `stop` is set is finished first, so it is recorded once.
    With `[sync] enabled`, a sync worker sends each file's detections once it is stored.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = WatchFolder(in_dir, settle_s=settle_s)
    sync = None
    if settings.sync.enabled:  # a field station with a link sends each file's detections as they land
        from device.sync.worker import SyncWorker

        from device.sync.status import run_status_source

        # The watch folder has no live pipeline: its status says bundle, disk and battery.
        source = run_status_source(settings.device.id, engine.manifest.name, engine.manifest.version, home.clips,
                                   lambda: None)
        sync = SyncWorker(home.database, settings.sync, settings.device.id, status_source=source).start()
    try:
        return _watch(home, settings, engine, in_dir, out_dir, once, folder, stop, sync)
    finally:
        if sync is not None:
            sync.stop()


def _watch(home, settings, engine, in_dir: Path, out_dir: Path, once: bool, folder: WatchFolder,
           stop: threading.Event | None, sync) -> int:
    from device.store import Store

    processed = 0
    with Store.open(home.database) as store:
        store.record_bundle(engine.manifest.name, engine.manifest.version, engine.bundle.sha256, engine.manifest.labels)
        log.info("watching %s; results to %s", in_dir, out_dir)
        stop = stop or threading.Event()
        while not stop.is_set():
            ready = folder.ready_files(store.watched_file_done)
            for path in ready:
                if stop.is_set():
                    break
                try:
                    csv_path, count = process_file(store, settings, engine, path, out_dir)
                except AudioError as exc:  # marked 'failed' with its reason: not retried until it changes
                    log.error("%s", exc)
                    continue
                processed += 1
                log.info("%s: %d detections -> %s", path.name, count, csv_path)
                if sync is not None and count:
                    sync.wake()
            if once and not ready and not folder.pending():
                break
            stop.wait(POLL_S)
        log.info("stopped watching %s", in_dir)
    return processed
