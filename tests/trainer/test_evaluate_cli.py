"""`explorer-train evaluate` on what `explorer analyze` really writes: the default bundle on real
recordings, scored against a truth list, the printed BirdCLEF metric equal to the competition's
reference computed independently from the two files; and every way the files can be wrong."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.helpers import REPO, run_explorer

RECORDINGS = {
    "audio/colombian_frogs/Boana_pugnax.wav": "555142",
    "audio/insects/Rthoptera_gryllus_campestris_XC753101.flac": "52884",  # held out: trained nothing
    "audio/insects/Rthoptera_tettigonia_cantans.flac": "48124",  # held out, and missed (0.18)
    "audio/insects/minetest_sounds_cicada_01.ogg": "50186",  # held out, and missed (0.31)
    "audio/elsilencio_soundscape/H02_20230420_074000.ogg": "",  # nothing in the label space named
}
"""Real recordings and their labels: two the default bundle names and two it misses, so the
metric is neither 0 nor 1 and a wrong computation shows."""


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", "evaluate", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def submission(default_home_template, shared_data, tmp_path_factory):
    """The default bundle's submission on three real recordings, and a truth file for it."""
    out = tmp_path_factory.mktemp("evaluate")
    paths = [shared_data / p for p in RECORDINGS]
    from device.home import ExplorerHome

    done = run_explorer("analyze", *map(str, paths), "--out", str(out / "sub.csv"),
                        home=ExplorerHome.resolve(default_home_template))
    assert done.returncode == 0, done.stderr
    header, rows = read(out / "sub.csv")
    truth = out / "truth.csv"
    with open(truth, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row_id", "primary_label", "secondary_labels"])
        for row in rows:
            label = next(v for p, v in RECORDINGS.items() if row[0].startswith(p.rsplit("/", 1)[1].rsplit(".", 1)[0]))
            writer.writerow([row[0], label, "[]"])
    return out / "sub.csv", truth


def test_the_printed_metric_is_the_competitions_on_the_two_files(submission, tmp_path):
    predictions, truth = submission
    done = evaluate("--predictions", predictions, "--truth", truth, "--report", tmp_path / "report")
    assert done.returncode == 0, done.stderr
    header, rows = read(predictions)
    _, truth_rows = read(truth)
    labels = header[1:]
    scores = np.array([[float(c) for c in row[1:]] for row in rows])
    solution = np.zeros_like(scores, dtype=int)
    for i, (rid, label, _) in enumerate(truth_rows):
        if label:
            solution[i, labels.index(label)] = 1
    keep = solution.sum(axis=0) > 0
    reference = roc_auc_score(solution[:, keep], scores[:, keep], average="macro")
    first = done.stdout.splitlines()[0]
    assert 0.5 < reference < 0.999
    assert first.startswith(f"BirdCLEF 2025 metric: {reference:.6f} (macro ROC AUC over 4 classes")
    assert "micro-F1" in done.stdout and "(thresholds tuned on these rows: optimistic)" in done.stdout
    assert (tmp_path / "report" / "report.md").read_text().count(f"{reference:.6f}") == 1
    for png in ("per_class_ap.png", "pr_curves.png", "score_histograms.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert numbers["birdclef"] == pytest.approx(reference, abs=1e-12) and numbers["scored_classes"] == 4


def test_a_bundles_thresholds_and_the_taxonomy_give_fixed_f1_and_slices(submission, default_home_template, shared_data):
    from device.home import ExplorerHome

    predictions, truth = submission
    manifest = ExplorerHome.resolve(default_home_template).active_bundle() / "manifest.json"
    done = evaluate("--predictions", predictions, "--truth", truth, "--thresholds", manifest,
                    "--taxonomy", shared_data / "taxonomy.csv", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert not result["thresholds_tuned"] and set(result["slices"]) == {"Amphibia", "Insecta"}
    assert result["slices"]["Insecta"]["classes"] == 3 and result["slices"]["Amphibia"]["classes"] == 1
    assert 0 < result["primary_accuracy"] < 1


def test_files_that_cannot_be_scored_are_refused_naming_the_problem(submission, tmp_path):
    predictions, truth = submission
    header, rows = read(predictions)
    holed = tmp_path / "holed.csv"
    rows[1][3] = ""  # a window the bundle could not score
    with open(holed, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    done = evaluate("--predictions", holed, "--truth", truth)
    assert done.returncode == 2 and f"row {rows[1][0]!r} has no score for {header[3]!r}" in done.stderr

    short = tmp_path / "short.csv"
    _, truth_rows = read(truth)
    with open(short, "w", newline="") as handle:
        csv.writer(handle).writerows([["row_id", "primary_label"], *[r[:2] for r in truth_rows[:-1]]])
    done = evaluate("--predictions", predictions, "--truth", short)
    assert done.returncode == 2 and "1 only in sub.csv" in done.stderr and truth_rows[-1][0] in done.stderr

    absent = tmp_path / "absent.csv"  # a label the bundle has no column for, on the first row
    rewritten = [truth_rows[0][:2] + ["['notalabel1']"], *truth_rows[1:]]
    with open(absent, "w", newline="") as handle:
        csv.writer(handle).writerows([["row_id", "primary_label", "secondary_labels"], *rewritten])
    done = evaluate("--predictions", predictions, "--truth", absent)
    assert done.returncode == 2 and "labels ['notalabel1'] are positive" in done.stderr
    done = evaluate("--predictions", predictions, "--truth", absent, "--absent-as-zero", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["scored_classes"] == 5  # scored 0: an AUC of 0.5

    done = evaluate("--predictions", tmp_path / "nothing.csv", "--truth", truth)
    assert done.returncode == 2 and "nothing.csv: no such file" in done.stderr


def test_the_trainer_has_its_own_entry_point_beside_the_devices():
    script = Path(sys.executable).with_name("explorer-train")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "evaluate" in done.stdout
