"""`explorer-train score-bundle`: the default model's scores on a fit's validation rows, so a
meta_mlp can be trained with a `birdnet` branch and shipped fused with it.

The run is the tiny raw_cnn fit of tests/trainer/test_meta_export.py (the tiny real cache's five
labels: 21211, 41663, 48124, 50186, 52884, all of which the default bundle scores, so no label is
zeroed on the real path); the bundle is the real `elsilencio-default` (BirdNET and its embedding
head). Checked: the rows are the run's, the scores are what `explorer analyze` writes for those
windows (written independently here), `fit-meta` trains on the pair, `explorer export bundle
--with-default --fusion` builds with the default model inside the meta, and `explorer analyze`
through that bundle on a real recording gives the torch meta's output on the branches' scores.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from device.bundle.verify import verify_bundle
from device.home import ExplorerHome
from tests.helpers import run_explorer
from tests.trainer.test_meta_export import two_runs
from trainer.bundle_scores import INFO, score_bundle, score_bundle_command
from trainer.checkpoint import load_head
from trainer.meta import subset_scores
from trainer.meta_cmd import fit_meta_command, read_runs
from trainer.onnx_export import reference_logits

WINDOW = 160_000
BIRDS = "audio/other/birds_10s.wav"  # 32 kHz, just over 10 s: two full device windows through BirdNET
TOLERANCE = 1e-5
"""Probability, as tests/exporter/test_meta_fusion.py: ONNX against torch (~1e-7), plus the meta
fed the default's CSV scores (six decimals, 5e-7 at most) where the bundle feeds it float32."""
ROWS_KEPT = ("clip_ids", "starts", "targets", "labels", "primary")


def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0][1:], {row[0]: np.array([float(x) for x in row[1:]]) for row in rows[1:]}


@pytest.fixture(scope="module")
def scored(tmp_path_factory, default_home_template):
    trained = two_runs(tmp_path_factory)
    root = tmp_path_factory.mktemp("score-bundle")
    home = root / "home"
    shutil.copytree(default_home_template, home, symlinks=True)
    out = root / "birdnet"
    result = CliRunner().invoke(score_bundle_command, ["--run", str(trained["runs"]["raw_cnn"]), "--cache",
                                                       str(trained["cache"].root), "--out", str(out), "--home", str(home)])
    assert result.exit_code == 0, result.output
    return {"run": trained["runs"]["raw_cnn"], "best": trained["best"]["raw_cnn"], "cache": trained["cache"],
            "home": ExplorerHome.resolve(home), "out": out, "output": result.output}


@pytest.fixture(scope="module")
def meta(scored, tmp_path_factory):
    """`explorer-train fit-meta --branch raw_cnn=RUN --branch birdnet=OUT`: (run folder, its output)."""
    meta_dir = tmp_path_factory.mktemp("meta-birdnet") / "meta"
    fitted = CliRunner().invoke(fit_meta_command, ["--branch", f"raw_cnn={scored['run']}", "--branch",
                                                   f"birdnet={scored['out']}", "--out", str(meta_dir), "--epochs",
                                                   "30", "--hidden", "32", "--held-out", "0.5"])
    assert fitted.exit_code == 0, fitted.output
    return meta_dir, fitted.output


def test_the_scores_are_analyze_s_on_the_run_s_own_rows(scored, tmp_path):
    run, out = np.load(scored["run"] / "validation.npz"), np.load(scored["out"] / "validation.npz")
    for key in ROWS_KEPT:
        assert np.array_equal(run[key], out[key]), key
    labels = [str(x) for x in run["labels"]]
    assert out["scores"].shape == run["scores"].shape and out["scores"].dtype == np.float32
    assert "written as 0" not in scored["output"]

    # The same windows written here, scored by the device's CLI on its own: the same numbers.
    windows = tmp_path / "windows"
    windows.mkdir()
    for k, (clip_id, start) in enumerate(zip(run["clip_ids"], run["starts"])):
        sf.write(windows / f"val{k:03d}.wav", scored["cache"].window(str(clip_id), int(start), WINDOW), 32_000,
                 subtype="FLOAT")
    analyzed = run_explorer("analyze", str(windows), "--out", str(tmp_path / "direct.csv"), home=scored["home"])
    assert analyzed.returncode == 0, analyzed.stderr
    columns, direct = read_csv(tmp_path / "direct.csv")
    expected = np.array([[direct[f"val{k:03d}_5"][columns.index(x)] for x in labels] for k in range(len(run["starts"]))])
    np.testing.assert_array_equal(out["scores"], expected.astype(np.float32))
    assert out["scores"].max() > 0.0  # the default scores something on the real frog and insect windows

    data = read_runs({"raw_cnn": scored["run"], "birdnet": scored["out"]})
    assert set(data.scores) == {"raw_cnn", "birdnet"} and data.labels == labels
    print(f"{len(labels)} labels x {len(run['starts'])} rows scored by the default bundle; "
          f"max score {out['scores'].max():.4f}")


