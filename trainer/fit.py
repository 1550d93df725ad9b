"""Train one head on cached audio: the loop every head, retrain, Ray Tune trial and torchrun rank runs.

`fit(config, examples, cache, out_dir)` splits the examples by recording (`trainer.splits`),
reads random crops from the audio cache (`trainer.data`), augments each batch on the training
device (`trainer.wave_augment`: waveforms, then the mel between the head's `features` and
`body`), and trains with autocast (bf16, or fp16 with a GradScaler on CUDA), channels_last for
mel heads, AdamW over `head.trainable_parameters()` under a one-cycle schedule, BCE or focal
loss (`trainer.losses`). Every epoch it scores the fixed validation windows with the BirdCLEF
metric (`trainer.scoring.evaluate`, which also tunes per-class thresholds), writes `last.pt`
and, when the metric improved, `best.pt` (`trainer.checkpoint`), and stops early after
`patience` epochs without improvement.

Exact resumption: everything random is drawn from generators seeded by (seed, epoch[, rank]) at
the start of each epoch (the window draw, the crops, the batch augmentation, dropout), and
`last.pt` holds the weights, optimiser, schedule, scaler and early-stopping state after each
epoch; so a run killed between epochs and started again on the same `out_dir` ends with the
weights an uninterrupted run ends with, bit for bit on the CPU. (A kill inside an epoch loses
that epoch's steps; it is redone from `last.pt`.)

MLflow and Ray Tune hook in through `on_epoch`; this module imports neither. Several GPUs: the
same code under torchrun (`trainer.distributed`, called unconditionally; rank 0 writes).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from trainer import distributed
from trainer.audio_cache import AudioCache
from trainer.checkpoint import init_weights, plain, restore_rng, resume_state, rng_state, save_checkpoint
from trainer.data import (
    SCORES, BatchProgress, CacheWindows, Rows, balance_weights, check_cached, check_validation, epoch_keys,
    epoch_windows, labelled_rows, loader, pseudo_rows, resolve_labels, save_scores, to_float,
    validation_rows,
)
from trainer.labelled import Example
from trainer.losses import LOSSES, make_loss
from trainer.scoring import evaluate
from trainer.splits import split_by_recording
from trainer.wave_augment import AugmentConfig, WaveAugment

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
LAST, BEST = "last.pt", "best.pt"
RESUME_FREE = ("workers",)
"""FitConfig fields a resumed run may change: they do not change what is trained."""


@dataclass
class FitConfig:
    """One training run (the defaults are a sensible BirdCLEF start for a CNN head on one GPU)."""

    head: str = "raw_cnn"
    head_config: dict = field(default_factory=dict)
    """Keywords for `build_head` besides `labels` (window_samples, front_end, the head's own)."""
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    """The one-cycle schedule's peak."""
    weight_decay: float = 1e-2
    loss: str = "bce"
    focal_gamma: float = 2.0
    precision: str = "bf16"
    channels_last: bool = True
    balanced: bool = True
    """Class-balanced sampling (`trainer.splits.BALANCE_POWER`); False: shuffled passes."""
    patience: int = 5
    """Epochs without a better validation BirdCLEF metric before stopping; 0 never stops early."""
    seed: int = 0
    workers: int = 4
    steps_per_epoch: int | None = None
    """Batches per epoch per rank; None: one pass over the training examples."""
    secondary_weight: float = 0.5
    use_rating: bool = False
    augment: dict = field(default_factory=dict)
    """`trainer.wave_augment.AugmentConfig` keys; {} the defaults."""
    device: str = "auto"
    validation_fraction: float = 0.2
    init_from: str | None = None
    """A checkpoint whose weights start the run (retraining); optimiser and schedule start fresh."""
    pseudo_fraction: float = 0.0
    """Share of each epoch's training windows taken from `pseudo` (when given)."""
    val_windows: int = 1
    """Fixed validation windows per clip (`trainer.data`)."""
    deterministic: bool = False
    """Run under `torch.use_deterministic_algorithms` (CUDA: slower kernels, same result each run)."""
    report: bool = False
    """Write `out_dir/report/` (`trainer.report.write_report`: Markdown and plots of the best
    epoch's validation) at the end. Off by default because the plots cost seconds, which tests
    and Tune trials do not want; `explorer-train fit` turns it on."""


@dataclass
class EpochResult:
    """What `on_epoch` gets after each epoch (its checkpoint is already written)."""

    epoch: int
    """Epochs completed, 1-based."""
    train_loss: float
    val: dict[str, float]
    """birdclef, micro_ap, micro_f1, primary_accuracy, val_loss, ..."""
    lr: float
    seconds: float
    checkpoint: Path | None
    """last.pt (None on ranks other than 0)."""
    best: bool
    """This epoch improved the validation metric (and wrote best.pt)."""
    steps: int


@dataclass
class FitResult:
    best_path: Path
    last_path: Path
    history: list[dict]
    evaluation: dict
    """The best epoch's validation evaluation (`trainer.scoring.Evaluation` as a dict)."""
    thresholds: dict[str, float]
    best_epoch: int
    best_metric: float
    epochs_run: int
    stopped_early: bool
    labels: list[str]
    resumed_from: int = 0
    """Epochs already done in `last.pt` when this call started."""
    scores_path: Path | None = None
    """`validation.npz`: the best epoch's validation scores, targets, labels and primary labels."""
    report: Path | None = None
    """The report folder, when `FitConfig.report` asked for one."""


def write_fit_report(out_dir: Path, title: str, taxon_of: dict[str, str] | None = None) -> Path:
    """`out_dir/report/` from `out_dir/validation.npz` (`trainer.report.write_report`)."""
    from trainer.report import write_report

    saved = np.load(Path(out_dir) / SCORES)
    labels, primary = [str(x) for x in saved["labels"]], [str(p) or None for p in saved["primary"]]
    found = evaluate(saved["scores"], saved["targets"], labels, primary=primary, taxon_of=taxon_of)
    write_report(Path(out_dir) / "report", found, saved["scores"], saved["targets"], labels, title=title)
    return Path(out_dir) / "report"


def _device_type(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cuda", "cpu"):
        raise ValueError(f"device {name!r}: choose auto, cuda or cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA device here")
    return name


def _check_config(config: FitConfig) -> None:
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}: choose one of {', '.join(LOSSES)}")
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if config.epochs < 1 or config.batch_size < 1 or config.workers < 0:
        raise ValueError("epochs and batch_size must be >= 1, workers >= 0")
    if not 0.0 <= config.pseudo_fraction < 1.0:
        raise ValueError(f"pseudo_fraction {config.pseudo_fraction} must be in [0, 1)")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class _Forward(nn.Module):
    """The head as one module for DDP: features, the mel transform (augmentation), body."""

    def __init__(self, head: nn.Module, channels_last: bool):
        super().__init__()
        self.head = head
        self.channels_last = channels_last and head.input_kind == "mel"

    def forward(self, wave: torch.Tensor, transform: Callable | None = None) -> torch.Tensor:
        x = self.head.features(wave)
        if transform is not None:
            x = transform(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head.body(x)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@dataclass
class _Step:
    """What one optimiser step needs besides the batch."""

    waves: WaveAugment
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    loss_fn: Callable
    amp_dtype: torch.dtype | None
    device: torch.device
    mel: bool


def _train_epoch(model: nn.Module, batches, step: _Step) -> tuple[float, int]:
    """(sum of batch losses, batches) of one pass over `batches`: augment on the device, forward
    under autocast (the mel masks between features and body), backward through the scaler, one
    schedule step per batch. The loss is summed on the device and read once, at the end."""
    model.train()
    total, count = torch.zeros((), device=step.device, dtype=torch.float64), 0
    transform = (lambda x: step.waves.mel(x, step.generator)) if step.mel else None
    for batch in batches:
        wave, target, weight = (batch[k].to(step.device, non_blocking=True) for k in ("wave", "target", "weight"))
        wave, background = to_float(wave), to_float(batch["background"].to(step.device, non_blocking=True))
        present = batch["present"].to(step.device)
        wave, target, weight = step.waves.wave(wave, target, weight, step.generator, background, present)
        with _autocast(step.device, step.amp_dtype):
            logits = model(wave, transform)
        loss = step.loss_fn(logits, target, weight)
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        step.scaler.step(step.optimizer)
        step.scaler.update()
        step.scheduler.step()
        total += loss.detach().double()
        count += 1
    return float(total), count


def _validate(model: nn.Module, batches, device, amp_dtype, loss_fn, bar: BatchProgress,
              total: int) -> tuple[np.ndarray, float]:
    """(sigmoid scores [rows, C] float64, mean loss) of the fixed validation windows."""
    model.eval()
    scores, losses, weights = [], [], []
    with torch.no_grad():
        for batch in bar(batches, total, "validation"):
            wave, target = to_float(batch["wave"].to(device)), batch["target"].to(device)
            with _autocast(device, amp_dtype):
                logits = model(wave)
            losses.append(float(loss_fn(logits, target, None)) * len(wave))
            weights.append(len(wave))
            scores.append(torch.sigmoid(logits.float()).double().cpu().numpy())
    return np.concatenate(scores), sum(losses) / max(1, sum(weights))


def _metrics(evaluation, val_loss: float) -> dict[str, float]:
    out = {"birdclef": evaluation.birdclef, "micro_ap": evaluation.micro_ap, "micro_f1": evaluation.micro_f1,
           "scored_classes": evaluation.scored_classes, "rows": evaluation.rows, "val_loss": val_loss}
    if evaluation.primary_accuracy is not None:
        out["primary_accuracy"] = evaluation.primary_accuracy
    return out


def fit(config: FitConfig, examples: Sequence[Example], cache: AudioCache, out_dir: Path, *,
        labels: Sequence[str] | None = None, backgrounds: Sequence[Example] = (), pseudo: Any = None,
        on_epoch: Callable[[EpochResult], None] | None = None, progress: bool = True,
        taxon_of: dict[str, str] | None = None) -> FitResult:
    """Train `config.head` on `examples` (module docstring); resume from `out_dir/last.pt`.

    Args:
        config: The run.
        examples: Labelled examples, all in `cache` (split here into training and validation).
        cache: The audio cache holding every example, background and pseudo-labelled clip.
        out_dir: Where last.pt and best.pt go (and are resumed from).
        labels: The label list (a taxonomy's order); None: the examples' labels, sorted.
        backgrounds: Soundscape examples mixed under training windows (`AugmentConfig.background_p`).
        pseudo: Pseudo-labelled windows (any object with clip_ids, starts, targets [N, C],
            labels: `trainer.data.pseudo_rows`), mixed in at `config.pseudo_fraction`.
        on_epoch: Called on rank 0 after each epoch's checkpoint is written; an exception
            raised there ends the run (last.pt stays, a later call resumes from it).
        progress: Progress bars (tqdm, else plain lines) on stderr.
        taxon_of: label -> taxon class for the evaluation's per-taxon slices.

    Seeds torch's global generator (from `config.seed`, and per epoch): dropout draws from it.

    Raises:
        ValueError: a label outside `labels`, an empty class, no validation rows, a bad config,
            or an out_dir holding another run's last.pt.
        KeyError: a clip missing from the cache (named).
    """
    _check_config(config)
    out_dir = Path(out_dir)
    device = distributed.init(_device_type(config.device))
    main, bar = distributed.is_main(), BatchProgress(progress and distributed.is_main())
    examples = list(examples)
    labels = resolve_labels(examples, labels)
    split = split_by_recording(examples, config.validation_fraction, config.seed)
    train_ex, val_ex = [examples[i] for i in split.train], [examples[i] for i in split.validation]
    check_cached(train_ex + val_ex, cache)
    check_cached(list(backgrounds), cache, "background")
    augment = AugmentConfig.from_dict(config.augment)

    torch.manual_seed(config.seed)
    from trainer.heads import build_head

    head = build_head(config.head, labels=labels, **config.head_config)
    window = head.window_samples
    parts = [labelled_rows(train_ex, labels, config.secondary_weight, config.use_rating)]
    if pseudo is not None and config.pseudo_fraction > 0:
        scored = getattr(pseudo, "window_samples", window)
        if scored != window:
            raise ValueError(f"pseudo-labels describe {scored}-sample windows, the head trains on {window}")
        parts.append(pseudo_rows(pseudo, labels))
        missing = sorted(set(parts[1].clip_ids) - set(cache.entries))
        if missing:
            raise KeyError(f"{len(missing)} pseudo-labelled clip(s) are not in the audio cache at {cache.root}: "
                           f"{missing[:5]}")
    rows = Rows.concat(parts)
    n_train, n_pseudo = len(parts[0]), len(rows) - len(parts[0])
    val_rows = validation_rows(val_ex, labels, cache, window, config.val_windows, config.secondary_weight)
    check_validation(val_rows, labels)
    windows = epoch_windows(n_train, n_pseudo, config.pseudo_fraction, config.steps_per_epoch, config.batch_size)
    per_rank = sum(windows) // distributed.world_size()
    steps = max(1, per_rank // config.batch_size)
    balance = balance_weights(train_ex) if config.balanced else None

    if config.init_from:
        init_weights(head, config.init_from, config.head, labels)
    head.to(device)
    channels_last = config.channels_last and head.input_kind == "mel"
    if channels_last:
        head.to(memory_format=torch.channels_last)
    model = distributed.wrap(_Forward(head, config.channels_last), device)
    trainable = head.trainable_parameters()
    if not trainable:
        raise ValueError(f"{config.head}: no trainable parameters")
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs * steps)
    amp_dtype = PRECISIONS[config.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16" and device.type == "cuda")
    loss_fn = make_loss(config.loss, config.focal_gamma)
    waves = WaveAugment(augment, head.front_end_params.sample_rate_hz if head.front_end_params else 32_000)

    last_path, best_path = out_dir / LAST, out_dir / BEST
    history: list[dict] = []
    best = {"metric": -math.inf, "epoch": 0, "bad_epochs": 0}
    thresholds, evaluation, start, step, stopped = {}, {}, 0, 0, False
    state = resume_state(last_path, plain(dataclasses.asdict(config)), labels, RESUME_FREE)
    if state is not None:
        head.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        history, best = list(state["history"]), dict(state["best"])
        thresholds, evaluation = dict(state["thresholds"]), dict(state["evaluation"])
        start, step, stopped = int(state["epoch"]), int(state["step"]), bool(state.get("stopped"))
        bar.line(f"resuming {last_path} after epoch {start}")
    resumed_from = start

    train_set = CacheWindows(cache, rows, window, config.seed, [b.clip_id for b in backgrounds], augment.background_p)
    val_set = CacheWindows(cache, val_rows, window, config.seed)
    val_keys = np.stack([np.arange(len(val_rows))] + [np.zeros(len(val_rows), np.int64)] * 2, axis=1).astype(np.int64)
    val_batches = loader(val_set, val_keys, config.batch_size, config.workers, drop_last=False, seed=config.seed,
                         epoch=0, pin_memory=device.type == "cuda")
    previous = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        epoch = start
        while not stopped and epoch < config.epochs:
            began = time.monotonic()
            rank = distributed.rank()
            torch.manual_seed(_seed(config.seed, epoch, rank, 1))
            generator = torch.Generator(device=device).manual_seed(_seed(config.seed, epoch, rank, 2))
            keys = epoch_keys(epoch, config.seed, n_train, n_pseudo, windows, balance)[: steps * config.batch_size]
            batches = loader(train_set, keys, config.batch_size, config.workers, drop_last=True, seed=config.seed,
                             epoch=epoch, pin_memory=device.type == "cuda")
            loss_sum, count = _train_epoch(model, bar(batches, steps, f"epoch {epoch + 1}/{config.epochs}"), _Step(
                waves, generator, optimizer, scheduler, scaler, loss_fn, amp_dtype, device, head.input_kind == "mel"))
            step += count
            train_loss = distributed.mean(loss_sum / max(1, count), device)
            scores, val_loss = _validate(distributed.unwrap(model).eval(), val_batches, device, amp_dtype, loss_fn, bar,
                                         math.ceil(len(val_rows) / config.batch_size))
            found = evaluate(scores, val_rows.targets, labels, primary=val_rows.primary, taxon_of=taxon_of)
            metrics = _metrics(found, distributed.mean(val_loss, device))
            metric = distributed.mean(found.birdclef, device)
            epoch += 1
            improved = metric > best["metric"]
            if improved:
                best = {"metric": metric, "epoch": epoch, "bad_epochs": 0}
                thresholds, evaluation = dict(found.thresholds), plain(dataclasses.asdict(found))
            else:
                best["bad_epochs"] += 1
            stopped = epoch >= config.epochs or (config.patience > 0 and best["bad_epochs"] >= config.patience)
            result = EpochResult(epoch, train_loss, metrics, float(scheduler.get_last_lr()[0]),
                                 time.monotonic() - began, last_path if main else None, improved, step)
            history.append(plain({**dataclasses.asdict(result), "checkpoint": None}))
            if main:
                rng = {**rng_state(), "sampler": {"seed": config.seed, "epoch": epoch}}
                saved = dict(model=head, head=config.head, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                             epoch=epoch, step=step, rng=rng, best=best, history=history,
                             fit_config=dataclasses.asdict(config), thresholds=thresholds, evaluation=evaluation,
                             stopped=stopped)
                save_checkpoint(last_path, **saved)
                if improved:
                    save_checkpoint(best_path, **saved)
                    save_scores(out_dir / SCORES, scores, val_rows, labels)
                bar.line(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {metrics['val_loss']:.4f}, "
                         f"BirdCLEF {metric:.4f}{' (best)' if improved else ''}")
            distributed.barrier()
            if main and on_epoch is not None:
                on_epoch(result)
    finally:
        torch.use_deterministic_algorithms(previous)
    scores_path = out_dir / SCORES if (out_dir / SCORES).is_file() else None
    report = None
    if config.report and main and scores_path is not None:
        report = write_fit_report(out_dir, f"{config.head} validation, epoch {best['epoch']}", taxon_of)
    return FitResult(best_path, last_path, history, evaluation, thresholds, int(best["epoch"]), float(best["metric"]),
                     len(history), len(history) < config.epochs, labels, resumed_from, scores_path, report)
