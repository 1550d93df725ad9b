"""MLflow tracking of a fit: params, per-epoch metrics, the report and the checkpoint.

Local by default and offline: the backend store is a SQLite file and the artifacts a folder, both
under the data directory (`<data_dir>/mlflow.db`, `<data_dir>/mlartifacts/`), written directly by
MLflow's SQL store, so no tracking server runs. `MLFLOW_TRACKING_URI` in the environment, or an
explicit `--tracking-uri`, points it at a shared server instead (the explicit one wins).

Everything goes through one `MlflowClient` bound to that URI (tracking and registry alike), never
MLflow's process-global "active run" or default URI: MLflow 3 otherwise falls back to
`./mlflow.db` in the working directory, and two trackers in one process (Ray Tune trials) would
share one active run. `trainer.fit` imports no MLflow: `Tracker.on_epoch` is its callback.

MLflow's usage telemetry is switched off before MLflow is first imported (this project runs
offline on field sites; `MLFLOW_DISABLE_TELEMETRY=false` in the environment turns it back on), as
are its artifact progress bars and the INFO lines of its database set-up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_EXPERIMENT = "explorer-heads"
"""The experiment every fit logs into unless told otherwise (`--experiment`)."""

PARAM_VALUE_LIMIT = 6000
"""MLflow refuses a param value longer than this (its SQL column); longer values are cut, said so."""

BATCH_LIMIT = 100
"""MLflow's `log_batch` takes at most 100 params (and 1000 metrics) per call."""

REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc")
"""Stores whose server chooses the artifact location; every other store keeps artifacts locally."""


def _mlflow():
    """MLflow, imported quietly and offline (see the module docstring)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.telemetry import set_telemetry_client

    set_telemetry_client()  # re-reads the switch, in case something imported mlflow before us
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's own SQL store uses a loader SQLAlchemy 2 deprecates: nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy", module=r"mlflow\.")
    warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy", module=r"sqlalchemy\.")
    return mlflow


def tracking_uri(data_dir: Path, uri: str | None = None) -> str:
    """The tracking URI to use: `uri` if given, else `$MLFLOW_TRACKING_URI`, else the local
    SQLite store `sqlite:///<data_dir>/mlflow.db` (its folder created)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'mlflow.db'}"


