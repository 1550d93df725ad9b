"""Fine-tune a registered model on new data and log it back: `explorer-train retrain`.

`retrain("models:/raw_cnn@production", epochs=3, examples=confirmed, cache=cache, out_dir=out,
tracking=data_dir)` downloads the version's checkpoint (`trainer.registry.resolve`), rebuilds the
run's `FitConfig` from the `fit_config` stored in it (the same head, its architecture taken from
the checkpoint's own head config, the same loss and schedule), starts a new fit from those
weights (`init_from`) for `epochs` epochs on the new examples, logs it as a new MLflow run tagged
with its parent (`parent` = `models:/<name>/<version>`, `parent_run_id`), and offers the result
to the registration gate under the same model name: it becomes a new version, and production,
only if it clears the threshold and is not worse than production.

The validation split is drawn from the new examples, so the number the gate compares is measured
on other rows than production's was; with the guides' confirmed clips that is the point (the
site's own data), but a small new set gives a noisy number: give a `threshold` that means
something for it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.registry import GATE_THRESHOLD, PRODUCTION, RegistryError, store_of, find_version
from trainer.registry import register_gated, resolve
from trainer.tracking import DEFAULT_EXPERIMENT, Tracker, metric_of

GATE_METRIC = "birdclef"
"""The validation number the gate compares: the BirdCLEF 2025 metric of the best epoch."""


def source_of(uri: str | Path, tracking: Path | str, dst: Path) -> tuple[Path, dict[str, str]]:
    """The checkpoint file `uri` names (downloaded into `dst`) and what to tag its child run with.

    A `models:/` URI gives `parent` (`models:/<name>/<version>`, the alias resolved), `parent_run_id`
    and `parent_model`; a plain checkpoint path gives `parent` = its path.
    """
    text = str(uri)
    if not text.startswith("models:/"):
        return resolve(text, tracking), {"parent": str(Path(text).resolve()), "parent_uri": text}
    version = find_version(text, tracking)
    path = resolve(f"models:/{version.name}/{version.version}", tracking, dst)
    return path, {"parent": f"models:/{version.name}/{version.version}", "parent_uri": text,
                  "parent_model": version.name, "parent_version": str(version.version),
                  "parent_run_id": version.run_id or ""}


def config_from(state: Mapping[str, Any], path: Path, *, epochs: int,
                overrides: Mapping[str, Any] | None = None):
    """The `FitConfig` of a retrain: the checkpoint's stored `fit_config`, its head's own config
    (minus labels, which fit takes apart) as `head_config`, then `overrides`, `epochs` and
    `init_from` = the checkpoint.

    Raises:
        ValueError: the checkpoint has no fit_config (not written by `trainer.fit`), or an override
            names no FitConfig field.
    """
    from trainer.fit import FitConfig

    stored = state.get("fit_config")
    if not stored:
        raise ValueError(f"{path}: the checkpoint holds no fit_config, so the run cannot be repeated; "
                         f"it was not written by trainer.fit")
    known = {f.name for f in dataclasses.fields(FitConfig)}
    dropped = sorted(set(stored) - known)
    if dropped:
        print(f"retrain: ignoring fit_config fields this version does not know: {dropped}", file=sys.stderr)
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ValueError(f"unknown FitConfig fields in the overrides: {unknown} (known: {sorted(known)})")
    values = {key: value for key, value in stored.items() if key in known}
    architecture = {key: value for key, value in dict(state["config"]).items() if key != "labels"}
    values["head"] = state["head"]
    values["head_config"] = dict(values.get("head_config") or {}) | architecture
    values |= dict(overrides or {})
    values |= {"epochs": int(epochs), "init_from": str(path)}
    return FitConfig(**values)


def tracked_fit(config, examples: Sequence, cache, out_dir: Path, *, tracking: Path | str,
                register: str | None = None, metric: str = GATE_METRIC, threshold: float = GATE_THRESHOLD,
                alias: str = PRODUCTION, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                tags: Mapping[str, Any] | None = None, extra_params: Mapping[str, Any] | None = None, **fit_kwargs):
    """`trainer.fit.fit` as one MLflow run (`explorer-train fit --track [--register NAME]`): the
    config as params, every epoch's numbers, the best evaluation, thresholds, `out_dir/report/`
    when the fit left one, and best.pt; then, with `register`, the gate under that model name.

    Returns:
        (the FitResult, the GateDecision or None when not registering).
    """
    from trainer.fit import fit

    store, data_dir = store_of(tracking)
    tags = {"explorer.head": config.head, **(tags or {})}
    with Tracker(data_dir, experiment, uri=None if data_dir else store, run_name=run_name or config.head,
                 tags=tags) as tracker:
        tracker.log_params({"fit": dataclasses.asdict(config), **(extra_params or {})})
        result = fit(config, examples, cache, out_dir, on_epoch=tracker.on_epoch, **fit_kwargs)
        report = Path(out_dir) / "report"
        artifact = tracker.log_fit(result, report=report if report.is_dir() else None)
        decision = None
        if register:
            if artifact is None:
                raise RuntimeError(f"{out_dir}: the fit wrote no best.pt (no epoch gave a finite {metric})")
            decision = register_gated(tracker, register, tracker.run_id, artifact, metric,
                                      metric_of(result.evaluation, metric), threshold, alias)
    print(f"mlflow run {tracker.run_id} in {tracker.uri}", file=sys.stderr)
    return result, decision


def retrain(uri: str | Path, *, epochs: int, examples: Sequence, cache, out_dir: Path, tracking: Path | str,
            fit_config_overrides: Mapping[str, Any] | None = None, name: str | None = None,
            metric: str = GATE_METRIC, threshold: float = GATE_THRESHOLD, alias: str = PRODUCTION,
            experiment: str = DEFAULT_EXPERIMENT, backgrounds: Sequence = (), taxon_of: Mapping[str, str] | None = None,
            progress: bool = True):
    """Fine-tune the model `uri` names on `examples` and gate the result (module docstring).

    Args:
        uri: `models:/<name>/<version>`, `models:/<name>@<alias>`, `models:/<name>/<alias>`, or a
            checkpoint path (then `name` is needed to register).
        epochs: how many epochs to fine-tune (K).
        examples, cache: the new labelled examples and the audio cache holding them.
        out_dir: the fit's folder (last.pt, best.pt; a killed retrain resumes from it) and
            `source/`, where the registered checkpoint is downloaded.
        tracking: the data directory (local SQLite store) or a tracking URI.
        fit_config_overrides: FitConfig fields to change (lr, batch_size, device, workers, ...).
        name: the registered model to offer the result to (default: the source's).

    Returns:
        (the `trainer.fit.FitResult`, the gate's `GateDecision`).

    Raises:
        RegistryError: unknown model, version or alias; a checkpoint path without `name`.
        ValueError, KeyError, FileNotFoundError: from the checkpoint and from `fit`.
    """
    from trainer.checkpoint import read_checkpoint

    if epochs < 1:
        raise ValueError(f"retrain needs at least one epoch, got {epochs}")
    out_dir = Path(out_dir)
    path, parent = source_of(uri, tracking, out_dir / "source")
    name = name or parent.get("parent_model")
    if not name:
        raise RegistryError(f"{uri}: a checkpoint path has no model name: give name= (--name) to register under")
    state = read_checkpoint(path)
    config = config_from(state, path, epochs=epochs, overrides=fit_config_overrides)
    version = parent.get("parent_version")
    return tracked_fit(config, examples, cache, out_dir, tracking=tracking, register=name, metric=metric,
                       threshold=threshold, alias=alias, experiment=experiment,
                       run_name=f"retrain {name} v{version}" if version else f"retrain {name}",
                       tags={**parent, "explorer.kind": "retrain"},
                       extra_params={"retrain": {"from": str(uri), "epochs": epochs, "examples": len(examples)}},
                       labels=list(state["config"].get("labels") or []) or None, backgrounds=backgrounds,
                       progress=progress, taxon_of=dict(taxon_of) if taxon_of else None)
