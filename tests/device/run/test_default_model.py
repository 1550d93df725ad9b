"""The default bundle end to end: `explorer analyze` names the site's frogs and its tinamou, and
stays below its thresholds on recordings from outside the label space, including recordings the
frog head never saw.

Read the frog result honestly: the 13 in-space Colombian frog recordings trained the head, so
ranking them first is an in-sample check (13 of 13 when committed). How the head does on audio
it never trained on is the trainer's held-out evaluation, stored in the artefact and tested in
tests/trainer/test_embedding_head.py: each single-recording species is split into time-disjoint
halves held out in turn, and Allobates femoralis is held out one recording at a time. When
committed, 28 of 29 held-out parts ranked their label first among the head's 14 labels and 25
were detected at their thresholds; 90 % of A. femoralis windows from an unseen recording were
detected. The Little Tinamou is BirdNET's (never trained on here).

audio/birds and audio/other trained the head as negatives, and its frog thresholds were raised
above its own scores on them, so no frog firing there proves only BirdNET's threshold. The
thresholds are tested on `recordings_more.csv`, which the committed head never saw (checked
against the clips it records): 19 negatives (rain, thunder, wind, water, bees, grasshoppers, a
scaly cricket, big cats, a gorilla, squirrels, a bat, human speech), 13 insects and 4 mammals.
Measured when written: no label of any class on the insects, the mammals or 17 of the 19
negatives; Dendropsophus microcephalus (65373, threshold 0.353) on both grasshoppers, 4 of the
43 negative windows (0.356, 0.739, 0.402 on the meadow grasshopper, 0.435 on the other). That
is within the head's out-of-fold rate for out-of-space calls (11 of 111 windows), and is
stated in exporter/artefacts/README.md.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from device.bundle.manifest import read_manifest
from device.home import ExplorerHome
from exporter.default_bundle import ARTEFACT, NAME, build_default_bundle
from trainer.embedding_head import EmbeddingHead
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
def more_recordings(shared_data) -> dict[str, dict[str, str]]:
    """recordings_more.csv rows by file stem: recordings added after the committed head was trained."""
    rows = csv.DictReader(open(shared_data / "recordings_more.csv", newline=""))
    return {row["path"].rsplit("/", 1)[1].rsplit(".", 1)[0]: row for row in rows}


HELD_OUT_FOLDERS = ("negatives", "insects", "mammals")


@pytest.fixture(scope="module")
def held_out(home, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("held-out") / "held_out.csv"
    return analyze(home, out, *(shared_data / "audio" / folder for folder in HELD_OUT_FOLDERS))


@pytest.fixture(scope="module")
def frogs(home, shared_data, tmp_path_factory):
    return analyze(home, tmp_path_factory.mktemp("frogs") / "frogs.csv", shared_data / "audio/colombian_frogs")


@pytest.fixture(scope="module")
def birds_and_other(home, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("oos") / "oos.csv"
    return analyze(home, out, shared_data / "audio/birds", shared_data / "audio/other")


def labels_fired(home, labels: list[str], scores: dict[str, np.ndarray], stems) -> dict[str, list]:
    """Per recording, every label that crossed its threshold in some window, with its best score."""
    thresholds = np.array(read_manifest(home.active_bundle()).thresholds_array())
    return {stem: [(labels[j], round(float(scores[stem][:, j].max()), 3))
                   for j in np.flatnonzero((scores[stem] >= thresholds).any(axis=0))] for stem in stems}


def frog_columns(home, labels: list[str]) -> np.ndarray:
    """Which columns are the head's frogs (the rest are BirdNET's birds)."""
    manifest = read_manifest(home.active_bundle())
    classes = {label.primary_label: label.class_name for label in manifest.labels}
    return np.array([classes[label] == "Amphibia" for label in labels])


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
    """BirdNET's 0.7 on birds and insects it never trained on here. For the frogs this is in sample:
    these recordings trained the head as negatives (the held-out tests below are the real check)."""
    labels, scores = birds_and_other
    out_of_space = [stem for stem in scores if recordings[stem]["in_label_space"] == "no"]
    assert len(out_of_space) == 10  # spinetail, 4 hermits, tico, cicada, cricket, two unlabelled
    fired = labels_fired(home, labels, scores, out_of_space)
    assert not any(fired.values()), fired


def test_the_held_out_recordings_trained_nothing_in_the_head(held_out, more_recordings):
    labels, scores = held_out
    assert set(scores) == set(more_recordings) and len(scores) == 36  # every file of the three folders
    trained_on = {clip["path"] for clip in EmbeddingHead.load(ARTEFACT).training["clips"]}
    assert len(trained_on) == 69 and not trained_on & {row["path"] for row in more_recordings.values()}


def test_no_label_fires_on_held_out_insects_and_mammals(home, held_out, more_recordings):
    """The bundle has no insect or mammal label (Insecta 0/17, Mammalia 0/9): on these, every label
    it named would be a false alarm, frog or bird."""
    labels, scores = held_out
    classes = {label.class_name for label in read_manifest(home.active_bundle()).labels}
    assert classes == {"Aves", "Amphibia"}
    animals = [stem for stem, row in more_recordings.items() if row["class_name"] in ("Insecta", "Mammalia")]
    assert len(animals) == 17
    fired = labels_fired(home, labels, scores, animals)
    assert not any(fired.values()), fired


def test_no_label_fires_on_held_out_negatives_but_grasshoppers(home, held_out, more_recordings):
    """Rain, thunder, wind, water, bees, a scaly cricket, big cats, a gorilla, squirrels, a bat and
    human speech: no frog and no bird at its threshold in any window."""
    labels, scores = held_out
    negatives = [stem for stem, row in more_recordings.items() if row["in_label_space"] == "no"]
    others = [stem for stem in negatives if "grasshopper" not in more_recordings[stem]["label_note"]]
    assert (len(negatives), len(others)) == (19, 17)
    fired = labels_fired(home, labels, scores, others)
    assert not any(fired.values()), fired


def test_frog_false_alarms_on_held_out_negatives_stay_within_the_out_of_fold_rate(home, held_out, more_recordings):
    """The share of held-out negative windows naming a frog is at most the head's out-of-fold
    rate for out-of-space calls (the artefact's held-out metrics; 11/111 when committed). Measured:
    4 of 43 windows, all D. microcephalus on the two grasshoppers (see the module docstring)."""
    labels, scores = held_out
    thresholds = np.array(read_manifest(home.active_bundle()).thresholds_array())
    frog = frog_columns(home, labels)
    windows = np.concatenate([scores[stem] for stem, row in more_recordings.items() if row["in_label_space"] == "no"])
    assert len(windows) == 43
    assert not (windows[:, ~frog] >= thresholds[~frog]).any()  # no bird at BirdNET's 0.7 either
    false_frog = int((windows[:, frog] >= thresholds[frog]).any(axis=1).sum())
    calls = EmbeddingHead.load(ARTEFACT).metrics["held_out"]["negatives_by_source"]["call"]
    assert false_frog / len(windows) <= calls["with_a_false_label"] / calls["windows"], (false_frog, len(windows))
