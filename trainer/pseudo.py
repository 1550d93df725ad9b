"""Semi-supervised training on the unlabelled soundscapes: soft pseudo-labels and noisy student.

The BirdCLEF 2025 winner went from 0.872 (supervised only) to 0.930 by labelling the unlabelled
`train_soundscapes` with its own models and training on them: that is how a head learns the
site's real soundscapes (rain, insects, distant calls, the recorder's noise) rather than clean
xeno-canto calls. The steps here:

1. `pseudo_label`: every 5 s window of every soundscape (hopped, as the device scores a file)
   gets the model's, or an ensemble's mean, sigmoid probabilities as soft targets.
2. A power transform `p ** power` on those targets. With `power` > 1 (the winner's choice)
   a low, uncertain score shrinks much more than a confident one (0.1 -> 0.03, 0.9 -> 0.85 at
   1.5): the teacher's tail of small false scores, summed over 200 classes and thousands of
   windows, is what would otherwise teach the student that every species is faintly present
   everywhere. `power` < 1 flattens instead (more of the teacher's doubt passes on).
3. `noisy_student`: round 0 is the supervised fit; each later round labels the soundscapes
   with the current teacher, trains a fresh student on the labelled data plus the pseudo
   windows (`FitConfig.pseudo_fraction` of each batch) with the fit's augmentation as the
   noise, and keeps the student only if its validation metric is not worse than the teacher's.
   A rejected round ends the iteration: the next round would label with the same teacher and
   (the fit being deterministic) train the same student again.

`PseudoLabels` is the file format between the steps (`save`/`load`: an .npz of arrays and a
.json of names), so a round can be inspected, and `trainer.fit.fit(pseudo=...)` reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from trainer.audio_cache import AudioCache
from trainer.heads.base import WINDOW_SAMPLES, Head
from trainer.labelled import Example

POWER = 1.5
"""Default exponent on the soft targets (module docstring, step 2): > 1 sharpens, as the
BirdCLEF 2025 winner did; 1.5 halves a 0.25 score while leaving 0.9 at 0.85."""
HOP_SAMPLES = WINDOW_SAMPLES
"""Default hop: back-to-back 5 s windows, BirdCLEF's soundscape rows (12 per 60 s file)."""
PSEUDO_FRACTION = 0.25
"""Default share of each training batch drawn from the pseudo windows: the labelled calls stay
the majority, so a teacher's mistakes cannot outvote the ground truth."""
FORMAT = "explorer-pseudo-labels/1"


@dataclass
class PseudoLabels:
    """Soft targets for windows of unlabelled audio in the cache.

    Attributes:
        clip_ids: The cache clip each window is cut from.
        starts: Window starts in samples (at the cache's 32 kHz).
        targets: float32 [N, C] soft targets, after the power transform.
        labels: The C class names, in the teacher's (and the student's) order.
        window_samples: The window length the teacher scored.
        power: The exponent applied (1.0: raw probabilities).
        teachers: Where the teacher models came from (checkpoint paths or names), for provenance.
    """

    clip_ids: list[str]
    starts: np.ndarray
    targets: np.ndarray
    labels: list[str]
    window_samples: int = WINDOW_SAMPLES
    power: float = 1.0
    teachers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.starts = np.asarray(self.starts, dtype=np.int64)
        self.targets = np.asarray(self.targets, dtype=np.float32).reshape(len(self.clip_ids), len(self.labels))
        if len(self.starts) != len(self.clip_ids):
            raise ValueError(f"pseudo labels: {len(self.clip_ids)} clip ids but {len(self.starts)} starts")

    def __len__(self) -> int:
        return len(self.clip_ids)

    def save(self, path: Path) -> Path:
        """Write `path` (.npz: starts, targets) and `path` with .json (names, provenance)."""
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, starts=self.starts, targets=self.targets)
        meta = {"format": FORMAT, "clip_ids": self.clip_ids, "labels": self.labels,
                "window_samples": self.window_samples, "power": self.power, "teachers": self.teachers}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> "PseudoLabels":
        """Read what `save` wrote.

        Raises:
            FileNotFoundError: the .npz or .json is missing (named).
            ValueError: another format, or arrays that disagree with the names.
        """
        path = Path(path).with_suffix(".npz")
        meta_path = path.with_suffix(".json")
        for needed in (path, meta_path):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed}: pseudo labels missing (write them with PseudoLabels.save)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
        with np.load(path) as arrays:
            return cls(meta["clip_ids"], arrays["starts"], arrays["targets"], meta["labels"],
                       meta["window_samples"], meta["power"], meta.get("teachers", []))


