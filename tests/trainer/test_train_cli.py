"""`explorer-train fit | onnx | retrain` as a user runs them: real subprocesses on a plain labelled
list of real recordings, a real MLflow store. The fit registers through the gate, `onnx` exports
the registered model by its alias, `retrain` fine-tunes it on the list and logs a child run; every
command's --help carries an example."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.helpers import REPO
from tests.trainer.fit_fixtures import tiny_cache
from trainer.cli import cli
from trainer.tracking import client_for, tracking_uri

TINY = ["--set", "width=4", "--set", "depth=1", "--set", "stages=2"]
RUN = ["--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "2", "--device", "cpu", "--workers", "0",
       "--precision", "fp32"]


def explorer_train(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@pytest.fixture(scope="module")
def labelled_list(tmp_path_factory):
    """The tiny cache's examples as a plain labelled list (path,label,start_s,end_s,group)."""
    examples, _, _ = tiny_cache(tmp_path_factory)
    path = tmp_path_factory.mktemp("list") / "clips.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "start_s", "end_s", "group"])
        for e in examples:
            writer.writerow([str(e.path), e.primary or "", e.start_s, e.end_s, e.group])
    return path


def test_fit_registers_onnx_exports_the_alias_and_retrain_logs_a_child(labelled_list, tmp_path):
    data_dir, cache = tmp_path / "mlflow", tmp_path / "cache"
    fitted = explorer_train("fit", "--list", str(labelled_list), "--cache", str(cache), "--head", "raw_cnn", *TINY,
                            *RUN, "--out", str(tmp_path / "run"), "--data-dir", str(data_dir), "--register", "frogs",
                            "--threshold", "0")
    assert fitted.returncode == 0, fitted.stderr
    assert "registration:" in fitted.stdout and (tmp_path / "run" / "best.pt").is_file()
    assert (tmp_path / "run" / "report" / "report.md").is_file()
    client = client_for(tracking_uri(data_dir))
    assert str(client.get_model_version_by_alias("frogs", "production").version) == "1"

    exported = explorer_train("onnx", "models:/frogs@production", "--out", str(tmp_path / "artefact"),
                              "--windows", "2", "--data-dir", str(data_dir))
    assert exported.returncode == 0, exported.stderr
    assert {p.name for p in (tmp_path / "artefact").iterdir()} >= {"body.onnx", "head.json", "reference.npz"}

    retrained = explorer_train("retrain", "--from", "models:/frogs/production", "--epochs", "1", "--data",
                               str(labelled_list), "--cache", str(cache), "--out", str(tmp_path / "again"),
                               "--data-dir", str(data_dir), "--threshold", "0")
    assert retrained.returncode == 0, retrained.stderr
    runs = client.search_runs([client.get_experiment_by_name("explorer-heads").experiment_id])
    child = [r for r in runs if r.data.tags.get("parent") == "models:/frogs/1"]
    assert len(child) == 1, [r.data.tags for r in runs]


def test_a_bad_setting_and_missing_data_are_named(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["fit", "--cache", str(tmp_path), "--head", "raw_cnn", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no training examples" in result.output
    result = runner.invoke(cli, ["fit", "--shared-data", str(tmp_path), "--cache", str(tmp_path), "--head", "raw_cnn",
                                 "--out", str(tmp_path / "o"), "--set", "width"])
    assert result.exit_code == 2 and "'width' is not key=value" in result.output
    result = runner.invoke(cli, ["tune", "--shared-data", str(tmp_path), "--cache", str(tmp_path), "--head", "raw_cnn",
                                 "--out", str(tmp_path / "o"), "--space", "{not json"])
    assert result.exit_code == 2 and "--space" in result.output


@pytest.mark.parametrize("command", ["cache", "fit", "evaluate", "retrain", "tune", "job-status", "onnx", "fit-meta", "score-bundle"])
def test_every_command_has_an_example_in_its_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output, result.output


def test_a_fit_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(labelled_list, tmp_path):
    """A real kill (SIGKILL, no chance to clean up) once the first epoch's last.pt is on disk; the
    same command again finishes the run from it, and its weights equal a run never killed, bit
    for bit."""
    import os
    import signal
    import time

    import torch

    def command(out):
        return [sys.executable, "-m", "trainer.cli", "fit", "--list", str(labelled_list), "--cache",
                str(tmp_path / "cache"), "--head", "raw_cnn", *TINY, "--epochs", "3", "--batch-size", "4",
                "--steps-per-epoch", "6", "--device", "cpu", "--workers", "0", "--precision", "fp32",
                "--patience", "0", "--no-track", "--out", str(out)]

    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.Popen(command(tmp_path / "killed"), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 600
    while not last.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # waits on the event (the first epoch's checkpoint), bounded
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    done_at_kill = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert done_at_kill < 3, "the kill came after the run had finished: nothing was resumed"
    again = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr
    a = torch.load(tmp_path / "whole" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(last, map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
