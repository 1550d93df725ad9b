"""The model registry: gated registration of a run's checkpoint, and `models:/` URIs back to files.

A registered model version's source is the checkpoint file logged as a run artifact
(`Tracker.log_checkpoint`), not an MLflow model flavour: the exporter and `retrain` want the
checkpoint itself (`trainer/checkpoint.py`'s format), and a flavour would need a signature and
a pickled loader for nothing. `resolve` downloads that file.

The gate (`register_gated`) registers a version only if its metric clears a threshold and is not
worse than the version the `production` alias points at; on success the alias moves to the new
version. Nothing is deleted: the previous production version keeps its number, so a rollback is
one call that points the alias back:

    client_for(tracking_uri(data_dir)).set_registered_model_alias(name, "production", "3")

(or `mlflow`'s UI, model page, Aliases). Every decision, registered or refused, is printed,
tagged on the run (`gate.*`) and logged as the artifact `gate.json`, so a refused model says why.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.tracking import Tracker, _mlflow, client_for, tracking_uri

PRODUCTION = "production"
"""The alias the device's bundles are built from (`explorer export bundle --from models:/name@production`)."""

GATE_THRESHOLD = 0.5
"""The default floor for the BirdCLEF metric (a macro ROC AUC): 0.5 is chance, so a model must at
least beat a coin to be registered; raise it per model with `--threshold`."""

VALUE_TAG = "gate.value"
METRIC_TAG = "gate.metric"
"""Tags on each registered version: the number it was registered with, what the next one must match."""


class RegistryError(LookupError):
    """An unknown model, version or alias, or a `models:/` URI that is not one."""


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided, and the numbers it decided on."""

    registered: bool
    version: str | None
    """The new version's number when registered, else None."""
    reason: str
    metric: str
    value: float
    threshold: float
    production_value: float | None
    """The metric of the version the alias pointed at before (None: there was none)."""
    production_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _client(client_or_tracker):
    return client_or_tracker.client if isinstance(client_or_tracker, Tracker) else client_or_tracker


def _not_found(exc) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def production(client, name: str, alias: str = PRODUCTION):
    """The `ModelVersion` that `alias` points at, or None (no such model yet, or the alias is unset)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    number = (model.aliases or {}).get(alias)
    return None if number is None else client.get_model_version(name, str(number))


def _version_metric(client, version, metric: str) -> float | None:
    """The number a version was registered with (its tag), else its run's last logged `metric`."""
    tags = version.tags or {}
    if tags.get(METRIC_TAG) == metric and VALUE_TAG in tags:
        return float(tags[VALUE_TAG])
    if version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(metric)
        return None if value is None else float(value)
    return None


def register_gated(client_or_tracker, name: str, run_id: str, checkpoint_artifact: str, metric_name: str,
                   value: float, threshold: float = GATE_THRESHOLD, alias: str = PRODUCTION) -> GateDecision:
    """Register the run's checkpoint as a new version of `name` only if `value` (its `metric_name`)
    is at least `threshold` and at least the metric of the version `alias` points at; then move
    `alias` to it. A tie with production registers (not worse).

    Args:
        client_or_tracker: an `MlflowClient` or a `Tracker` (its client).
        run_id: the run that logged the checkpoint; the decision is logged to it too.
        checkpoint_artifact: its run-relative artifact path (`Tracker.log_checkpoint` returns it),
            or a full artifact URI.
        value: the metric of this model (the best epoch's validation BirdCLEF metric).

    Returns:
        The decision; it is also printed, tagged on the run as `gate.*` and logged as `gate.json`.
        Roll back by pointing the alias at the previous version (module docstring).
    """
    client = _client(client_or_tracker)
    value, threshold = float(value), float(threshold)
    current = production(client, name, alias)
    current_value = _version_metric(client, current, metric_name) if current is not None else None
    if not math.isfinite(value):
        reason = f"{metric_name} is {value}, not a number the gate can compare"
    elif value < threshold:
        reason = f"{metric_name} {value:.6f} is below the threshold {threshold:.6f}"
    elif current is not None and current_value is None:
        reason = (f"{alias} (version {current.version}) has no logged {metric_name}, so {value:.6f} cannot be "
                  f"compared with it; point the alias elsewhere or gate on a metric it has")
    elif current is not None and value < current_value:
        reason = (f"{metric_name} {value:.6f} is worse than {alias} (version {current.version}) "
                  f"at {current_value:.6f}")
    else:
        reason = None
    version = None
    if reason is None:
        source = checkpoint_artifact if "://" in checkpoint_artifact or checkpoint_artifact.startswith("runs:/") \
            else f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{checkpoint_artifact}"
        _ensure_model(client, name)
        tags = {METRIC_TAG: metric_name, VALUE_TAG: repr(value)}
        if current is not None:
            tags["previous_" + alias] = str(current.version)
        version = str(client.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                                  await_creation_for=0).version)
        client.set_registered_model_alias(name, alias, version)
        previous = f"; {alias} was version {current.version} at {current_value:.6f}" if current is not None else ""
        reason = (f"{metric_name} {value:.6f} clears the threshold {threshold:.6f}{previous}: registered "
                  f"{name} version {version}, {alias} now points at it")
    decision = GateDecision(registered=version is not None, version=version,
                            reason=reason, metric=metric_name, value=value, threshold=threshold,
                            production_value=current_value,
                            production_version=str(current.version) if current is not None else None)
    _log_decision(client, run_id, name, decision)
    return decision