def test_fit_meta_trains_the_fusion_over_the_head_and_the_default_model(meta):
    meta_dir, output = meta
    assert (meta_dir / "best.pt").is_file() and (meta_dir / "fusion" / "meta.onnx").is_file()
    assert "raw_cnn+birdnet" in output
    assert load_head(meta_dir / "best.pt")[0].branches == ["raw_cnn", "birdnet"]
    print(output)


def test_a_bundle_fused_with_the_default_inside_the_meta_gives_the_torch_meta(scored, meta, shared_data, tmp_path):
    meta_dir = meta[0]
    home = scored["home"]
    out = home.bundles / "fused-birdnet"
    built = run_explorer("export", "bundle", "--from", str(scored["best"]), "--with-default", "--fusion",
                         str(meta_dir / "fusion"), "--no-int8", "--out", str(out), home=home, timeout=600)
    assert built.returncode == 0, built.stderr
    manifest = verify_bundle(out, home.trusted_keys).manifest
    assert [b.name for b in manifest.branches] == ["birdnet", "raw_cnn"]
    assert manifest.provenance["fusion"]["present"] == ["raw_cnn", "birdnet"]  # the default is a meta input

    recording = shared_data / BIRDS
    fused_csv, default_csv = tmp_path / "fused.csv", tmp_path / "default.csv"
    for bundle, csv_path in ((out, fused_csv), (home.active_bundle(), default_csv)):
        done = run_explorer("analyze", str(recording), "--bundle", str(bundle), "--out", str(csv_path), home=home)
        assert done.returncode == 0, done.stderr
    labels, fused = read_csv(fused_csv)
    default_labels, default = read_csv(default_csv)
    ids = sorted(fused, key=lambda r: int(r.rsplit("_", 1)[1]))[:2]  # the two full windows (a padded third follows)
    assert ids == ["birds_10s_5", "birds_10s_10"]

    meta = load_head(meta_dir / "best.pt")[0]
    head = load_head(scored["best"])[0]
    audio, rate = sf.read(recording, dtype="float32")
    assert rate == 32_000
    windows = np.stack([audio[i * WINDOW:(i + 1) * WINDOW] for i in range(2)])
    head_scores = (1 / (1 + np.exp(-reference_logits(head, windows).astype(np.float64)))).astype(np.float32)
    birdnet = np.array([[default[r][default_labels.index(x)] for x in meta.labels] for r in ids], np.float32)
    expected = subset_scores(meta, {"raw_cnn": head_scores, "birdnet": birdnet}, ["raw_cnn", "birdnet"])
    got = np.array([[fused[r][labels.index(x)] for x in meta.labels] for r in ids])
    error = np.abs(got - expected).max()
    assert error <= TOLERANCE, f"max |device - torch meta| = {error:.2e}"
    # Labels outside the meta's: the default model's own scores (no other source has them).
    others = [x for x in labels if x not in meta.labels]
    assert others and set(others) <= set(default_labels)
    np.testing.assert_allclose([[fused[r][labels.index(x)] for x in others] for r in ids],
                               [[default[r][default_labels.index(x)] for x in others] for r in ids], atol=1e-6)
    print(f"fused with the default inside the meta: max |device - torch meta| = {error:.2e} on {len(ids)} windows")


def test_labels_the_bundle_does_not_score_are_refused_or_zeroed_when_asked(scored, tmp_path):
    """A run with a label outside the default bundle (999999): refused by name before any
    scoring, or with absent_as_zero written as 0 and named; its folder is never overwritten."""
    run = tmp_path / "run"
    run.mkdir()
    with np.load(scored["run"] / "validation.npz") as saved:
        arrays = {k: saved[k][:3] for k in ("scores", "targets", "primary", "clip_ids", "starts")}
        labels = [*(str(x) for x in saved["labels"]), "999999"]
    arrays["scores"] = np.concatenate([arrays["scores"], np.full((3, 1), 0.5, np.float32)], axis=1)
    arrays["targets"] = np.concatenate([arrays["targets"], np.zeros((3, 1), np.float32)], axis=1)
    np.savez(run / "validation.npz", labels=np.asarray(labels), **arrays)
    home, cache = scored["home"].root, scored["cache"].root
    with pytest.raises(ValueError, match=r"does not score the run's labels \['999999'\]"):
        score_bundle(run, cache, tmp_path / "never", bundle=scored["home"].active_bundle())
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="is the run folder itself"):
        score_bundle(run, cache, run, home=home, absent_as_zero=True)

    result = CliRunner().invoke(score_bundle_command, ["--run", str(run), "--cache", str(cache), "--out",
                                                       str(tmp_path / "zeroed"), "--home", str(home), "--absent-as-zero"])
    assert result.exit_code == 0, result.output
    assert "written as 0: 999999" in result.output
    assert "default (no checkpoint in the run folder)" in (tmp_path / "zeroed" / INFO).read_text()
    zeroed = np.load(tmp_path / "zeroed" / "validation.npz")
    assert [str(x) for x in zeroed["labels"]] == labels
    assert (zeroed["scores"][:, -1] == 0).all()
    np.testing.assert_array_equal(zeroed["scores"][:, :-1], np.load(scored["out"] / "validation.npz")["scores"][:3])
