"""The default bundle end to end: `explorer analyze` names the site's frogs and its tinamou, and
stays below every in-space threshold on recordings from outside the label space.

Read the frog result honestly: the 13 in-space Colombian frog recordings trained the head, so
ranking them first is an in-sample check (13 of 13 when committed). How the head does on audio
it never trained on is the trainer's held-out evaluation, stored in the artefact and tested in
tests/trainer/test_embedding_head.py: each single-recording species is split into time-disjoint
halves held out in turn, and Allobates femoralis is held out one recording at a time. When
committed, 28 of 29 held-out parts ranked their label first among the head's 14 labels and 25
were detected at their thresholds; 90 % of A. femoralis windows from an unseen recording were
detected. The Little Tinamou is BirdNET's (never trained on here) and the out-of-space birds
and insects below are negatives the head did train on; BirdNET never saw any of them.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from device.bundle.manifest import read_manifest
from device.home import ExplorerHome
from exporter.default_bundle import NAME, build_default_bundle
from tests.helpers import run_explorer


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> ExplorerHome:
    home = ExplorerHome.resolve(tmp_path_factory.mktemp("default-home"))
    build_default_bundle(home, progress=lambda line: None)
    return home


@pytest.fixture(scope="module")
def recordings(shared_data) -> dict[str, dict[str, str]]:
    """recordings.csv rows by file stem."""
    rows = csv.DictReader(open(shared_data / "recordings.csv", newline=""))
    return {row["path"].rsplit("/", 1)[1].rsplit(".", 1)[0]: row for row in rows}


def analyze(home: ExplorerHome, out, *paths) -> tuple[list[str], dict[str, np.ndarray]]:
    """Run the real command; returns the label columns and each file's [windows, labels] scores."""
    result = run_explorer("analyze", *map(str, paths), "--out", str(out), home=home)
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    scores: dict[str, list[list[float]]] = {}
    for row in rows[1:]:
        scores.setdefault(row[0].rsplit("_", 1)[0], []).append([float(v) for v in row[1:]])
    return rows[0][1:], {stem: np.array(v) for stem, v in scores.items()}


@pytest.fixture(scope="module")
def frogs(home, shared_data, tmp_path_factory):
    return analyze(home, tmp_path_factory.mktemp("frogs") / "frogs.csv", shared_data / "audio/colombian_frogs")


@pytest.fixture(scope="module")
def birds_and_other(home, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("oos") / "oos.csv"
    return analyze(home, out, shared_data / "audio/birds", shared_data / "audio/other")


def test_the_default_bundle_is_the_active_one(home):
    assert read_manifest(home.active_bundle()).name == NAME


def test_every_in_space_frog_is_ranked_first_and_detected(home, frogs, recordings):
    labels, scores = frogs
    thresholds = dict(zip(labels, read_manifest(home.active_bundle()).thresholds_array()))
    in_space = {stem: row["primary_label"] for stem, row in recordings.items()
                if row["in_label_space"] == "yes" and stem in scores}
    assert len(in_space) == 13
    missed = {}
    for stem, label in in_space.items():
        best = scores[stem].max(axis=0)  # over the recording's 5 s windows
        ranked = [labels[i] for i in np.argsort(-best, kind="stable")]
        if ranked[0] != label or best[labels.index(label)] < thresholds[label]:
            missed[stem] = (label, ranked[:3], float(best[labels.index(label)]))
    assert not missed, missed  # in-sample: these recordings trained the head


def test_the_little_tinamou_is_named_by_birdnet(home, birds_and_other):
    labels, scores = birds_and_other
    best = scores["Cryp.soui"].max(axis=0)
    assert labels[int(best.argmax())] == "littin1"
    assert best[labels.index("littin1")] >= read_manifest(home.active_bundle()).threshold("littin1")


def test_no_in_space_label_crosses_its_threshold_on_out_of_space_recordings(home, birds_and_other, recordings):
    labels, scores = birds_and_other
    thresholds = np.array(read_manifest(home.active_bundle()).thresholds_array())
    out_of_space = [stem for stem in scores if recordings[stem]["in_label_space"] == "no"]
    assert len(out_of_space) == 10  # spinetail, 4 hermits, tico, cicada, cricket, two unlabelled
    fired = {stem: [(labels[j], round(float(scores[stem][:, j].max()), 3))
                    for j in np.flatnonzero((scores[stem] >= thresholds).any(axis=0))] for stem in out_of_space}
    assert not any(fired.values()), fired
