"""Hyper-parameter search with Ray Tune and ASHA; each trial one in-process fit and one MLflow run.

    result = tune(parse_space({"lr": {"loguniform": [1e-4, 3e-3]}, "loss": {"choice": ["bce", "focal"]},
                               "head.dropout": {"uniform": [0.0, 0.5]}}),
                  base_config, DataSource(cache="cache", shared="../shared/data"),
                  num_samples=16, max_epochs=20, grace_period=2, out_dir=Path("tune-out"),
                  tracking_uri="sqlite:///mlflow.db")
    result.best_config   # a FitConfig: train it with `explorer-train fit`
    print(result.table())

A trial is `trainer.fit.fit` run inside a Ray worker with an `on_epoch` callback that logs the
epoch to the trial's MLflow run and reports it to Tune (`ray.tune.report`, Ray >= 2.40's
function-trainable API); ASHA (asynchronous successive halving) stops a trial at a rung
(epochs grace_period * reduction_factor**k) when its metric is below the top 1/reduction_factor
of the trials that reached that rung before it. A stopped trial's worker is ended by Ray
mid-fit, so its MLflow run is closed from the driver (`_CloseRuns`: status KILLED, tag
`tune_stopped` with the epoch), and every trial, finished or stopped, leaves one complete run.

Space keys are `FitConfig` fields ("lr", "weight_decay", "loss", "focal_gamma", "batch_size",
...) or "head.<knob>" for a key of `FitConfig.head_config` (the head's own hyper-parameters).
Without `ray_address` a local Ray instance is started (and stopped after) with `num_cpus`;
with one, trials run on that cluster (paths in the `DataSource` must be readable there).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from trainer.jobs import DataSource, open_run

METRIC = "val.birdclef"
"""What ASHA ranks by: the validation BirdCLEF metric, the number early stopping watches."""
REDUCTION_FACTOR = 2
"""ASHA keeps the top half at each rung: with few trials (a small search), 4 would stop almost all."""
SAMPLERS = ("uniform", "loguniform", "randint", "choice", "grid")


def parse_space(spec: dict[str, Any]) -> dict[str, Any]:
    """A Tune search space from plain data (what `explorer-train tune --space JSON` passes):
    `{"lr": {"loguniform": [1e-4, 1e-2]}, "loss": {"choice": ["bce", "focal"]},
    "head.dropout": {"uniform": [0, 0.5]}, "seed": {"grid": [0, 1]}, "epochs": 3}` (a bare value
    is fixed).

    Raises:
        ValueError: an unknown sampler (named with its key).
    """
    from ray import tune as ray_tune

    space = {}
    for key, value in spec.items():
        if isinstance(value, dict) and len(value) == 1:
            (kind, args), = value.items()
            if kind not in SAMPLERS:
                raise ValueError(f"search space {key!r}: unknown sampler {kind!r} (use one of {', '.join(SAMPLERS)})")
            sampler = {"uniform": ray_tune.uniform, "loguniform": ray_tune.loguniform, "randint": ray_tune.randint,
                       "choice": lambda *a: ray_tune.choice(list(a)), "grid": lambda *a: ray_tune.grid_search(list(a))}
            space[key] = sampler[kind](*args)
        else:
            space[key] = value
    return space


def apply_params(base, params: dict[str, Any]):
    """`base` (a FitConfig) with a trial's parameters: fields by name, "head.<knob>" into head_config.

    Raises:
        ValueError: a key that is neither a FitConfig field nor "head.<knob>".
    """
    known = {f.name for f in fields(base)}
    head_config, changes = dict(base.head_config or {}), {}
    for key, value in params.items():
        if key.startswith("head."):
            head_config[key[len("head."):]] = value
        elif key in known:
            changes[key] = value
        else:
            raise ValueError(f"search space key {key!r} is not a FitConfig field nor head.<knob>")
    return replace(base, head_config=head_config, **changes)


def run_trial(params: dict[str, Any], *, base, source: DataSource, out_dir: str, tracking_uri: str | None,
              tracking_dir: str | None, experiment: str) -> None:
    """One Tune trial (runs in a Ray worker): the fit, each epoch logged to MLflow and reported."""
    from ray import tune as ray_tune

    from trainer.fit import fit
    from trainer.tracking import epoch_metrics

    config = apply_params(base, params)
    context = ray_tune.get_context()
    name = context.get_trial_name()
    examples, soundscapes, labels, cache = source.load()
    run = open_run(tracking_uri, tracking_dir, experiment, name, asdict(config),
                   {"kind": "tune-trial", "tune_trial": context.get_trial_id(), "tune_params": repr(params)})

    def on_epoch(result) -> None:
        run.on_epoch(result)
        epoch, metrics = epoch_metrics(result)
        ray_tune.report({**metrics, "epoch": epoch, "mlflow_run_id": run.run_id or ""})

    try:
        result = fit(config, examples, cache, Path(out_dir) / "trials" / name, labels=labels,
                     backgrounds=soundscapes, on_epoch=on_epoch, progress=False)
    except SystemExit:  # how Tune ends a trial its scheduler stopped (inside `report`): `_CloseRuns` logs it
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED", result, checkpoint=False)  # trials keep checkpoints on disk, not as artifacts


def _close_runs_callback(tracking_uri: str | None, tracking_dir: str | None):
    from ray.tune import Callback

    class _CloseRuns(Callback):
        """Ends the MLflow run of a trial ASHA stopped (its worker never reaches `finish`)."""

        def _close(self, trial, status: str, why: str) -> None:
            run_id = (trial.last_result or {}).get("mlflow_run_id")
            if not run_id:
                return
            from trainer.tracking import client_for, tracking_uri as resolve

            client = client_for(resolve(Path(tracking_dir) if tracking_dir else None, tracking_uri))
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "tune_stopped", why)
                client.set_terminated(run_id, status=status)

        def on_trial_complete(self, iteration, trials, trial, **info):
            epochs = (trial.last_result or {}).get("training_iteration")
            self._close(trial, "KILLED", f"stopped by ASHA after epoch {epochs}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._close(trial, "FAILED", "trial raised")

    return _CloseRuns()


@dataclass
class Trial:
    trial_id: str
    params: dict[str, Any]
    epochs: int
    """Epochs reported (below max_epochs: stopped by ASHA or by the fit's own early stopping)."""
    metric: float
    """The trial's best reported value of the metric."""
    last: float
    mlflow_run_id: str | None
    path: str


@dataclass
class TuneResult:
    best_config: Any
    """The best trial's FitConfig."""
    best: Trial
    trials: list[Trial]
    metric: str
    mode: str

    def table(self) -> str:
        keys = sorted({k for t in self.trials for k in t.params})
        head = ["trial", *keys, "epochs", f"best {self.metric}", "mlflow run"]
        rows = [[t.trial_id, *[_fmt(t.params.get(k)) for k in keys], str(t.epochs), f"{t.metric:.6f}",
                 t.mlflow_run_id or "-"] for t in self.trials]
        widths = [max(len(str(c)) for c in column) for column in zip(head, *rows)]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [head, *rows])


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def tune(space: dict[str, Any], base_config, source: DataSource, *, num_samples: int = 8, max_epochs: int = 10,
         grace_period: int = 1, reduction_factor: float = REDUCTION_FACTOR, out_dir: Path,
         metric: str = METRIC, mode: str = "max", ray_address: str | None = None, num_cpus: int | None = None,
         cpus_per_trial: float = 1, gpus_per_trial: float = 0, max_concurrent: int | None = None,
         tracking_uri: str | None = None, tracking_dir: Path | None = None,
         experiment: str = "explorer-tune") -> TuneResult:
    """Search `space` around `base_config` with ASHA; the best config and every trial's numbers.

    Args:
        space: Tune search space (`parse_space`), keys as in the module docstring.
        base_config: The FitConfig every trial starts from (`epochs` becomes `max_epochs`).
        source: Where the data and its cache are; the cache is built here first, once.
        num_samples: Samples drawn from the space (times each grid point).
        max_epochs, grace_period, reduction_factor: ASHA's max_t, min_t and halving rate (epochs).
        out_dir: Trial fit folders (`trials/<name>/`), Tune's own state (`ray/`), and the outcome:
            `best_config.json` (the best FitConfig) and `trials.txt` (`TuneResult.table()`).
        metric, mode: What ASHA and "best" rank by (an `on_epoch` metric name, flattened as
            `trainer.tracking.epoch_metrics` names it: "val.birdclef", "val.val_loss", "train_loss").
        ray_address: A running Ray cluster ("auto", "ray://head:10001"); None: a local instance.
        num_cpus: The local instance's CPUs (None: Ray's default, all of them).
        cpus_per_trial, gpus_per_trial: Each trial's resources.
        max_concurrent: Trials at once (None: as many as resources allow).
        tracking_uri, tracking_dir: MLflow for the trial runs (`trainer.tracking`: a URI, or the
            data directory of a local SQLite store); neither: no tracking.
    """
    import ray
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    out_dir = Path(out_dir).resolve()
    source.prepare()
    base = replace(base_config, epochs=max_epochs)
    tracking_text = str(tracking_dir) if tracking_dir else None
    started = not ray.is_initialized()
    if started:
        if ray_address:
            ray.init(address=ray_address)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=100 * 2**20)
    try:
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(run_trial, base=base, source=source, out_dir=str(out_dir),
                                     tracking_uri=tracking_uri,
                                     tracking_dir=tracking_text, experiment=experiment),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        # max_t one past the fit's last epoch: ASHA never cuts that epoch's report short, so a trial
        # that survives every rung returns from `fit` and logs its result itself
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_epochs + 1, grace_period=grace_period,
                                  reduction_factor=reduction_factor)
        tuner = ray_tune.Tuner(
            trainable, param_space=space,
            tune_config=ray_tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, num_samples=num_samples,
                                            max_concurrent_trials=max_concurrent, reuse_actors=True),
            run_config=ray_tune.RunConfig(name="tune", storage_path=str(out_dir / "ray"), verbose=0,
                                          callbacks=[_close_runs_callback(tracking_uri, tracking_text)]))
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    result = _result(grid, base, metric, mode)
    (out_dir / "best_config.json").write_text(json.dumps(asdict(result.best_config), indent=1) + "\n", encoding="utf-8")
    (out_dir / "trials.txt").write_text(result.table() + "\n", encoding="utf-8")
    return result


def _result(grid, base, metric: str, mode: str) -> TuneResult:
    trials = []
    for result in grid:
        if result.error:
            continue
        frame = result.metrics_dataframe
        values = [float(v) for v in frame[metric]] if frame is not None and metric in frame else []
        finite = [v for v in values if not math.isnan(v)]
        best = (max(finite) if mode == "max" else min(finite)) if finite else math.nan
        trials.append(Trial(result.metrics.get("trial_id", ""), dict(result.config), len(values), best,
                            values[-1] if values else math.nan, result.metrics.get("mlflow_run_id") or None,
                            str(result.path)))
    if not trials:
        errors = [str(r.error) for r in grid if r.error]
        raise RuntimeError(f"every tune trial failed: {errors[:3]}")
    ranked = [t for t in trials if not math.isnan(t.metric)] or trials
    best = (max if mode == "max" else min)(ranked, key=lambda t: t.metric)
    return TuneResult(apply_params(base, best.params), best, trials, metric, mode)
