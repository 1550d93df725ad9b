"""The engine: every branch of a verified bundle on one window, fused into one score per label.

How windows of different lengths line up (documented here because the fusion depends on it):
the device cuts analysis windows (5 s by default) at the source's native rate. Each branch
gets the window resampled to its own rate (once per distinct rate). A branch whose own
window is shorter than the analysis window (BirdNET takes 3 s at 48 kHz) is run on evenly
spaced crops that cover the whole analysis window (5 s -> crops at 0-3 s and 2-5 s) and its
scores are max-pooled over the crops, so a call anywhere in the 5 s counts; its embedding is
the mean over crops. A branch whose window is longer gets the analysis window zero-padded.
Fusion then sees one score vector per branch per analysis window. Live, where windows overlap
(2.5 s hop), a window's first crop is the window before's last (stream time -0.5 to 2.5 s of
the window), run once: `carry.py` says when that holds and why it still covers the window.

A branch that gives NaN or infinity on a window, or an optional branch that fails on it, is
left out of that window's fusion and named in `Prediction.unscored_branches`; a label only
unscored branches score (or any label an unscored REQUIRED branch scores) is fused to NaN,
never to 0, so no detection opens from it and the submission leaves its cell empty.

Context outputs (`outputs.context`: BirdNET's Human vocal, Dog, Engine, ...) are scored on every
window like scores (activation, then max over crops) and given as `Prediction.context`, a
name -> probability mapping that is never a label: the detector's privacy filter reads it and
each detection keeps it as scores. A context score that is not finite is left out (logged and
counted like a non-finite score), never read as 0; so is every context score of a branch left
out of the window. `Engine.context_labels` says what a window could have held.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from device.audio.resample import resample, resample_tail, resampled_length
from device.bundle.manifest import Branch, BundleError
from device.bundle.verify import VerifiedBundle
from device.domain import Prediction, Window
from device.engine import carry
from device.engine.session import BranchOutput, BranchSession, open_session

log = logging.getLogger(__name__)


def crop_starts(length: int, window: int) -> list[int]:
    """Start offsets of the fewest evenly spaced `window`-long crops that cover `length` samples."""
    if length <= window:
        return [0]
    count = math.ceil(length / window)
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def make_crops(samples: np.ndarray, window: int, valid: int | None = None) -> np.ndarray:
    """`[crops, window]` float32: zero-padded when short, evenly spaced crops when long.

    Crops that would hold only the zero padding after the last `valid` real samples are left
    out (a model shown pure digital silence can say anything; the first crop always stays).
    """
    if len(samples) <= window:
        out = np.zeros((1, window), dtype=np.float32)
        out[0, : len(samples)] = samples
        return out
    valid = len(samples) if valid is None else valid
    starts = [s for i, s in enumerate(crop_starts(len(samples), window)) if i == 0 or s < valid]
    return np.stack([samples[s : s + window] for s in starts]).astype(np.float32)


def split_threads(branches: tuple[Branch, ...], total: int) -> dict[str, int]:
    """Share a total thread budget among branches in proportion to their manifest hints.

    With `total == 0` each branch gets its own hint.
    """
    hints = {b.name: b.threads for b in branches}
    if total <= 0:
        return hints
    weight = sum(hints.values())
    return {name: max(1, round(total * hint / weight)) for name, hint in hints.items()}


NONFINITE_LOG_EVERY = 100
"""A bundle that gives NaN does so on every window: log the first and every 100th, not each."""


@dataclass
class EngineCounters:
    """What the engine met over its life (the self-test reads these; a run counts each
    window's `Prediction.unscored_branches` itself)."""

    windows: int = 0
    branch_failures: int = 0
    """Branch runs that raised (an optional one is then left out of that window's fusion)."""
    nonfinite_scores: int = 0
    """Branch or fusion outputs that held NaN or infinity (left out, never read as 0)."""
    carried_crops: int = 0
    """Crops taken from the window before instead of run again (a live stream's overlap)."""


class Engine:
    """Runs a verified bundle. Not thread-safe: one inference worker owns it."""

    def __init__(self, bundle: VerifiedBundle, threads: int = 0):
        self.bundle = bundle
        self.manifest = manifest = bundle.manifest
        self.labels = manifest.label_ids
        self.counters = EngineCounters()
        budget = split_threads(manifest.branches, threads)
        self.sessions: dict[str, BranchSession] = {}
        for branch in manifest.branches:
            try:
                self.sessions[branch.name] = BranchSession(bundle.path, branch, budget[branch.name])
            except BundleError:
                if branch.name in manifest.fusion.required_branches:
                    raise
                log.exception("optional branch %s failed to load; running without it", branch.name)
        index = {label: i for i, label in enumerate(self.labels)}
        self._label_index = {
            name: np.array([index[label] for label in s.branch.score_labels]) for name, s in self.sessions.items()
        }
        self._fusion = None
        if manifest.fusion.kind == "onnx":
            self._fusion = open_session(bundle.path / manifest.fusion.file, 1, "fusion")
            self._fusion_inputs = [i.name for i in self._fusion.get_inputs()]
            if len(self._fusion_inputs) != len(manifest.fusion.inputs):
                raise BundleError(
                    f"fusion: the graph takes {len(self._fusion_inputs)} inputs, the manifest lists "
                    f"{len(manifest.fusion.inputs)}"
                )
            outputs = {o.name: o for o in self._fusion.get_outputs()}
            if manifest.fusion.output not in outputs:
                raise BundleError(f"fusion: the graph has no output {manifest.fusion.output!r} (it has {sorted(outputs)})")
            width = list(outputs[manifest.fusion.output].shape)[-1]
            if isinstance(width, int) and width != len(self.labels):
                raise BundleError(f"fusion: the graph outputs {width} scores, the manifest lists {len(self.labels)} labels")
        self._carried: dict[str, carry.CarriedCrop] = {}
        """Per branch, the last crop of the window before, for a live stream's next window
        (`carry.py`); replaced after every window."""
        self._mel_branch = next((b.name for b in manifest.branches if b.mel_output and b.name in self.sessions), None)
        self.context_labels = tuple(dict.fromkeys(
            name for s in self.sessions.values() for name in s.branch.context_labels))
        """The context outputs the loaded branches declare (each name once): what
        `Prediction.context` holds when every branch scored the window."""

    @property
    def carrying(self) -> tuple[str, ...]:
        """The branches holding a crop the next window of this stream may take (`carry.py`)."""
        return tuple(self._carried)

    @property
    def branch_names(self) -> tuple[str, ...]:
        return tuple(self.sessions)

    @property
    def min_sample_rate_hz(self) -> int:
        """The lowest source rate every loaded branch can use (the max of their manifest
        `input.min_sample_rate_hz`): audio below it is refused where windows are cut."""
        return max(s.branch.input.min_sample_rate_hz for s in self.sessions.values())

    def _run_branch(self, session: BranchSession, audio: _RateAudio, window: Window) -> BranchOutput:
        """The branch on the window's crops; a live stream's first crop is the window before's
        last (`carry.py`), so only the others run, on only the audio they need."""
        name, rate = session.branch.name, session.branch.input.sample_rate_hz
        size = session.branch.input.window_samples
        length = resampled_length(len(window.samples), window.sample_rate_hz, rate)
        valid = round(window.real_samples * rate / window.sample_rate_hz)
        starts = [s for i, s in enumerate(crop_starts(length, size)) if i == 0 or s < valid]
        carried = self._carried.pop(name, None)
        if len(starts) > 1 and carry.usable(carried, window, size / rate, starts[1] / rate):
            tail = audio.at(rate, starts[1])
            rest = np.stack([tail[s - starts[1] : s - starts[1] + size] for s in starts[1:]]).astype(np.float32, copy=False)
            output = carry.stack(carried.output, session.run(rest))
            self.counters.carried_crops += 1
        else:
            output = session.run(make_crops(audio.at(rate), size, valid))
        if len(starts) > 1 and window.real_samples == len(window.samples) and np.isfinite(output.scores[-1]).all():
            self._carried[name] = carry.carry(window, output, starts[-1], rate)
        return output

    def _nonfinite(self, what: str, window: Window) -> None:
        self.counters.nonfinite_scores += 1
        count = self.counters.nonfinite_scores
        if count == 1 or count % NONFINITE_LOG_EVERY == 0:
            log.error("%s gave NaN or infinite scores on window %d of %s (%d such outputs so far); "
                      "its labels are left unscored, never scored 0", what, window.index, window.source, count)

    def _fuse(self, outputs: dict[str, BranchOutput], spread: np.ndarray, unscored: list[str],
              window: Window) -> np.ndarray:
        """Fused probabilities; NaN for a label the usable branches cannot score."""
        fusion = self.manifest.fusion
        if self._fusion is not None:
            if any(branch not in outputs for branch, _ in fusion.inputs):
                return np.full(len(self.labels), np.nan, dtype=np.float32)  # the graph needs every input
            feeds = {}
            for name, (branch, kind) in zip(self._fusion_inputs, fusion.inputs):
                out = outputs[branch]
                value = out.scores.max(axis=0) if kind == "scores" else np.asarray(out.embedding).mean(axis=0)
                feeds[name] = value.reshape(1, -1).astype(np.float32)
            fused = self._fusion.run([fusion.output], feeds)[0].reshape(-1).astype(np.float32)
            finite = np.isfinite(fused)
            if not finite.all():
                self._nonfinite("the fusion graph", window)
                unscored.append("fusion")
            return np.where(finite, np.clip(fused, 0.0, 1.0), np.nan).astype(np.float32)
        scored = ~np.isnan(spread)
        counts = scored.sum(axis=0)
        if fusion.rule == "max":
            fused = np.where(scored, spread, -np.inf).max(axis=0, initial=-np.inf)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                fused = np.where(scored, spread, 0.0).sum(axis=0) / counts
        fused = np.where(counts > 0, fused, np.nan).astype(np.float32)
        for name in unscored:  # a required branch's labels cannot be trusted without it
            if name in fusion.required_branches:
                fused[self._label_index[name]] = np.nan
        return fused

    def predict(self, window: Window) -> Prediction:
        """Scores for one analysis window (any native rate, any length).

        A branch that gives NaN/infinity, or an optional branch that raises, is left out and
        named in the Prediction's `unscored_branches` (see the module docstring).

        Raises:
            Exception: a REQUIRED branch's run raised (whatever onnxruntime raised).
        """
        started = time.perf_counter()
        audio = _RateAudio(window)
        outputs: dict[str, BranchOutput] = {}
        unscored: list[str] = []
        failed: list[str] = []
        for name, session in self.sessions.items():
            try:
                output = self._run_branch(session, audio, window)
            except Exception:
                self.counters.branch_failures += 1
                if name in self.manifest.fusion.required_branches:
                    raise
                log.exception("optional branch %s failed on window %d; fusing without it", name, window.index)
                failed.append(name)
                unscored.append(name)
                continue
            if not np.isfinite(output.scores).all():
                self._nonfinite(f"branch {name}", window)
                unscored.append(name)
                continue
            outputs[name] = output
        spread = np.full((len(outputs), len(self.labels)), np.nan, dtype=np.float32)
        branch_scores = {}
        for row, (name, out) in enumerate(outputs.items()):
            spread[row, self._label_index[name]] = out.scores.max(axis=0)
            branch_scores[name] = spread[row]
        fused = self._fuse(outputs, spread, unscored, window)
        mel = None
        if self._mel_branch in outputs and outputs[self._mel_branch].mel is not None:
            mel = np.asarray(outputs[self._mel_branch].mel)[0]
        embedding = next((np.asarray(o.embedding).mean(axis=0) for o in outputs.values() if o.embedding is not None), None)
        context = self._context(outputs, window)
        self.counters.windows += 1
        return Prediction(
            window=window,
            labels=self.labels,
            scores=fused,
            branch_scores=branch_scores,
            inference_s=time.perf_counter() - started,
            mel=mel,
            embedding=embedding,
            unscored_branches=tuple(unscored),
            failed_branches=tuple(failed),
            context=context,
        )

    def _context(self, outputs: dict[str, BranchOutput], window: Window) -> dict[str, float]:
        """Each context output's probability, max over crops (and over branches that share a
        name); a non-finite one is left out and logged."""
        context: dict[str, float] = {}
        for name, out in outputs.items():
            if out.context is None:
                continue
            pooled = out.context.max(axis=0)
            finite = np.isfinite(pooled)
            if not finite.all():
                self._nonfinite(f"branch {name}'s context output", window)
            for label, value, ok in zip(self.sessions[name].branch.context_labels, pooled, finite):
                if ok:
                    context[label] = max(float(value), context.get(label, 0.0))
        return context


class _RateAudio:
    """A window's audio at each branch's rate, resampled once per rate when first asked for (a
    live window whose first crop is carried asks only for the tail after it)."""

    def __init__(self, window: Window):
        self.window = window
        self._full: dict[int, np.ndarray] = {}

    def at(self, rate: int, start: int = 0) -> np.ndarray:
        """The window at `rate` from sample `start` (at `rate`) to its end."""
        if rate in self._full:
            return self._full[rate][start:]
        if start > 0:
            return resample_tail(self.window.samples, self.window.sample_rate_hz, rate, start)
        self._full[rate] = resample(self.window.samples, self.window.sample_rate_hz, rate)
        return self._full[rate]
