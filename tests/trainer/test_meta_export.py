"""`explorer-train fit-meta` on two tiny fits' run folders, and the meta's ONNX artefact.

Two tiny RawAudioCNNs are fitted on the tiny real cache with the same seed (so the same
validation rows); the fusion is fitted on their validation scores, its checkpoint and
"explorer-meta-onnx/1" folder are checked, and onnxruntime reproduces torch on every subset.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from exporter.frontend import IR_VERSION, OPSET
from tests.trainer.fit_fixtures import tiny_cache
from trainer.checkpoint import load_head
from trainer.fit import FitConfig, fit
from trainer.meta import subset_scores
from trainer.meta_cmd import fit_meta_command, held_out_split, read_runs, run_fit_meta

BRANCHES = {"raw_cnn": {"width": 4, "depth": 1, "stages": 2}, "raw_cnn_2": {"width": 6, "depth": 1, "stages": 2}}
"""Branch name -> head config: both raw_cnn, so a bundle of them names its branches raw_cnn, raw_cnn_2."""
SEED = 3
_runs: dict = {}


def two_runs(tmp_path_factory) -> dict:
    """{"runs": {branch: run folder}, "best": {branch: best.pt}, "meta": run_fit_meta's result,
    "meta_dir"}: fitted once per test process and shared (read-only)."""
    if not _runs:
        examples, cache, labels = tiny_cache(tmp_path_factory)
        root = tmp_path_factory.mktemp("meta-runs")
        runs, best = {}, {}
        for name, head_config in BRANCHES.items():
            config = FitConfig(head="raw_cnn", head_config=head_config, epochs=2, batch_size=4, steps_per_epoch=3,
                               lr=3e-3, device="cpu", workers=0, precision="fp32", patience=0, seed=SEED)
            result = fit(config, examples, cache, root / name, labels=labels, progress=False)
            runs[name], best[name] = root / name, result.best_path
        meta = run_fit_meta(runs, root / "meta", epochs=30, hidden=32, seed=0, held_out=0.5)
        _runs.update(runs=runs, best=best, meta=meta, meta_dir=root / "meta", cache=cache)
    return _runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return two_runs(tmp_path_factory)


def test_fit_meta_writes_a_meta_checkpoint_with_the_calibration_per_subset(trained):
    meta, state = load_head(trained["meta"]["checkpoint"])
    assert state["head"] == "meta_mlp" and state["format"] == "explorer-head-checkpoint/1"
    assert meta.branches == list(BRANCHES) and meta.hidden == 32
    data = read_runs(trained["runs"])
    assert meta.labels == data.labels
    subsets = [tuple(row["branches"]) for row in state["calibration"]]
    assert subsets == [("raw_cnn",), ("raw_cnn_2",), ("raw_cnn", "raw_cnn_2")]
    train, held = trained["meta"]["rows"]
    assert train + held == len(data.clip_ids) and held > 0 and train > 0
    for row in state["calibration"]:
        assert row["rows"] == held and 0 <= row["ece"] <= 1 and 0 <= row["brier"] <= 1
    # The held-out rows are whole recording groups the fusion did not fit on: no group on both sides.
    fit_rows, held_rows = held_out_split(data.clip_ids, 0.5, 0)
    groups = np.array([str(c).split("#")[0] for c in data.clip_ids])
    assert not set(groups[fit_rows]) & set(groups[held_rows]) and len(fit_rows) + len(held_rows) == len(groups)
    assert len(state["reference_scores"]["raw_cnn"]) == min(32, train + held)
    print(f"{train} meta-train rows, {held} held-out rows; held-out calibration:", [(r["branches"], round(r["ece"], 4), round(r["brier"], 4), r["birdclef"])
                                    for r in state["calibration"]])


def test_the_command_prints_calibration_and_the_metric_per_subset(trained, tmp_path):
    runs = trained["runs"]
    result = CliRunner().invoke(fit_meta_command, [*(x for b, r in runs.items() for x in ("--branch", f"{b}={r}")),
                                                   "--out", str(tmp_path / "meta"), "--epochs", "3", "--hidden", "8"])
    assert result.exit_code == 0, result.output
    assert "raw_cnn+raw_cnn_2" in result.output and "ECE" in result.output and "BirdCLEF" in result.output
    assert (tmp_path / "meta" / "best.pt").is_file() and (tmp_path / "meta" / "fusion" / "meta.onnx").is_file()


def test_runs_with_other_validation_rows_are_refused_by_name(trained, tmp_path):
    other = tmp_path / "other_run"
    other.mkdir()
    with np.load(trained["runs"]["raw_cnn_2"] / "validation.npz") as saved:
        arrays = dict(saved)
    arrays["starts"] = arrays["starts"] + 32_000  # what another split's windows look like
    np.savez(other / "validation.npz", **arrays)
    runs = {"raw_cnn": trained["runs"]["raw_cnn"], "odd": other}
    with pytest.raises(ValueError, match=r"raw_cnn .* and odd .*different validation rows"):
        run_fit_meta(runs, tmp_path / "meta")
    result = CliRunner().invoke(fit_meta_command, ["--branch", f"raw_cnn={runs['raw_cnn']}", "--branch",
                                                   f"odd={other}", "--out", str(tmp_path / "meta2")])
    assert result.exit_code == 2 and "odd" in result.output and not (tmp_path / "meta2").exists()
    missing = tmp_path / "empty_run"
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run"):
        read_runs({"raw_cnn": runs["raw_cnn"], "x": missing})
    relabelled = tmp_path / "relabelled"
    shutil.copytree(other, relabelled)
    arrays["labels"] = arrays["labels"][::-1]
    np.savez(relabelled / "validation.npz", **arrays)
    with pytest.raises(ValueError, match="different labels"):
        read_runs({"raw_cnn": runs["raw_cnn"], "relabelled": relabelled})


def test_the_meta_onnx_artefact_matches_torch_on_every_subset(trained):
    folder = trained["meta"]["fusion"]
    info = json.loads((folder / "meta.json").read_text())
    assert info["format"] == "explorer-meta-onnx/1" and info["branches"] == list(BRANCHES)
    assert info["inputs"] == [*BRANCHES, "present"] and len(info["calibration"]) == 3
    model = onnx.load(str(folder / "meta.onnx"))
    assert model.ir_version == IR_VERSION and {o.version for o in model.opset_import if o.domain == ""} == {OPSET}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    meta, _ = load_head(trained["meta"]["checkpoint"])
    ref = np.load(folder / "reference.npz")
    inputs = {b: ref[f"input/{b}"] for b in BRANCHES}
    session = ort.InferenceSession(str(folder / "meta.onnx"), providers=["CPUExecutionProvider"])
    worst = 0.0
    for flags in ([1, 0], [0, 1], [1, 1]):
        present = [b for b, f in zip(BRANCHES, flags) if f]
        torch_scores = subset_scores(meta, inputs, present)
        # An absent branch's input is ignored whatever it holds: feed it noise-free garbage (ones).
        feeds = {b: (inputs[b] if f else np.ones_like(inputs[b])) for b, f in zip(BRANCHES, flags)}
        got = session.run(["scores"], {**feeds, "present": np.array(flags, np.float32)})[0]
        worst = max(worst, float(np.abs(got - torch_scores).max()))
    assert worst < 1e-5
    assert info["reference"]["onnx_max_abs_diff"] < 1e-5
    print(f"meta.onnx vs torch: max |diff| {worst:.2e} over {len(next(iter(inputs.values())))} rows x 3 subsets")
