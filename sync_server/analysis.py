"""Analysis of an uploaded recording on the server, with the device's own code.

`POST /api/v1/analyze` (sync_server/api/analyze.py) hands the spooled upload to an `Analyser`.
It runs `device.analysis.analyze_file` with the device's `Engine` on a bundle verified as the
device verifies it, and writes the CSV with `device.analysis.write_submission`: one code path,
so the CSV is byte for byte what `explorer analyze` writes for the same file and bundle, and
the server and a Pi agree window for window.

Where the bundles come from: a data home laid out as the device's (`ExplorerHome`):
`<home>/bundles/<name>-<version>/` and the trust list `<home>/keys/trusted/*.pub`. So
`explorer --home DIR export default-bundle` and `explorer --home DIR bundle install X.tar` fill
it, and its ACTIVE bundle is the one served when a request names none. A bundle that does not
verify (hashes, signature, trust) is never served; the refusal is logged and kept in `refused`.

Concurrency: each bundle gets a pool of engines (default: one single-threaded engine per core),
loaded once on first use and reused. Requests borrow an engine for one window at a time, so a
short clip is not queued behind an hour-long one. Measured with bench/analyze_cost.py on the
2-core box (other test runs sharing it, load 2 to 5; the default bundle, 2 rounds): with 8 and
32 clients, 2 engines x 1 thread served 17.4 and 17.3 windows/s (1.25x the in-process
`analyze_file` loop's 13.9), 1 engine x 2 threads 14.7 and 15.1, 1 x 1 14.7 and 12.3; so the
default is one single-threaded engine per core. Batching windows across requests into one model
call does not pay: the models are compute-bound, and the engine's crops of 8 windows in one
`session.run` ran at 0.76x (1 thread) and 0.94x (2 threads) the windows/s of one window per
call (demo bundle: 1.01x, 0.69x), so windows are not batched.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.analysis import SUBMISSION_WINDOW_S, analyze_file, row_id, write_submission
from device.audio.files import FileSource
from device.audio.resample import ratio
from device.audio.types import AudioError
from device.audio.windows import check_rate
from device.bundle.manifest import BundleError, Label
from device.bundle.verify import VerifiedBundle, verify_bundle
from device.detect.decide import Decider
from device.domain import Prediction, Window
from device.engine.engine import Engine
from device.home import ExplorerHome

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 256 * 1024 * 1024
"""An hour of 32 kHz 16-bit mono WAV (the BirdCLEF soundscape format) is 230 MB; bigger
recordings are a job for `explorer analyze` beside the files, not an HTTP upload."""

DEFAULT_MAX_DURATION_S = 4 * 3600.0
"""A compressed file can hold far more audio than its size suggests (FLAC of near-silence):
the work a request may cost is bounded by its duration too (4 h: 2880 windows)."""

MAX_SAMPLE_RATE_HZ = 1_000_000
"""The fastest ultrasonic recorders sample at 1 MHz; a 5 s window of that is 20 MB of float32.
A header promising more is corrupt or hostile (the window buffer would be gigabytes)."""

MAX_RATIO_TERM = 10_000
"""Resampling 44101 Hz to 32 kHz needs a 882,000-tap polyphase filter per window (0.2 s), and
999,983 Hz to 48 kHz 6 s per window: a rate whose reduced ratio to a branch's rate has a term
above this is no recorder's rate. Every real rate in the shared data (9 to 250 kHz) stays
under 1,000."""

DEFAULT_MAX_IN_FLIGHT = 64
"""Analyses (upload + run) at once; past it a request is turned away with 503, so spooled
uploads can never take more than this many times the upload limit of disk."""


class BadAudio(ValueError):
    """The upload is not audio the device can analyse (a 422); the message names the upload."""


class UploadTooLarge(ValueError):
    """The upload exceeds the size limit (a 413)."""


class UnknownBundle(LookupError):
    """The request named a bundle the server does not hold (a 404)."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""


