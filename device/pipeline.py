"""The live pipeline: source -> windows -> engine -> detections -> SQLite, on three threads.

    capture thread   reads the source, cuts windows, puts them on a bounded queue. Live
                     sources never wait: when inference falls behind, the OLDEST pending
                     window is dropped and counted. Files wait instead (backpressure).
    inference thread runs the engine, decides labels, merges windows into events.
    writer thread    owns the Store: commits detections (with their outbox message),
                     writes clips and applies clip retention, off the inference path.

Privacy: a detection a person was heard in or next to (`Detection.clip_withheld`, decided by the
detector: device/detect/privacy.py) is committed like any other, but its clip is never written;
`clips_withheld` counts them beside `clips_written`.

The UI never touches these threads: it reads `status()` snapshots and drains `ui_events`,
a bounded queue whose drops are counted separately and never cost a window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from device.audio.queue import DropOldestQueue
from device.audio.types import AudioBlock, AudioError, AudioSource
from device.audio.windows import cut_windows
from device.config import Settings
from device.detect.detector import Detector
from device.detect.merge import OpenEvent
from device.domain import Detection, Prediction, Window
from device.engine.engine import Engine

log = logging.getLogger(__name__)

ANALYSIS_WINDOW_S = 5.0
"""The detection timeline's window: BirdCLEF's 5 s. Branches with other windows are fed crops."""
WRITER_QUEUE = 1024
"""Store operations waiting for the writer; past this the inference thread waits (never drops a detection)."""
UI_QUEUE = 32
"""UI events kept for a slow screen; older ones are dropped (counted) so the UI never holds the
pipeline. Each prediction event holds its window's audio and mel (~0.8 MB at 32 kHz), so this
bounds a frozen screen's backlog to ~25 MB; a screen that missed events reloads from the log."""
LATENCY_SAMPLES = 4096
_END = object()


@dataclass
class PipelineStatus:
    """A read-only snapshot for the headless log, the TUI and the benchmarks."""

    source: str = ""
    source_state: str = "starting"
    bundle: str = ""
    windows_captured: int = 0
    windows_inferred: int = 0
    windows_dropped: int = 0
    queue_depth: int = 0
    audio_s: float = 0.0
    inference_s: float = 0.0
    rtf: float = 0.0
    """Inference time over audio time advanced (below 1 keeps up with live audio)."""
    last_inference_ms: float = 0.0
    windows_unscored: int = 0
    """Windows a branch gave NaN/infinity on or failed on (`Prediction.unscored_branches`): the
    labels left without a trustworthy score are NaN there, and no detection opens from a NaN."""
    branch_failures: int = 0
    """Optional-branch runs that raised (a required branch's failure stops the run: `error`)."""
    detections_opened: int = 0
    detections_closed: int = 0
    clips_written: int = 0
    clips_withheld: int = 0
    """Closed detections whose clip was never written because a person was heard in or next to
    them (`[privacy]`); they are stored and synced, without audio."""
    windows_private: int = 0
    """Windows in which a person was heard (their "Human vocal" over `[privacy]
    human_vocal_threshold`, or not scored by a bundle that has it)."""
    windows_suppressed: int = 0
    """Windows that heard nothing because an engine, siren, gun or fireworks was loud
    (`[privacy] suppress_while_loud`, off by default)."""
    clip_errors: int = 0
    store_errors: int = 0
    ui_events_dropped: int = 0
    tour_id: str | None = None
    microphone: object | None = None
    """The microphone's own status (state, reconnect attempts, level, clipping) for a live source."""
    finished: bool = False
    error: str | None = None


@dataclass
class UiEvent:
    kind: str
    """'prediction' (every window) or 'detection' (an event opened, grew or closed)."""
    prediction: Prediction | None = None
    detection: Detection | None = None
    state: str = ""


@dataclass
class _Timed:
    window: Window
    emitted_at: float
    """time.monotonic() when the window's last sample reached the pipeline."""