def _ensure_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        client.create_registered_model(name, description="Explorer head checkpoints (trainer/registry.py)")


def _log_decision(client, run_id: str, name: str, decision: GateDecision) -> None:
    tags = {"gate.model": name, "gate.registered": str(decision.registered).lower(), "gate.reason": decision.reason,
            "gate.metric": decision.metric, "gate.value": repr(decision.value),
            "gate.threshold": repr(decision.threshold),
            "gate.production_value": "none" if decision.production_value is None else repr(decision.production_value),
            "gate.version": decision.version or "none"}
    for key, text in tags.items():
        client.set_tag(run_id, key, text)
    with tempfile.TemporaryDirectory(prefix="explorer-gate-") as tmp:
        path = Path(tmp) / "gate.json"
        path.write_text(json.dumps(decision.as_dict() | {"model": name}, indent=1, sort_keys=True), encoding="utf-8")
        client.log_artifact(run_id, str(path))
    print(f"registry gate: {'REGISTERED' if decision.registered else 'NOT registered'}: {decision.reason}")


_MODELS_URI = re.compile(r"^models:/(?P<name>[^@]+?)(?:@(?P<alias>[^/@]+)|/(?P<last>[^/@]+))$")


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name/3` -> (name, "3", None); `models:/name@production` and `models:/name/production`
    (a non-numeric last part is an alias) -> (name, None, "production").

    Raises:
        RegistryError: not a `models:/<name>/<version or alias>` or `models:/<name>@<alias>` URI.
    """
    match = _MODELS_URI.match(uri.strip())
    if not match:
        raise RegistryError(f"{uri!r} is not a model URI: give models:/<name>/<version>, models:/<name>/<alias> "
                            f"or models:/<name>@<alias>")
    last = match["last"]
    if last is not None and last.isdigit():
        return match["name"], last, None
    return match["name"], None, match["alias"] or last


def store_of(data_dir_or_tracking_uri: Path | str) -> tuple[str, Path | None]:
    text = str(data_dir_or_tracking_uri)
    if isinstance(data_dir_or_tracking_uri, Path) or ":" not in text.split("/", 1)[0]:
        return tracking_uri(Path(text)), Path(text)
    return text, None


def find_version(uri: str, data_dir_or_tracking_uri: Path | str):
    """The `ModelVersion` a `models:/` URI names.

    Raises:
        RegistryError: the model, version or alias is unknown (naming what exists).
    """
    from mlflow.exceptions import MlflowException

    name, number, alias = parse_models_uri(uri)
    store, _ = store_of(data_dir_or_tracking_uri)
    client = client_for(store)
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        known = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(f"{uri}: no registered model {name!r} in {store} (known: {', '.join(known) or 'none'})") \
            from None
    versions = sorted((int(v.version) for v in client.search_model_versions(f"name = '{name}'")))
    aliases = dict(model.aliases or {})
    if alias is not None:
        if alias not in aliases:
            raise RegistryError(f"{uri}: model {name!r} has no alias {alias!r} (aliases: "
                                f"{', '.join(f'{a} -> {v}' for a, v in sorted(aliases.items())) or 'none'})")
        number = str(aliases[alias])
    if int(number) not in versions:
        raise RegistryError(f"{uri}: model {name!r} has no version {number} (versions: "
                            f"{', '.join(map(str, versions)) or 'none'})")
    return client.get_model_version(name, number)


def resolve(uri: str | Path, data_dir_or_tracking_uri: Path | str, dst: Path | None = None) -> Path:
    """The local checkpoint file a `models:/` URI names, downloaded into `dst` (default: a new
    temporary folder). A path to an existing file is returned as it is, so `--from` takes either.

    Raises:
        RegistryError: an unknown model, version or alias, or a URI that is neither.
        FileNotFoundError: the version's artifact is gone from the artifact store.
    """
    text = str(uri)
    if not text.startswith("models:/"):
        if Path(text).is_file():
            return Path(text)
        raise RegistryError(f"{text!r} is neither a models:/ URI nor a checkpoint file")
    version = find_version(text, data_dir_or_tracking_uri)
    store, _ = store_of(data_dir_or_tracking_uri)
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="explorer-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = _mlflow().artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst),
                                                        tracking_uri=store)
    except Exception as exc:  # MLflow raises its own types (MlflowException, OSError) for a missing artifact
        raise FileNotFoundError(f"{text}: version {version.version}'s checkpoint {version.source} could not be "
                                f"downloaded: {exc}") from exc
    return Path(local)