class NoBundle(RuntimeError):
    """The server holds no bundle it can serve (a 503: a setup problem, not the client's)."""


def default_engines() -> int:
    """One single-threaded engine per core this process may run on (see the module docstring)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class AnalysisSettings:
    """The server's limits and pool sizes for /analyze."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    engines_per_bundle: int = field(default_factory=default_engines)
    threads_per_engine: int = 1
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    spool_dir: Path | None = None
    """Where uploads are spooled (default: the system's temp folder)."""


@dataclass(frozen=True)
class ServedBundle:
    """A verified bundle the server analyses with."""

    dir_name: str
    verified: VerifiedBundle

    @property
    def name(self) -> str:
        return self.verified.manifest.name

    @property
    def version(self) -> str:
        return self.verified.manifest.version

    @property
    def sha256(self) -> str:
        return self.verified.sha256

    @property
    def labels(self) -> tuple[Label, ...]:
        return self.verified.manifest.labels

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "directory": self.dir_name}


class EnginePool:
    """Engines of one bundle, loaded once (on first use) and lent out one window at a time.

    Quacks like an `Engine` for `device.analysis.analyze_file` (`min_sample_rate_hz`, `predict`),
    so the device's own loop runs unchanged; each `predict` borrows an idle engine (an Engine is
    not thread-safe) and returns it.
    """

    def __init__(self, verified: VerifiedBundle, size: int, threads: int):
        if size < 1:
            raise ValueError(f"an engine pool needs at least one engine, got {size}")
        self.verified = verified
        self.size = size
        self.threads = threads
        self._idle: queue.Queue[Engine] = queue.Queue()
        self._load_lock = threading.Lock()
        self._engines: list[Engine] = []

    def load(self) -> "EnginePool":
        with self._load_lock:
            if not self._engines:
                engines = [Engine(self.verified, threads=self.threads) for _ in range(self.size)]
                self._engines = engines
                for engine in engines:
                    self._idle.put(engine)
        return self

    @property
    def labels(self) -> tuple[str, ...]:
        return self.verified.manifest.label_ids

    @property
    def min_sample_rate_hz(self) -> int:
        return self.load()._engines[0].min_sample_rate_hz

    @property
    def windows(self) -> int:
        """Windows scored by this pool's engines so far."""
        return sum(engine.counters.windows for engine in self._engines)

    def predict(self, window: Window) -> Prediction:
        self.load()
        engine = self._idle.get()
        try:
            return engine.predict(window)
        finally:
            self._idle.put(engine)


@dataclass(frozen=True)
class WindowResult:
    row_id: str
    start_s: float
    end_s: float
    scores: np.ndarray
    unscored_branches: tuple[str, ...]


@dataclass(frozen=True)
class Analysis:
    """One recording's windows, scored by one bundle."""

    bundle: ServedBundle
    file_name: str
    windows: tuple[WindowResult, ...]

    def submission_csv(self) -> bytes:
        """The BirdCLEF submission CSV, written by the device's `write_submission`."""
        with tempfile.TemporaryDirectory(prefix="explorer-submission-") as scratch:
            path = write_submission(Path(scratch) / "submission.csv", self.bundle.verified.manifest.label_ids,
                                    [(w.row_id, w.scores) for w in self.windows])
            return path.read_bytes()

    def detections(self) -> dict:
        """The JSON answer: per window, the labels at or over their thresholds, best first, by
        the device's own rule (device/detect/decide.py: a NaN, unscored, label is never heard)."""
        manifest = self.bundle.verified.manifest
        thresholds = np.asarray(manifest.thresholds_array(), dtype=np.float32)
        decider = Decider(manifest.label_ids, thresholds)
        windows = []
        for w in self.windows:
            heard = decider.heard(np.asarray(w.scores))  # the top label first, then by score
            windows.append({
                "row_id": w.row_id,
                "start_s": round(w.start_s, 6),
                "end_s": round(w.end_s, 6),
                "labels": [_label_entry(manifest.labels[h.index], h.score, float(thresholds[h.index])) for h in heard],
                "unscored_branches": list(w.unscored_branches),
            })
        return {"bundle": {"name": self.bundle.name, "version": self.bundle.version, "sha256": self.bundle.sha256},
                "file": self.file_name, "window_s": SUBMISSION_WINDOW_S, "windows": windows}