@dataclass
class _StoreOp:
    kind: str  # open | update | close
    event: OpenEvent
    emitted_at: float
    detection: Detection = field(init=False)

    def __post_init__(self):
        # Snapshot: the inference thread keeps mutating the live event.
        live = self.event.detection
        self.detection = replace(live, branch_scores=dict(live.branch_scores), context_scores=dict(live.context_scores))


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        source: AudioSource,
        settings: Settings,
        database: Path,
        clips_dir: Path,
        live: bool,
        tour_id: str | None = None,
        on_detection: Callable[[Detection], None] | None = None,
    ):
        self.engine = engine
        self.source = source
        self.settings = settings
        self.database = Path(database)
        self.clips_dir = Path(clips_dir)
        self.live = live
        self.on_detection = on_detection
        manifest = engine.manifest
        self.detector = Detector.for_engine(engine, settings, tour_id)
        self.windows = DropOldestQueue(settings.audio.queue_windows, "inference")
        self.store_ops: DropOldestQueue = DropOldestQueue(WRITER_QUEUE, "writer")
        self.ui_events = DropOldestQueue(UI_QUEUE, "ui", drop_note="the screen skips an update, no audio is lost")
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._status = PipelineStatus(source=source.name, bundle=f"{manifest.name} {manifest.version}", tour_id=tour_id)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- control ---------------------------------------------------------------------------
    def start(self) -> "Pipeline":
        for target, name in ((self._capture, "capture"), (self._infer, "inference"), (self._write, "writer")):
            thread = threading.Thread(target=target, name=f"explorer-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop capturing; what was captured is still analysed and committed."""
        self._stop.set()
        self.source.close()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def set_tour(self, tour_id: str | None) -> None:
        """Detections opened from now on belong to `tour_id`."""
        self.detector.set_tour(tour_id)
        with self._lock:
            self._status.tour_id = tour_id

    def status(self) -> PipelineStatus:
        with self._lock:
            snapshot = replace(self._status)
        queue = self.windows.snapshot()
        snapshot.windows_dropped = queue.drops
        snapshot.queue_depth = queue.depth
        snapshot.ui_events_dropped = self.ui_events.snapshot().drops
        source_status = getattr(self.source, "status", None)
        if callable(source_status):
            snapshot.microphone = source_status()
            if snapshot.source_state not in ("ended", "starting"):
                snapshot.source_state = snapshot.microphone.state
        return snapshot

    def _update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._status, key, value)

    def _fail(self, where: str, exc: BaseException) -> None:
        if isinstance(exc, AudioError):  # bad input, named in its message: no traceback to read
            log.error("%s thread stopped: %s", where, exc)
        else:
            log.exception("%s thread failed", where)
        self._update(error=f"{where}: {exc}")
        self._stop.set()

    # -- capture ---------------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            windows = cut_windows(self._blocks(), ANALYSIS_WINDOW_S, self.settings.audio.hop_s, self.source.name,
                                  self.engine.min_sample_rate_hz)
            for window in windows:
                self._emit(window)
        except Exception as exc:  # the source died or cannot be used: analyse what we have, then stop
            self._fail("capture", exc)
        finally:
            self._update(source_state="ended")
            self.windows.put_blocking(_END, timeout=None)

    def _blocks(self) -> Iterator[AudioBlock]:
        """The source's blocks until it ends or `stop()` (the window under way is then flushed)."""
        for block in self.source.blocks():
            if self._stop.is_set():
                return
            self._update(source_state="capturing")
            yield block

    def _emit(self, window: Window) -> None:
        item = _Timed(window, time.monotonic())
        with self._lock:
            self._status.windows_captured += 1
        if self.live:
            self.windows.put(item)
        else:
            self.windows.put_blocking(item, timeout=None)

    # -- inference ---------------------------------------------------------------------------
    def _infer(self) -> None:
        hop_s = self.settings.audio.hop_s
        try:
            while True:
                item = self.windows.get(timeout=None)
                if item is _END:
                    break
                prediction = self.engine.predict(item.window)
                merged = self.detector.push(prediction)
                for event in merged.closed:
                    self._to_writer("close", event, item.emitted_at)
                for event in merged.opened:
                    self._to_writer("open", event, item.emitted_at)
                for event in merged.extended:
                    self._to_writer("update", event, item.emitted_at)
                advanced = min(hop_s, item.window.real_samples / item.window.sample_rate_hz)
                with self._lock:
                    status = self._status
                    status.windows_inferred += 1
                    status.audio_s += advanced
                    status.inference_s += prediction.inference_s
                    status.rtf = status.inference_s / status.audio_s if status.audio_s else 0.0
                    status.last_inference_ms = prediction.inference_s * 1000
                    status.windows_unscored += bool(prediction.unscored_branches)
                    status.branch_failures += len(prediction.failed_branches)
                    status.windows_private += merged.private
                    status.windows_suppressed += merged.suppressed is not None
                self.ui_events.put(UiEvent("prediction", prediction=prediction))
        except Exception as exc:
            self._fail("inference", exc)
        finally:
            for event in self.detector.flush():
                self._to_writer("close", event, time.monotonic())
            self.store_ops.put_blocking(_END, timeout=None)

    def _to_writer(self, kind: str, event: OpenEvent, emitted_at: float) -> None:
        self.store_ops.put_blocking(_StoreOp(kind, event, emitted_at), timeout=None)

    # -- writer ------------------------------------------------------------------------------
    def _write(self) -> None:
        from device.store import Store

        store = Store.open(self.database)
        try:
            while True:
                op = self.store_ops.get(timeout=None)
                if op is _END:
                    break
                try:
                    store.save_detection(op.detection, final=(op.kind == "close"))
                except Exception as exc:
                    with self._lock:
                        self._status.store_errors += 1
                        errors = self._status.store_errors
                    if errors == 1 or errors % 100 == 0:  # a full card fails every write: say so, not 1000 times
                        log.error("could not store detection %s (%s; %d store errors so far): %s",
                                  op.detection.detection_id, op.kind, errors, exc)
                    continue
                if op.kind != "close":  # a window's label committed: sound-to-log latency
                    self.latencies_s.append(time.monotonic() - op.emitted_at)
                if op.kind == "open":
                    with self._lock:
                        self._status.detections_opened += 1
                self.ui_events.put(UiEvent("detection", detection=op.detection, state=op.kind))
                if op.kind == "close":
                    with self._lock:
                        self._status.detections_closed += 1
                    if self.on_detection:
                        self.on_detection(op.detection)
                    if op.detection.clip_withheld:  # a person was heard: no audio of it, ever
                        with self._lock:
                            self._status.clips_withheld += 1
                    elif self.settings.clips.enabled:
                        self._save_clip(store, op)
        except Exception as exc:
            self._fail("writer", exc)
        finally:
            store.close()
            self._update(finished=True)

    def _save_clip(self, store, op: _StoreOp) -> None:
        clips = self.settings.clips
        try:
            store.save_clip(
                self.clips_dir, op.detection, op.event.peak_audio, op.event.peak_rate_hz, start_s=op.detection.peak_start_s
            )
            store.enforce_clip_budget(int(clips.budget_mb * 1_000_000), clips.keep_per_species)
            with self._lock:
                self._status.clips_written += 1
        except Exception as exc:  # a full card loses the clip, never the detection
            log.error("could not save the clip of detection %s: %s", op.detection.detection_id, exc)
            with self._lock:
                self._status.clip_errors += 1


def latency_percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p95 of sound-to-log latencies, in seconds."""
    if not latencies:
        return float("nan"), float("nan")
    values = np.asarray(latencies)
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))

