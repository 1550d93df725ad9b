"""MLflow tracking (trainer/tracking.py) against a real local SQLite store under tmp_path.

What a fit logs must be readable back through a plain `MlflowClient`: params flattened, one
metric point per epoch at step=epoch, the report folder and the checkpoint byte for byte; and
the default store must land in the data directory, not in the working directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.tracking import Tracker, client_for, epoch_metrics, flatten, tracking_uri


def test_default_store_and_artifacts_land_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = tmp_path / "data"
    assert tracking_uri(data) == f"sqlite:///{data.resolve() / 'mlflow.db'}"
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    with Tracker(data, run_name="default") as tracker:
        tracker.log_checkpoint(checkpoint)
    assert (data / "mlflow.db").is_file()
    stored = list((data / "mlartifacts").rglob("best.pt"))
    assert len(stored) == 1 and stored[0].read_bytes() == b"weights"
    assert list(elsewhere.iterdir()) == []  # no ./mlflow.db, no ./mlruns


def test_an_explicit_uri_beats_the_environment_which_beats_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(tmp_path) == "http://tracking.example:5000"
    assert tracking_uri(tmp_path, "sqlite:////srv/shared.db") == "sqlite:////srv/shared.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(tmp_path).endswith("/mlflow.db")


def test_flatten_nests_with_dots():
    assert flatten({"lr": 0.1, "augment": {"gain": {"db": 6}, "p": 0.5}, "empty": {}}) == \
        {"lr": 0.1, "augment.gain.db": 6, "augment.p": 0.5, "empty": {}}


def test_params_and_per_epoch_metrics_read_back(data_dir):
    from trainer.fit import EpochResult, FitConfig

    from dataclasses import asdict

    config = FitConfig(head="raw_cnn", epochs=3, augment={"gain_db": 6.0, "mask": {"time": 2}})
    val_birdclef = [0.61, 0.7, 0.68]
    with Tracker(data_dir, "heads-test", run_name="params") as tracker:
        logged = tracker.log_params(asdict(config))
        for epoch, metric in enumerate(val_birdclef, start=1):
            tracker.on_epoch(EpochResult(epoch=epoch, train_loss=1.0 / epoch, val={"birdclef": metric, "val_loss": 0.3},
                                         lr=1e-3 * epoch, seconds=2.5, checkpoint=Path("last.pt"), best=epoch < 3,
                                         steps=10 * epoch))
    client = client_for(tracking_uri(data_dir))
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == client.get_experiment_by_name("heads-test").experiment_id
    params = run.data.params
    assert params == logged
    assert params["head"] == "raw_cnn" and params["epochs"] == "3"
    assert params["augment.gain_db"] == "6.0" and params["augment.mask.time"] == "2"
    assert params["init_from"] == "None"
    history = client.get_metric_history(tracker.run_id, "val.birdclef")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == list(zip([1, 2, 3], val_birdclef))
    assert [m.value for m in sorted(client.get_metric_history(tracker.run_id, "train_loss"), key=lambda m: m.step)] \
        == pytest.approx([1.0, 0.5, 1 / 3])
    assert {"lr", "seconds", "steps", "val.val_loss"} <= set(run.data.metrics)
    assert "best" not in run.data.metrics and "checkpoint" not in run.data.metrics  # a flag and a path


def test_epoch_metrics_refuses_a_result_without_an_epoch():
    with pytest.raises(ValueError, match="'epoch'"):
        epoch_metrics({"train_loss": 1.0})


def test_a_block_that_raises_leaves_the_run_failed(data_dir):
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker(data_dir, run_name="crash") as tracker:
            raise RuntimeError("boom")
    assert client_for(tracking_uri(data_dir)).get_run(tracker.run_id).info.status == "FAILED"


def test_report_and_checkpoint_artifacts_download_byte_equal(data_dir, tmp_path):
    from trainer.report import write_report
    from trainer.scoring import evaluate

    rng = np.random.default_rng(3)
    labels = ["21211", "48124", "52884"]
    targets = (rng.random((24, 3)) < 0.4).astype(float)
    targets[0], targets[1] = 1.0, 0.0
    scores = np.clip(targets * 0.5 + rng.random((24, 3)) * 0.6, 0, 1)
    report = tmp_path / "report"
    written = write_report(report, evaluate(scores, targets, labels), scores, targets, labels)
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(rng.bytes(4096))
    with Tracker(data_dir, run_name="artifacts") as tracker:
        assert tracker.log_report(report) == "report"
        assert tracker.log_checkpoint(checkpoint) == "checkpoint/best.pt"
    client = client_for(tracking_uri(data_dir))
    back = Path(client.download_artifacts(tracker.run_id, "report", str(tmp_path / "down")))
    assert sorted(p.name for p in back.iterdir()) == sorted(p.name for p in written)
    for path in written:
        assert (back / path.name).read_bytes() == path.read_bytes(), path.name
    ckpt = Path(client.download_artifacts(tracker.run_id, "checkpoint/best.pt", str(tmp_path / "down2")))
    assert ckpt.read_bytes() == checkpoint.read_bytes()


def test_log_fit_logs_the_best_evaluation_thresholds_and_checkpoint(data_dir, tmp_path):
    import json

    from trainer.fit import FitResult

    best = tmp_path / "best.pt"
    best.write_bytes(b"best weights")
    result = FitResult(best_path=best, last_path=tmp_path / "last.pt", history=[],
                       evaluation={"birdclef": 0.81, "micro_ap": 0.4, "thresholds_tuned": True,
                                   "slices": {"Amphibia": {"birdclef": 0.9, "classes": 1}},
                                   "per_class_ap": {"21211": 0.5}, "thresholds": {"21211": 0.3}},
                       thresholds={"21211": 0.3}, best_epoch=2, best_metric=0.81, epochs_run=3, stopped_early=False,
                       labels=["21211"])
    with Tracker(data_dir, run_name="fit") as tracker:
        assert tracker.log_fit(result) == "checkpoint/best.pt"
    client = client_for(tracking_uri(data_dir))
    metrics = client.get_run(tracker.run_id).data.metrics
    assert metrics["best.birdclef"] == 0.81 and metrics["best.slices.Amphibia.birdclef"] == 0.9
    assert not any("per_class_ap" in key or "thresholds" in key for key in metrics)
    thresholds = Path(client.download_artifacts(tracker.run_id, "thresholds.json", str(tmp_path / "t")))
    assert json.loads(thresholds.read_text()) == {"21211": 0.3}