def window_starts(length: int, window_samples: int, hop_samples: int) -> list[int]:
    """Starts of the windows over a clip of `length` samples: every hop while a whole window fits,
    one padded window at 0 for a clip shorter than a window (as the device scores a short file)."""
    if length <= window_samples:
        return [0]
    return list(range(0, length - window_samples + 1, hop_samples))


@torch.no_grad()
def pseudo_label(models: Sequence[Head], cache: AudioCache, soundscapes: Sequence[Example], *,
                 window_samples: int = WINDOW_SAMPLES, hop_samples: int = HOP_SAMPLES, power: float = POWER,
                 min_confidence: float | None = None, batch_size: int = 32, device: str = "cpu",
                 teachers: Sequence[str] = ()) -> PseudoLabels:
    """Soft targets for every window of the soundscapes: the models' mean probability, ** power.

    Args:
        models: One head, or an ensemble sharing one label list (the mean of their sigmoid
            probabilities is the target: averaging cancels some of each member's errors).
        cache: Holds the soundscapes' audio (`build_cache(..., items_from_examples(soundscapes))`).
        soundscapes: The unlabelled recordings (`trainer.birdclef.soundscape_examples`, or the
            shared data's background clips); those missing from the cache (skipped while
            caching) are left out.
        window_samples, hop_samples: The windowing, in samples.
        power: Exponent on the probabilities (module docstring); 1.0 keeps them raw.
        min_confidence: When set, a window whose highest probability (before the power) is below
            it is dropped. Off by default: a window where the teacher hears nothing is a real
            negative of the site, the most useful thing a soundscape teaches.
        batch_size: Windows per forward pass.
        device: Where the models run.
        teachers: Provenance strings stored with the labels.

    Raises:
        ValueError: no models, models with different labels, a power that is not positive, or
            no soundscape in the cache.
    """
    if not models:
        raise ValueError("pseudo_label: no teacher model")
    labels = list(models[0].labels)
    for model in models[1:]:
        if list(model.labels) != labels:
            raise ValueError("pseudo_label: the ensemble's models predict different labels")
    if power <= 0:
        raise ValueError(f"pseudo_label: power must be positive, not {power}")
    present = [s for s in soundscapes if s.clip_id in cache]
    if not present:
        raise ValueError(f"pseudo_label: none of the {len(soundscapes)} soundscapes is in the cache at {cache.root}")
    clip_ids, starts = [], []
    for example in present:
        for start in window_starts(cache.length(example.clip_id), window_samples, hop_samples):
            clip_ids.append(example.clip_id)
            starts.append(start)
    target = torch.device(device)
    was_training = [m.training for m in models]
    for model in models:
        model.to(target).eval()
    probabilities = np.empty((len(clip_ids), len(labels)), dtype=np.float32)
    for begin in range(0, len(clip_ids), batch_size):
        batch = np.stack([cache.window(c, s, window_samples)
                          for c, s in zip(clip_ids[begin:begin + batch_size], starts[begin:begin + batch_size])])
        waveform = torch.from_numpy(batch).to(target)
        mean = torch.stack([torch.sigmoid(m(waveform).float()) for m in models]).mean(dim=0)
        probabilities[begin:begin + len(batch)] = mean.cpu().numpy()
    for model, mode in zip(models, was_training):
        model.train(mode)
    keep = np.ones(len(clip_ids), dtype=bool)
    if min_confidence is not None:
        keep = probabilities.max(axis=1) >= min_confidence
    targets = np.power(probabilities[keep], np.float32(power)).astype(np.float32)
    return PseudoLabels([c for c, k in zip(clip_ids, keep) if k], np.asarray(starts)[keep], targets, labels,
                        window_samples, float(power), list(teachers))


@dataclass
class Round:
    """One noisy-student round: its fit and whether it replaced the teacher."""

    round: int
    metric: float
    kept: bool
    checkpoint: Path
    pseudo: Path | None = None
    """The pseudo labels the round trained on (None for round 0)."""


