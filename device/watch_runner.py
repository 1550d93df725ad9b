"""The watch folder (the seed design's online pipeline): files dropped in, results out.

Every new audio file in the input folder is analysed once: its BirdCLEF-format CSV goes to
the output folder and its detections to the local log. A file still being written is never
read early (`WatchFolder` waits until it settles), and the store remembers each finished file
by path, size and mtime, so a restart neither reprocesses nor skips one.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from device.analysis import analyze_file, row_id, write_submission
from device.audio.types import AudioError
from device.audio.watch import WatchFolder
from device.config import Settings
from device.detect.decide import Decider, thresholds_for
from device.detect.merge import EventMerger, EventStamp
from device.engine.engine import Engine
from device.home import ExplorerHome

log = logging.getLogger(__name__)

POLL_S = 1.0


def process_file(store, settings: Settings, engine: Engine, path: Path, out_dir: Path) -> tuple[Path, int]:
    """Analyse one file: write its CSV, store its detections; returns (csv path, detections)."""
    manifest = engine.manifest
    decider = Decider(manifest.label_ids, thresholds_for(manifest, settings.detection.thresholds, settings.detection.min_threshold))
    tour = store.active_tour()
    merger = EventMerger(
        EventStamp(settings.device.id, manifest.name, manifest.version, engine.bundle.sha256, tour.tour_id if tour else None),
        settings.detection.merge_gap_windows,
    )
    rows, closed = [], []
    for i, prediction in enumerate(analyze_file(engine, path)):
        rows.append((row_id(path, i), prediction.scores))
        closed.extend(merger.push(prediction, decider.decide(prediction)).closed)
    closed.extend(merger.flush())
    csv_path = write_submission(out_dir / f"{path.stem}.csv", engine.labels, rows)
    for event in closed:
        store.save_detection(event.detection, final=True)
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

        sync = SyncWorker(home.database, settings.sync, settings.device.id).start()
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
                stat = path.stat()
                try:
                    csv_path, count = process_file(store, settings, engine, path, out_dir)
                except AudioError as exc:
                    log.error("%s", exc)
                    store.mark_watched_file(path, stat.st_size, stat.st_mtime, status="failed", result=str(exc))
                    continue
                store.mark_watched_file(path, stat.st_size, stat.st_mtime, status="done", result=str(csv_path))
                processed += 1
                log.info("%s: %d detections -> %s", path.name, count, csv_path)
                if sync is not None and count:
                    sync.wake()
            if once and not ready and not folder.pending():
                break
            stop.wait(POLL_S)
        log.info("stopped watching %s", in_dir)
    return processed