def _label_entry(label: Label, score: float, threshold: float) -> dict:
    return {"label": label.primary_label, "scientific_name": label.scientific_name,
            "common_name": label.common_name, "class_name": label.class_name,
            "score": round(score, 6), "threshold": round(threshold, 6)}


class Analyser:
    """The bundles a server holds, their engine pools, and the analysis of one upload."""

    def __init__(self, home: Path | str, settings: AnalysisSettings | None = None):
        """
        Args:
            home: A data home as the device lays it out (a path, or an `ExplorerHome`).
            settings: Limits and pool sizes (default: `AnalysisSettings()`).
        """
        self.home = home if isinstance(home, ExplorerHome) else ExplorerHome.resolve(Path(home).expanduser())
        self.root = self.home.root
        self.bundles_dir = self.home.bundles
        self.trust_dir = self.home.trusted_keys
        self.settings = settings or AnalysisSettings()
        self._bundles: dict[str, ServedBundle] = {}
        self.refused: dict[str, str] = {}
        """Bundle directories that did not verify, with the reason (never served)."""
        self._pools: dict[str, EnginePool] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Verify the bundles installed since the last look (each directory once)."""
        bundles_dir = self.bundles_dir
        found = sorted(p for p in bundles_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if bundles_dir.is_dir() else []
        with self._lock:
            for path in found:
                if path.name in self._bundles or path.name in self.refused:
                    continue
                try:
                    self._bundles[path.name] = ServedBundle(path.name, verify_bundle(path, self.trust_dir))
                except BundleError as exc:
                    self.refused[path.name] = str(exc)
                    log.warning("not serving bundle %s: %s", path, exc)

    @property
    def bundles(self) -> list[ServedBundle]:
        return list(self._bundles.values())

    @property
    def default_bundle(self) -> ServedBundle | None:
        """The home's ACTIVE bundle when it verified, else the only one held, else None."""
        try:
            active = self.home.active_bundle_pointer.read_text(encoding="utf-8").strip()
        except OSError:
            active = ""
        if active in self._bundles:
            return self._bundles[active]
        return self.bundles[0] if len(self._bundles) == 1 else None

    def bundle(self, name: str | None = None) -> ServedBundle:
        """The bundle a request names: a directory name (`name-version`), or a manifest name
        (the active one of that name, else its newest by creation time); None: the default.

        Raises:
            UnknownBundle: no verified bundle has that name (the message lists those held).
            NoBundle: none named and the server has no default (or no bundle at all).
        """
        if name is None:
            chosen = self.default_bundle
            if chosen is None:
                if not self._bundles:
                    raise NoBundle(f"this server holds no verified bundle in {self.bundles_dir}: build one with "
                                   f"`explorer --home {self.root} export default-bundle` or install one with "
                                   f"`explorer --home {self.root} bundle install X.tar`")
                raise NoBundle(f"no active bundle in {self.bundles_dir}: name one with ?bundle= ({self._held()})")
            return chosen
        chosen = self._find(name)
        if chosen is None:
            self.refresh()  # installed since the server started?
            chosen = self._find(name)
        if chosen is None:
            why = f"; {name} did not verify: {self.refused[name]}" if name in self.refused else ""
            raise UnknownBundle(f"bundle {name!r} is not held by this server ({self._held()}){why}")
        return chosen

    def _held(self) -> str:
        names = sorted({b.name for b in self._bundles.values()} | set(self._bundles))
        return "held: " + (", ".join(names) if names else "none")

    def _find(self, name: str) -> ServedBundle | None:
        if name in self._bundles:
            return self._bundles[name]
        same = [b for b in self._bundles.values() if b.name == name]
        if not same:
            return None
        default = self.default_bundle
        if default is not None and default in same:
            return default
        return max(same, key=lambda b: b.verified.manifest.created_on)

    def pool(self, bundle: ServedBundle) -> EnginePool:
        """The bundle's engine pool (created once; its engines load on first use)."""
        with self._lock:
            pool = self._pools.get(bundle.dir_name)
            if pool is None:
                pool = EnginePool(bundle.verified, self.settings.engines_per_bundle, self.settings.threads_per_engine)
                self._pools[bundle.dir_name] = pool
            return pool

    def analyze(self, path: Path, bundle: str | ServedBundle | None = None, shown_name: str | None = None) -> Analysis:
        """Score every submission window of the recording at `path`.

        Args:
            path: The spooled upload; its stem makes the row ids, as `explorer analyze`'s do.
            bundle: A bundle name, or one already resolved by `bundle()`; None: the default.
            shown_name: The name the client gave the file, used in error messages in place of
                the spool path.

        Raises:
            BadAudio: the file is not audio the device can read, holds no audio, is too long,
                or has a rate the analysis refuses (the message names the upload and the problem).
            UnknownBundle, NoBundle: see `bundle()`.
        """
        served = bundle if isinstance(bundle, ServedBundle) else self.bundle(bundle)
        path = Path(path)
        shown = shown_name or path.name
        pool = self.pool(served)
        try:
            max_windows = self._check_header(path, served, pool.min_sample_rate_hz)
            results = []
            for i, prediction in enumerate(analyze_file(pool, path)):
                if i >= max_windows:
                    raise AudioError(f"{path}: longer than the {self.settings.max_duration_s:g} s this server analyses "
                                     "(its header understated its length)")
                window = prediction.window
                results.append(WindowResult(row_id(path, i), window.start_s, window.end_s, prediction.scores,
                                            prediction.unscored_branches))
        except AudioError as exc:
            raise BadAudio(str(exc).replace(str(path), shown)) from None
        if not results:
            raise BadAudio(f"{shown}: holds no audio (0 samples decoded); nothing was analysed")
        return Analysis(served, shown, tuple(results))

    def _check_header(self, path: Path, served: ServedBundle, min_rate_hz: int) -> int:
        """Refuse, from the header alone, what would cost the server more than it should; returns
        the most windows the file may yield.

        Raises:
            AudioError: not audio, no audio, too long, or a rate too low (the device's check) or absurd.
        """
        source = FileSource(path)
        try:
            rate, frames = source.sample_rate_hz, source.frames
        finally:
            source.close()
        if rate > MAX_SAMPLE_RATE_HZ:
            raise AudioError(f"{path}: sample rate {rate} Hz is above {MAX_SAMPLE_RATE_HZ} Hz, the fastest any "
                             "recorder samples (a corrupt header?); nothing was analysed")
        check_rate(str(path), rate, min_rate_hz)  # the device's own refusal, before the cost check below
        for branch in served.verified.manifest.branches:
            target = branch.input.sample_rate_hz
            up, down = ratio(rate, target)
            if max(up, down) > MAX_RATIO_TERM:
                raise AudioError(f"{path}: sample rate {rate} Hz is no recorder's rate: converting it to the "
                                 f"{target} Hz of branch {branch.name} needs a {up}/{down} polyphase filter "
                                 "(re-encode it at a standard rate); nothing was analysed")
        if frames <= 0:
            raise AudioError(f"{path}: holds no audio (its header says 0 samples); nothing was analysed")
        duration_s = frames / rate
        if duration_s > self.settings.max_duration_s:
            raise AudioError(f"{path}: {duration_s:.0f} s long, above the {self.settings.max_duration_s:g} s this "
                             "server analyses per upload (split it, or run `explorer analyze` beside it)")
        return math.ceil(self.settings.max_duration_s / SUBMISSION_WINDOW_S) + 1
