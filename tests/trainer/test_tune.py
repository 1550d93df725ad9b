"""Ray Tune + ASHA on a local Ray instance, each trial an MLflow run; a fit as a Ray job.

ASHA's early stop is made certain by construction: two trials run one after the other (grid
order), the first with a working learning rate, the second with 1e-9, which cannot lower the
validation loss in an epoch; at the first rung (epoch 1) the second is below the first's
value, the cutoff of a rung holding one trial, so ASHA stops it there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.trainer.test_distributed import TINY_RAW, tiny_list
from trainer.fit import FitConfig
from trainer.jobs import DataSource, FitJob, run_id_from_logs, status, submit
from trainer.tune import apply_params, parse_space, tune

REPO = Path(__file__).resolve().parents[2]
BASE = FitConfig(head="raw_cnn", head_config=TINY_RAW, epochs=2, batch_size=4, steps_per_epoch=4, lr=1e-3,
                 precision="fp32", workers=0, device="cpu", patience=0, balanced=False, seed=0)


@pytest.fixture
def source(tmp_path_factory, tmp_path) -> DataSource:
    csv, cache_root = tiny_list(tmp_path_factory, tmp_path)
    return DataSource(cache=str(cache_root), lists=[str(csv)])


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> Path:
    """One MLflow store for the module, created here once (a new SQLite store runs MLflow's schema
    migrations, tens of seconds on a busy CI machine); tests tell their runs apart by id."""
    from trainer.tracking import Tracker

    root = tmp_path_factory.mktemp("mlflow")
    with Tracker(root, "setup", run_name="store created"):
        pass
    return root


@pytest.fixture
def local_ray(monkeypatch):
    """A local Ray instance (2 CPUs, no dashboard, not local mode) in a temp folder of its own."""
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray for a throw-away instance
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, _temp_dir=temp)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def runs(tracking_dir: Path):
    from trainer.tracking import client_for, tracking_uri

    client = client_for(tracking_uri(tracking_dir))
    return client, {r.info.run_id: r for e in client.search_experiments()
                    for r in client.search_runs([e.experiment_id])}


def test_the_space_parses_and_head_knobs_reach_head_config():
    from ray.tune.search.sample import Categorical, Float

    space = parse_space({"lr": {"loguniform": [1e-4, 1e-2]}, "loss": {"choice": ["bce", "focal"]}, "epochs": 3})
    assert isinstance(space["lr"], Float) and isinstance(space["loss"], Categorical) and space["epochs"] == 3
    with pytest.raises(ValueError, match="'lr': unknown sampler 'normal'"):
        parse_space({"lr": {"normal": [0, 1]}})
    tuned = apply_params(BASE, {"lr": 0.01, "head.width": 16})
    assert tuned.lr == 0.01 and tuned.head_config["width"] == 16 and tuned.head_config["depth"] == 1
    with pytest.raises(ValueError, match="'learning_rate' is not a FitConfig field"):
        apply_params(BASE, {"learning_rate": 0.1})


def test_asha_stops_the_hopeless_trial_and_every_trial_is_an_mlflow_run(local_ray, source, tracking, tmp_path):
    result = tune(parse_space({"lr": {"grid": [3e-2, 1e-9]}}), BASE, source, num_samples=1, max_epochs=2,
                  grace_period=1, out_dir=tmp_path / "tune", metric="val.val_loss", mode="min",
                  max_concurrent=1, tracking_dir=tracking, experiment="tune-test")
    by_lr = {t.params["lr"]: t for t in result.trials}
    assert sorted(by_lr) == [1e-9, 3e-2]
    good, hopeless = by_lr[3e-2], by_lr[1e-9]
    assert good.epochs == 2 and hopeless.epochs == 1  # ASHA stopped it at the first rung
    assert result.best is good and result.best_config.lr == 3e-2 and result.best_config.head == "raw_cnn"
    assert good.metric < hopeless.metric
    client, found = runs(tracking)
    assert {good.mlflow_run_id, hopeless.mlflow_run_id} <= set(found)
    finished, stopped = found[good.mlflow_run_id], found[hopeless.mlflow_run_id]
    assert finished.info.status == "FINISHED" and stopped.info.status == "KILLED"
    assert stopped.data.tags["tune_stopped"] == "stopped by ASHA after epoch 1"
    assert finished.data.params["lr"] == "0.03" and stopped.data.params["lr"] == "1e-09"
    history = client.get_metric_history(good.mlflow_run_id, "val.val_loss")
    assert [m.step for m in history] == [1, 2]
    assert "best.birdclef" in finished.data.metrics
    assert "trial" in result.table() and good.mlflow_run_id in result.table()
    assert json.loads((tmp_path / "tune" / "best_config.json").read_text())["lr"] == 3e-2


def test_a_local_job_runs_in_process_and_reports_its_mlflow_run(source, tracking, tmp_path):
    job = FitJob(config={**BASE.__dict__, "epochs": 1}, data=source, out_dir=str(tmp_path / "fit"),
                 tracking_dir=str(tracking), run_name="local job")
    job_id = submit(None, job)
    state, run_id = status(None, job_id)
    assert state == "SUCCEEDED" and run_id
    _, found = runs(tracking)
    assert found[run_id].info.status == "FINISHED" and found[run_id].info.run_name == "local job"
    assert (tmp_path / "fit" / "last.pt").is_file()
    assert run_id_from_logs(f"noise\nEXPLORER_MLFLOW_RUN_ID={run_id}\nmore") == run_id
    assert run_id_from_logs("no run here") is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head with its job server (the dashboard), started for this test and stopped after
    (its process group, which this test created, is ended; nothing else is touched)."""
    temp = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    dashboard = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    head = subprocess.Popen(
        [str(Path(venv_bin) / "ray"), "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=1",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if head.poll() is not None or time.monotonic() > deadline:
                    said = head.stdout.read()[-2000:] if head.poll() is not None else "no answer in 90 s"
                    raise RuntimeError(f"the Ray head did not start: {said}")
                time.sleep(1)
        yield address
    finally:
        for signal, wait in ((15, 10), (9, None)):
            try:
                os.killpg(head.pid, signal)  # the group `ray start` and the processes it began share
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(temp, ignore_errors=True)


def test_a_job_on_a_ray_head_returns_at_once_and_its_status_names_the_mlflow_run(ray_head, source, tracking,
                                                                                 tmp_path):
    job = FitJob(config={**BASE.__dict__, "epochs": 1}, data=source, out_dir=str(tmp_path / "fit"),
                 tracking_dir=str(tracking), run_name="ray job")
    began = time.monotonic()
    job_id = submit(ray_head, job)
    assert time.monotonic() - began < 30  # returned without waiting for the fit
    assert status(ray_head, job_id)[0] in ("PENDING", "RUNNING", "SUCCEEDED")
    deadline = time.monotonic() + 240
    state, run_id = status(ray_head, job_id)
    while state in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(2)
        state, run_id = status(ray_head, job_id)
    if state != "SUCCEEDED":
        from ray.job_submission import JobSubmissionClient

        pytest.fail(f"job {state}: {JobSubmissionClient(ray_head).get_job_logs(job_id)[-3000:]}")
    _, found = runs(tracking)
    assert run_id in found and found[run_id].info.status == "FINISHED" and found[run_id].info.run_name == "ray job"
    assert (tmp_path / "fit" / "best.pt").is_file() or (tmp_path / "fit" / "last.pt").is_file()
