"""The gated model registry (trainer/registry.py) and retrain (trainer/retrain.py) on a real local
MLflow SQLite store under tmp_path: the gate's four outcomes with their numbers logged, `models:/`
URIs in all three forms back to the registered checkpoint's bytes, clear errors for what does not
exist, and a retrain of a registered tiny head on real recordings logged as the child of its source.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.registry import RegistryError, parse_models_uri, register_gated, resolve
from trainer.tracking import Tracker, client_for, tracking_uri


def offer(data_dir: Path, tmp_path: Path, value: float, content: bytes, threshold: float = 0.6):
    """One run that logs a checkpoint holding `content` and offers it to the gate for model "frogs"."""
    checkpoint = tmp_path / f"best-{value}.pt"
    checkpoint.write_bytes(content)
    with Tracker(data_dir, run_name=f"value {value}") as tracker:
        artifact = tracker.log_checkpoint(checkpoint)
        decision = register_gated(tracker, "frogs", tracker.run_id, artifact, "birdclef", value, threshold)
    return tracker.run_id, decision


def gate_record(client, run_id: str, tmp_path: Path) -> tuple[dict, dict]:
    tags = {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("gate.")}
    path = client.download_artifacts(run_id, "gate.json", str(tmp_path / f"gate-{run_id}"))
    return tags, json.loads(Path(path).read_text())


def test_the_gate_registers_only_what_clears_the_threshold_and_is_not_worse(data_dir, tmp_path, capsys):
    client = client_for(tracking_uri(data_dir))

    run, low = offer(data_dir, tmp_path, 0.55, b"low")
    assert not low.registered and low.version is None and low.production_value is None
    assert "0.550000" in low.reason and "0.600000" in low.reason and "below" in low.reason
    assert "NOT registered" in capsys.readouterr().out
    tags, record = gate_record(client, run, tmp_path)
    assert tags["gate.registered"] == "false" and float(tags["gate.value"]) == 0.55
    assert record["registered"] is False and record["threshold"] == 0.6 and record["model"] == "frogs"
    assert client.search_registered_models() == []  # a refusal creates nothing

    run, first = offer(data_dir, tmp_path, 0.7, b"first")
    assert first.registered and first.version == "1" and first.production_value is None
    assert str(client.get_model_version_by_alias("frogs", "production").version) == "1"
    assert client.get_model_version("frogs", "1").run_id == run
    assert gate_record(client, run, tmp_path)[1]["version"] == "1"

    run, worse = offer(data_dir, tmp_path, 0.65, b"worse")
    assert not worse.registered and worse.production_value == 0.7 and worse.production_version == "1"
    assert "0.650000" in worse.reason and "0.700000" in worse.reason and "worse" in worse.reason
    assert str(client.get_model_version_by_alias("frogs", "production").version) == "1"
    assert gate_record(client, run, tmp_path)[0]["gate.production_value"] == "0.7"

    run, better = offer(data_dir, tmp_path, 0.8, b"better")
    assert better.registered and better.version == "2" and better.production_value == 0.7
    assert "REGISTERED" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("frogs", "production").version) == "2"
    assert client.get_model_version("frogs", "1").source.endswith("best-0.7.pt")  # the previous production stays
    assert client.get_model_version("frogs", "2").tags["previous_production"] == "1"

    _, tie = offer(data_dir, tmp_path, 0.8, b"tie")
    assert tie.registered and tie.version == "3"  # not worse

    _, nan = offer(data_dir, tmp_path, float("nan"), b"nan")
    assert not nan.registered and "not a number" in nan.reason  # NaN compares False with everything


def test_resolve_gives_back_the_registered_checkpoint_in_every_uri_form(data_dir, tmp_path):
    offer(data_dir, tmp_path, 0.7, b"version one")
    offer(data_dir, tmp_path, 0.9, b"version two")
    uri = tracking_uri(data_dir)
    assert resolve("models:/frogs/1", data_dir, tmp_path / "a").read_bytes() == b"version one"
    assert resolve("models:/frogs@production", data_dir, tmp_path / "b").read_bytes() == b"version two"
    assert resolve("models:/frogs/production", uri, tmp_path / "c").read_bytes() == b"version two"
    # a rollback is pointing the alias back (the registry module docstring)
    client_for(uri).set_registered_model_alias("frogs", "production", "1")
    assert resolve("models:/frogs@production", data_dir, tmp_path / "d").read_bytes() == b"version one"
    plain = tmp_path / "plain.pt"
    plain.write_bytes(b"x")
    assert resolve(plain, data_dir) == plain


def test_unknown_models_versions_and_aliases_are_named(data_dir, tmp_path):
    offer(data_dir, tmp_path, 0.7, b"one")
    with pytest.raises(RegistryError, match=r"no registered model 'toads'.*known: frogs"):
        resolve("models:/toads/1", data_dir)
    with pytest.raises(RegistryError, match=r"no version 9 \(versions: 1\)"):
        resolve("models:/frogs/9", data_dir)
    with pytest.raises(RegistryError, match=r"no alias 'staging' \(aliases: production -> 1\)"):
        resolve("models:/frogs@staging", data_dir)
    with pytest.raises(RegistryError, match="not a model URI"):
        resolve("models:/frogs", data_dir)
    with pytest.raises(RegistryError, match="neither a models:/ URI nor a checkpoint file"):
        resolve(tmp_path / "missing.pt", data_dir)


def test_parse_models_uri_forms():
    assert parse_models_uri("models:/frogs/12") == ("frogs", "12", None)
    assert parse_models_uri("models:/frogs@production") == ("frogs", None, "production")
    assert parse_models_uri("models:/frogs/champion") == ("frogs", None, "champion")


def test_retrain_fine_tunes_a_registered_head_and_logs_a_child_run(data_dir, tmp_path, tmp_path_factory, monkeypatch):
    from tests.trainer.fit_fixtures import register_tiny_head, tiny_cache
    from trainer.checkpoint import read_checkpoint
    from trainer.fit import FitConfig
    from trainer.retrain import retrain, tracked_fit

    register_tiny_head(monkeypatch)
    examples, cache, labels = tiny_cache(tmp_path_factory)
    config = FitConfig(head="tiny_mel", head_config={"channels": 4}, epochs=1, batch_size=4, lr=3e-3, workers=0,
                       steps_per_epoch=2, precision="fp32", patience=0, device="cpu")
    source, first = tracked_fit(config, examples, cache, tmp_path / "source", tracking=data_dir, register="tiny",
                                threshold=0.0, labels=labels, progress=False)
    assert first.registered and first.version == "1"

    result, decision = retrain("models:/tiny@production", epochs=1, examples=examples, cache=cache,
                               out_dir=tmp_path / "retrain", tracking=data_dir, threshold=0.0,
                               fit_config_overrides={"lr": 1e-3}, progress=False)
    client = client_for(tracking_uri(data_dir))
    runs = client.search_runs([client.get_experiment_by_name("explorer-heads").experiment_id],
                              filter_string="tags.parent = 'models:/tiny/1'")
    assert len(runs) == 1
    child = runs[0]
    source_run = client.get_model_version("tiny", "1").run_id
    assert client.get_run(source_run).data.params["fit.head"] == "tiny_mel"
    assert client.get_run(source_run).data.metrics["best.birdclef"] == pytest.approx(source.best_metric)
    assert child.info.status == "FINISHED" and child.data.tags["parent_run_id"] == source_run
    assert child.data.params["fit.init_from"].endswith("best.pt") and child.data.params["fit.lr"] == "0.001"
    assert child.data.params["fit.head_config.channels"] == "4" and child.data.params["retrain.epochs"] == "1"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val.birdclef")] == [1]
    state = read_checkpoint(result.best_path)
    assert state["fit_config"]["init_from"] == child.data.params["fit.init_from"]
    assert state["config"]["labels"] == labels and state["config"]["channels"] == 4
    assert decision.production_value == pytest.approx(source.best_metric)
    assert decision.value == pytest.approx(result.best_metric)
    assert decision.registered == (result.best_metric >= source.best_metric)
    assert child.data.tags["gate.registered"] == str(decision.registered).lower()
    production = client.get_model_version_by_alias("tiny", "production")
    assert str(production.version) == ("2" if decision.registered else "1")