def artifact_location(data_dir: Path | None, uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: `<data_dir>/mlartifacts` for a local store,
    None (the server decides) for a remote one or when no data directory is known."""
    if data_dir is None or urlparse(uri).scheme in REMOTE_SCHEMES:
        return None
    return (Path(data_dir).expanduser().resolve() / "mlartifacts").as_uri()


def client_for(uri: str):
    """An `MlflowClient` whose tracking and registry are both `uri`."""
    return _mlflow().MlflowClient(tracking_uri=uri, registry_uri=uri)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings (and dataclasses) as one level with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def _param_text(value: Any) -> str:
    if isinstance(value, (list, tuple, Mapping)):
        text = json.dumps(value, default=str, sort_keys=True)
    else:
        text = str(value)
    if len(text) > PARAM_VALUE_LIMIT:
        suffix = f"... ({len(text)} characters, cut)"
        text = text[:PARAM_VALUE_LIMIT - len(suffix)] + suffix
    return text


def _number(value: Any) -> float | None:
    """A metric value, or None for what is not one (bool, text, paths, None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.issubdtype(value.dtype, np.number):
                return float(value)
        except ImportError:  # pragma: no cover - numpy is a core dependency
            pass
        return None
    return float(value)


def epoch_metrics(result: Any) -> tuple[int, dict[str, float]]:
    """The epoch number and the numbers of an `EpochResult` (or a mapping of the same fields).

    Every numeric field becomes a metric under its name (`train_loss`, `lr`, `seconds`); a mapping
    field is flattened with its name as prefix, except one called `metrics` or `val`, whose
    entries become `val.<name>` (`val.birdclef`); text, paths and None are left out.
    """
    fields = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)
    if "epoch" not in fields:
        raise ValueError(f"an epoch result needs an 'epoch' field; got {sorted(fields)}")
    epoch = int(fields.pop("epoch"))
    metrics = {}
    for key, value in fields.items():
        if isinstance(value, Mapping):
            prefix = "val." if key in ("metrics", "val", "val_metrics") else f"{key}."
            items = flatten(value, prefix).items()
        else:
            items = [(key, value)]
        for name, item in items:
            number = _number(item)
            if number is not None:
                metrics[name] = number
    return epoch, metrics


class Tracker:
    """One MLflow run: a context manager that opens it, and ends it FINISHED, or FAILED (KILLED on
    Ctrl-C) when the block raises, so a crashed fit is visible as one in the UI.

    Example:
        with Tracker(data_dir, run_name="raw_cnn") as tracker:
            tracker.log_params(asdict(config))
            result = fit(config, examples, cache, out, on_epoch=tracker.on_epoch)
            tracker.log_fit(result)  # best metrics, thresholds, best.pt
    """

    def __init__(self, data_dir: Path | None = None, experiment: str = DEFAULT_EXPERIMENT, *,
                 uri: str | None = None, run_name: str | None = None, tags: Mapping[str, Any] | None = None):
        if data_dir is None and uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
            raise ValueError("a Tracker needs a data directory or a tracking URI")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.uri = tracking_uri(self.data_dir, uri) if self.data_dir is not None else (uri or os.environ["MLFLOW_TRACKING_URI"])
        self.experiment = experiment
        self.run_name = run_name
        self.tags = {key: str(value) for key, value in (tags or {}).items()}
        self.client = None
        self.run_id: str | None = None
        self.artifact_uri: str | None = None

    def __enter__(self) -> Tracker:
        self.client = client_for(self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            self.experiment, artifact_location=artifact_location(self.data_dir, self.uri))
        run = self.client.create_run(experiment_id, tags=self.tags, run_name=self.run_name)
        self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        self.client.set_terminated(self.run_id, status=status)

    def _batches(self, items: list, size: int) -> Iterator[list]:
        for start in range(0, len(items), size):
            yield items[start:start + size]

    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Nested params flattened (`augment.gain_db`), lists as JSON; returns what was logged.

        MLflow params are write-once: logging a key again with another value raises.
        """
        from mlflow.entities import Param

        texts = {key: _param_text(value) for key, value in flatten(params).items()}
        for batch in self._batches(list(texts.items()), BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in batch])
        return texts

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Nested numbers flattened; a non-finite value is logged as is (MLflow keeps NaN), a
        non-number is left out. Returns what was logged."""
        from mlflow.entities import Metric

        numbers = {key: n for key, value in flatten(metrics).items() if (n := _number(value)) is not None}
        stamp = _now_ms()
        entries = [Metric(key, value, stamp, step or 0) for key, value in numbers.items()]
        for batch in self._batches(entries, 1000):
            self.client.log_batch(self.run_id, metrics=batch)
        return numbers

    def on_epoch(self, result: Any) -> None:
        """`fit`'s callback: the epoch's numbers (`epoch_metrics`) as metrics at step=epoch."""
        epoch, metrics = epoch_metrics(result)
        self.log_metrics(metrics, step=epoch)

    def log_report(self, folder: Path, artifact_path: str = "report") -> str:
        """A report folder (`trainer.report.write_report`'s) as artifacts under `artifact_path`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no report folder at {folder}")
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)
        return artifact_path

    def log_checkpoint(self, path: Path, artifact_path: str = "checkpoint") -> str:
        """The checkpoint file as an artifact; returns its run-relative path (`checkpoint/best.pt`),
        what `trainer.registry.register_gated` registers."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        self.client.log_artifact(self.run_id, str(path), artifact_path)
        return f"{artifact_path}/{path.name}"

    def log_json(self, name: str, value: Any, artifact_path: str | None = None) -> str:
        """`value` as a JSON artifact `name` (the gate's decision, thresholds)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="explorer-track-") as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(value, indent=1, sort_keys=True, default=str), encoding="utf-8")
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        return f"{artifact_path}/{name}" if artifact_path else name

    def log_fit(self, result: Any, report: Path | None = None) -> str | None:
        """What a finished fit leaves: the best epoch's evaluation as `best.<metric>`, its
        thresholds as `thresholds.json`, the report folder when given, and the best checkpoint.
        Returns the checkpoint's artifact path (None when the result names none)."""
        evaluation = getattr(result, "evaluation", None)
        if evaluation is not None:
            numbers = dataclasses.asdict(evaluation) if dataclasses.is_dataclass(evaluation) else dict(evaluation)
            numbers.pop("thresholds", None)
            numbers.pop("per_class_ap", None)  # hundreds of classes: the report lists them
            self.log_metrics({"best": numbers})
        thresholds = getattr(result, "thresholds", None)
        if thresholds:
            self.log_json("thresholds.json", thresholds)
        if report is not None:
            self.log_report(report)
        best = getattr(result, "best_path", None)
        return self.log_checkpoint(best) if best and Path(best).is_file() else None


def metric_of(evaluation: Any, name: str) -> float:
    """A number from an evaluation (dataclass, mapping or object): `metric_of(e, "birdclef")`.

    Raises:
        KeyError: it has no such number.
    """
    value = evaluation.get(name) if isinstance(evaluation, Mapping) else getattr(evaluation, name, None)
    number = _number(value)
    if number is None or math.isnan(number):
        raise KeyError(f"the evaluation has no number {name!r}")
    return number


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
