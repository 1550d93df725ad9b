"""Proof that a bundle's weights are the trained ones: a head trained by `fit`, exported by the
real commands (`explorer export bundle --from best.pt`, which runs `explorer-train onnx` in its own
process), scores its validation windows through `explorer analyze`, and `explorer-train
evaluate` on that CSV gives the validation metric the checkpoint recorded, to 1e-3.

The validation windows are written as float32 WAV files of exactly the samples `fit` read from the
audio cache (the first 5 s of each validation clip), so the device's analysis windows are the
trainer's validation windows and the only differences left are the ones under test: the torch
graph against the ONNX graph, the float32 front end of training against the device's float64 one.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from device.home import ExplorerHome
from tests.helpers import REPO, run_explorer
from tests.trainer.fit_fixtures import tiny_cache
from trainer.checkpoint import load_head
from trainer.fit import FitConfig, fit

WINDOW = 160_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    examples, cache, labels = tiny_cache(tmp_path_factory)
    out = tmp_path_factory.mktemp("proof-run")
    config = FitConfig(head="raw_cnn", head_config={"width": 4, "depth": 1, "stages": 2}, epochs=2, batch_size=4,
                       steps_per_epoch=4, lr=3e-3, device="cpu", workers=0, precision="fp32", patience=0, seed=3)
    result = fit(config, examples, cache, out, labels=labels, progress=False)
    return result, cache


def test_the_bundle_reproduces_the_validation_metric_through_analyze_and_evaluate(trained, tmp_path):
    result, cache = trained
    _, state = load_head(result.best_path)
    recorded = state["evaluation"]["birdclef"]
    assert recorded == pytest.approx(result.best_metric, abs=1e-12)
    saved = np.load(result.scores_path)
    labels = [str(x) for x in saved["labels"]]

    windows = tmp_path / "windows"
    windows.mkdir()
    names = []
    for k, (clip_id, start) in enumerate(zip(saved["clip_ids"], saved["starts"])):
        name = f"val{k:03d}"
        sf.write(windows / f"{name}.wav", cache.window(str(clip_id), int(start), WINDOW), 32_000, subtype="FLOAT")
        names.append(name)

    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    bundle = home.bundles / "proof"
    built = run_explorer("export", "bundle", "--from", str(result.best_path), "--out", str(bundle), "--no-int8",
                         "--activate", home=home, timeout=600)
    assert built.returncode == 0, built.stderr
    submission = tmp_path / "submission.csv"
    analyzed = run_explorer("analyze", *[str(windows / f"{n}.wav") for n in names], "--out", str(submission),
                            home=home, timeout=600)
    assert analyzed.returncode == 0, analyzed.stderr

    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row_id", *labels])
        for name, row in zip(names, saved["targets"]):
            writer.writerow([f"{name}_5", *[f"{value:g}" for value in row]])
    scored = subprocess.run([sys.executable, "-m", "trainer.cli", "evaluate", "--predictions", str(submission),
                             "--truth", str(truth), "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert scored.returncode == 0, scored.stderr
    through_device = json.loads(scored.stdout)["birdclef"]
    assert through_device == pytest.approx(recorded, abs=1e-3)
    print(f"validation BirdCLEF metric: recorded {recorded:.6f}, through the device {through_device:.6f}, "
          f"{len(names)} windows")

    # The scores themselves, row for row: the device computes what torch computed on validation.
    with open(submission, newline="") as handle:
        rows = list(csv.reader(handle))
    columns = [rows[0].index(label) for label in labels]
    device_scores = {row[0]: [float(row[c]) for c in columns] for row in rows[1:]}
    np.testing.assert_allclose(np.array([device_scores[f"{n}_5"] for n in names]), saved["scores"], atol=1e-4)