@dataclass
class StudentResult:
    rounds: list[Round]
    best: Path
    """The best checkpoint of the last kept round: the model to export."""
    metric: float

    def table(self) -> str:
        lines = ["round  metric    kept  checkpoint"]
        lines += [f"{r.round:>5}  {r.metric:.6f}  {'yes' if r.kept else 'no ':<4}  {r.checkpoint}" for r in self.rounds]
        return "\n".join(lines)


def _metric(result) -> float:
    """The best validation BirdCLEF metric of a `FitResult` (the number early stopping watches)."""
    return float(result.best_metric)


def noisy_student(config, examples: list[Example], cache: AudioCache, soundscapes: Sequence[Example], rounds: int,
                  out_dir: Path, *, labels: list[str] | None = None, backgrounds: Sequence = (),
                  power: float = POWER, pseudo_fraction: float = PSEUDO_FRACTION, hop_samples: int = HOP_SAMPLES,
                  min_confidence: float | None = None, ensemble: bool = False,
                  on_round: Callable[[Round], None] | None = None, progress: bool = False,
                  fit_kwargs: dict | None = None) -> StudentResult:
    """Supervised round 0, then up to `rounds` pseudo-labelled student rounds.

    Args:
        config: The `trainer.fit.FitConfig` every round trains with (each student starts from
            the config's own initialisation, not from the teacher: a student that starts as its
            teacher learns little from the teacher's labels). Its `augment` is the student's
            noise; `pseudo_fraction` is overridden by the argument.
        examples: The labelled examples (the same split every round, so metrics compare).
        cache: Holds the examples' and the soundscapes' audio.
        soundscapes: The unlabelled recordings to pseudo-label.
        rounds: Student rounds after round 0 (0: supervised only).
        out_dir: `round0/`, `round1/`, ... each a fit's output folder, plus `roundK/pseudo.npz`.
        ensemble: Teach with the mean of every kept round's best model (else the last kept one).
        on_round: Called after each round (tracking, progress).
        fit_kwargs: More keywords for `trainer.fit.fit` (e.g. `on_epoch`).

    Returns:
        Every round's metric and decision, and the checkpoint to use.
    """
    from trainer.checkpoint import load_head
    from trainer.fit import fit

    out_dir = Path(out_dir)
    fit_kwargs = dict(fit_kwargs or {})
    fit_kwargs.setdefault("progress", progress)
    first = fit(replace(config, pseudo_fraction=0.0), examples, cache, out_dir / "round0", labels=labels,
                backgrounds=backgrounds, **fit_kwargs)
    history = [Round(0, _metric(first), True, Path(first.best_path))]
    if on_round:
        on_round(history[0])
    kept = [history[0]]
    for k in range(1, rounds + 1):
        teachers = kept if ensemble else kept[-1:]
        models = [load_head(r.checkpoint)[0] for r in teachers]
        pseudo = pseudo_label(models, cache, soundscapes, window_samples=models[0].window_samples,
                              hop_samples=hop_samples, power=power, min_confidence=min_confidence,
                              device=_device(config), teachers=[str(r.checkpoint) for r in teachers])
        pseudo_path = pseudo.save(out_dir / f"round{k}" / "pseudo.npz")
        student = fit(replace(config, pseudo_fraction=pseudo_fraction), examples, cache, out_dir / f"round{k}",
                      labels=labels or list(models[0].labels), backgrounds=backgrounds, pseudo=pseudo, **fit_kwargs)
        metric = _metric(student)
        # "not worse": a tie keeps the student (it heard the site); a NaN metric never wins
        accepted = bool(metric >= kept[-1].metric)
        history.append(Round(k, metric, accepted, Path(student.best_path), pseudo_path))
        if on_round:
            on_round(history[-1])
        if not accepted:
            break
        kept.append(history[-1])
    (out_dir / "rounds.json").write_text(json.dumps([{**asdict(r), "checkpoint": str(r.checkpoint),
                                                      "pseudo": str(r.pseudo) if r.pseudo else None}
                                                     for r in history], indent=1) + "\n", encoding="utf-8")
    return StudentResult(history, kept[-1].checkpoint, kept[-1].metric)


def _device(config) -> str:
    device = getattr(config, "device", "cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
