"""The default bundle end to end: `explorer analyze` names the site's frogs, insect families,
mammals and its tinamou, and stays below its thresholds on recordings from outside the label
space, including a held-out test set that trained nothing.

Read the results honestly. The 13 in-space Colombian frog recordings, and the insects and
mammals not held out, trained the head, so naming them is an in-sample check. How the head does
on audio it never trained on is measured twice: the trainer's cross-validation (stored in the
artefact, tested in tests/trainer/test_embedding_head.py; 39 of 43 held-out recording parts
ranked their label first, 32 detected; the insects 2 of 10), and the held-out test set here
(trainer/heldout.py, listed in the artefact's `training.held_out_test`): one recording of each
insect family, and nine negatives (rain, thunder, a bumblebee, a leopard's saw and roar, two
squirrel calls, a bat, a grasshopper). They trained no weight and set no threshold.

Measured when committed: the held-out cricket (Gryllus campestris) is named a cricket at 0.974
(threshold 0.203), through BirdNET's own family source (its Fall Field Cricket scores 0.989;
the head alone gave 0.155); the katydid (Tettigonia cantans) and the cicada (a freesound
cicada) are NOT detected: 0.180 against 0.836 (BirdNET's katydids 0.017) and 0.314 against
0.402 (BirdNET has no cicada). `test_held_out_insects_are_named_as_their_family` states issue
10's requirement for all three and is marked as an expected failure until the data supports it.
On the nine held-out negatives (14 windows) no frog, insect or bird crosses its threshold; the
jaguar label does on the leopard's roar (0.962, threshold 0.752): a big cat, its nearest confuser.

audio/birds, audio/other and recordings_more's training negatives trained the head as negatives
and raised its thresholds above its own scores on them, so no label firing there proves only
BirdNET's threshold. Two rows of audio/other give no label although their species belongs to a
family label (orni.wav a cicada, pellucens.wav a tree cricket): the trainer kept them out of
the insect labels' fits and thresholds, and the head names orni.wav a cicada (0.985).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from device.bundle.manifest import read_manifest
from device.home import ExplorerHome
from exporter.default_bundle import ARTEFACT, NAME, build_default_bundle
from exporter.head_artefacts import EmbeddingHead
from trainer.labelled import NOT_SAFE_NEGATIVES
from tests.helpers import run_explorer

SCORE_TOLERANCE = 1e-4
"""Device (fusion ONNX on the engine's embedding) against the trainer's numpy head on the same
windows: measured 3e-8 here; the artefact rounds its scores to 4 decimals (5e-5)."""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> ExplorerHome:
    home = ExplorerHome.resolve(tmp_path_factory.mktemp("default-home"))
    build_default_bundle(home, progress=lambda line: None)
    return home


@pytest.fixture(scope="module")
def head() -> EmbeddingHead:
    return EmbeddingHead.load(ARTEFACT)


@pytest.fixture(scope="module")
def recordings(shared_data) -> dict[str, dict[str, str]]:
    """Rows of both recording lists by file stem."""
    rows = [row for name in ("recordings.csv", "recordings_more.csv")
            for row in csv.DictReader(open(shared_data / name, newline=""))]
    return {row["path"].rsplit("/", 1)[1].rsplit(".", 1)[0]: row for row in rows}


def stem(path: str) -> str:
    return path.rsplit("/", 1)[1].rsplit(".", 1)[0]


def analyze(home: ExplorerHome, out, *paths) -> tuple[list[str], dict[str, np.ndarray]]:
    """Run the real command; returns the label columns and each file's [windows, labels] scores."""
    result = run_explorer("analyze", *map(str, paths), "--out", str(out), home=home)
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    scores: dict[str, list[list[float]]] = {}
    for row in rows[1:]:
        scores.setdefault(row[0].rsplit("_", 1)[0], []).append([float(v) for v in row[1:]])
    return rows[0][1:], {name: np.array(v) for name, v in scores.items()}


@pytest.fixture(scope="module")
def held_out(home, head, shared_data, tmp_path_factory):
    """The artefact's held-out test set through `explorer analyze`."""
    out = tmp_path_factory.mktemp("held-out") / "held_out.csv"
    return analyze(home, out, *(shared_data / row["path"] for row in head.training["held_out_test"]))


@pytest.fixture(scope="module")
def frogs(home, shared_data, tmp_path_factory):
    return analyze(home, tmp_path_factory.mktemp("frogs") / "frogs.csv", shared_data / "audio/colombian_frogs")


@pytest.fixture(scope="module")
def birds_and_other(home, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("oos") / "oos.csv"
    return analyze(home, out, shared_data / "audio/birds", shared_data / "audio/other")


@pytest.fixture(scope="module")
def trained_more(home, head, shared_data, tmp_path_factory):
    """recordings_more's insects and mammals that trained the head (in sample)."""
    held = {row["path"] for row in head.training["held_out_test"]}
    paths = sorted({row["path"] for row in head.training["clips"]
                    if row["path"].startswith(("audio/insects/", "audio/mammals/"))} - held)
    out = tmp_path_factory.mktemp("trained-more") / "trained.csv"
    return analyze(home, out, *(shared_data / path for path in paths))


def labels_fired(home, labels: list[str], scores: dict[str, np.ndarray], stems) -> dict[str, list]:
    """Per recording, every label that crossed its threshold in some window, with its best score."""
    thresholds = np.array(read_manifest(home.active_bundle()).thresholds_array())
    return {name: [(labels[j], round(float(scores[name][:, j].max()), 3))
                   for j in np.flatnonzero((scores[name] >= thresholds).any(axis=0))] for name in stems}


def label_classes(home, labels: list[str]) -> np.ndarray:
    """Each column's class (Aves from BirdNET; the rest from the head)."""
    classes = {label.primary_label: label.class_name for label in read_manifest(home.active_bundle()).labels}
    return np.array([classes[label] for label in labels])


def test_the_default_bundle_is_the_active_one(home):
    manifest = read_manifest(home.active_bundle())
    assert manifest.name == NAME
    assert {label.class_name for label in manifest.labels} == {"Aves", "Amphibia", "Insecta", "Mammalia"}


def test_every_in_space_frog_is_ranked_first_and_detected(home, frogs, recordings):
    labels, scores = frogs
    thresholds = dict(zip(labels, read_manifest(home.active_bundle()).thresholds_array()))
    in_space = {name: row["primary_label"] for name, row in recordings.items()
                if row["in_label_space"] == "yes" and name in scores}
    assert len(in_space) == 13
    missed = {}
    for name, label in in_space.items():
        best = scores[name].max(axis=0)  # over the recording's 5 s windows
        ranked = [labels[i] for i in np.argsort(-best, kind="stable")]
        if ranked[0] != label or best[labels.index(label)] < thresholds[label]:
            missed[name] = (label, ranked[:3], float(best[labels.index(label)]))
    assert not missed, missed  # in-sample: these recordings trained the head


def test_the_insects_and_mammals_that_trained_are_named_in_sample(home, trained_more, recordings):
    """In sample (they trained the head): each ranks its own label first; each is detected but the
    0.9 s Coryphoda albidicollis katydid (0.688 against 0.836: the katydid threshold sits above the
    meadow grasshopper's combined score, 0.826, set through BirdNET's katydids)."""
    labels, scores = trained_more
    thresholds = dict(zip(labels, read_manifest(home.active_bundle()).thresholds_array()))
    assert len(scores) == 14  # 2 katydids, 2 crickets, 6 cicadas, a jaguar, 3 raccoon clips
    missed = []
    for name, windows in scores.items():
        label = recordings[name]["primary_label"]
        best = windows.max(axis=0)
        assert labels[int(best.argmax())] == label, (name, label, labels[int(best.argmax())])
        if best[labels.index(label)] < thresholds[label]:
            missed.append(name)
    assert missed == ["Rthoptera_coryphoda_albidicollis"]


def test_the_little_tinamou_is_named_by_birdnet(home, birds_and_other):
    labels, scores = birds_and_other
    best = scores["Cryp.soui"].max(axis=0)
    assert labels[int(best.argmax())] == "littin1"
    assert best[labels.index("littin1")] >= read_manifest(home.active_bundle()).threshold("littin1")


def test_no_in_space_label_crosses_its_threshold_on_out_of_space_recordings(home, birds_and_other, recordings):
    """BirdNET's 0.7 on birds and insects it never trained on here. For the head this is in sample:
    these recordings trained it as negatives (the held-out tests below are the real check)."""
    labels, scores = birds_and_other
    family_rows = {stem(path) for path in NOT_SAFE_NEGATIVES}
    out_of_space = [name for name in scores if recordings[name]["in_label_space"] == "no" and name not in family_rows]
    assert len(out_of_space) == 8  # spinetail, 4 hermits, tico, two unlabelled recordings
    fired = labels_fired(home, labels, scores, out_of_space)
    assert not any(fired.values()), fired


def test_the_rows_left_unlabelled_in_a_family_are_named_only_as_it(home, birds_and_other):
    """orni.wav (Cicada orni) trained no insect label and set no insect threshold: the head names
    it a cicada, and nothing else. pellucens.wav (a tree cricket) is named nothing."""
    labels, scores = birds_and_other
    fired = labels_fired(home, labels, scores, ["orni", "pellucens"])
    assert [label for label, _ in fired["orni"]] == ["50186"]
    assert fired["pellucens"] == []


def test_the_held_out_recordings_trained_nothing_in_the_head(held_out, head, shared_data):
    labels, scores = held_out
    listed = [row["path"] for row in head.training["held_out_test"]]
    assert set(scores) == {stem(path) for path in listed} and len(listed) == 12
    trained_on = {clip["path"] for clip in head.training["clips"]}
    assert len(trained_on) == 93 and not trained_on & set(listed)
    assert all((shared_data / path).is_file() for path in listed)


def test_the_device_scores_the_held_out_set_as_the_artefact_records(home, held_out, head):
    """The held-out numbers in exporter/artefacts/README.md are the device's: `explorer analyze`
    gives the trainer's scores and the same labels over their thresholds."""
    labels, scores = held_out
    for row in head.metrics["test"]["recordings"]:
        windows = scores[stem(row["path"])]
        assert len(windows) == row["windows"], row["path"]
        fired = dict(labels_fired(home, labels, scores, [stem(row["path"])])[stem(row["path"])])
        ours = {label for label in fired if label in head.label_ids}  # the trainer scores the head's labels only
        assert ours == set(row["fired"]), (row["path"], fired, row["fired"])
        for label in ours:
            best = float(windows[:, labels.index(label)].max())
            assert abs(best - row["fired"][label]) <= SCORE_TOLERANCE, (row["path"], label, best)
        if row["label"]:
            best = float(windows[:, labels.index(row["label"])].max())
            assert abs(best - row["score"]) <= SCORE_TOLERANCE, (row["path"], best, row["score"])


def test_the_held_out_cricket_is_named_a_cricket_through_birdnet(home, held_out, head):
    """Gryllus campestris trained nothing and set no threshold: BirdNET's family maximum over its
    four Gryllus species (0.989, its Fall Field Cricket) is what names it; the head alone scores
    0.155 (measured when committed)."""
    labels, scores = held_out
    manifest = read_manifest(home.active_bundle())
    (row,) = [r for r in head.metrics["test"]["recordings"] if r["label"] == "52884"]
    best = float(scores[stem(row["path"])][:, labels.index("52884")].max())
    assert best >= manifest.threshold("52884")
    assert row["birdnet"]["52884"] >= head.birdnet_families["52884"]["birdnet_threshold"]
    assert labels[int(scores[stem(row["path"])].max(axis=0).argmax())] == "52884"  # ranked first of 164


@pytest.mark.xfail(strict=True, reason="issue 10's requirement, not met by the committed bundle: the held-out "
                   "cricket is named (0.974 against 0.203, through BirdNET's Gryllus species), the katydid and "
                   "cicada are not: 0.180 against 0.836 and 0.314 against 0.402 (two training recordings per family "
                   "cannot predict a third species, and BirdNET knows no European katydid and no cicada; see "
                   "exporter/artefacts/README.md). Strict: a bundle that names all three makes this fail, so remove "
                   "the mark.")
def test_held_out_insects_are_named_as_their_family(home, held_out, head):
    labels, scores = held_out
    thresholds = dict(zip(labels, read_manifest(home.active_bundle()).thresholds_array()))
    insects = [row for row in head.training["held_out_test"] if row["label"]]
    assert sorted(row["label"] for row in insects) == ["48124", "50186", "52884"]  # one per family
    missed = {}
    for row in insects:
        best = float(scores[stem(row["path"])][:, labels.index(row["label"])].max())
        if best < thresholds[row["label"]]:
            missed[row["path"]] = (row["label"], round(best, 3), thresholds[row["label"]])
    assert not missed, missed


def test_no_false_label_on_held_out_negatives_but_the_jaguar_on_a_leopard(home, held_out, head):
    """Audio that fitted no threshold: no frog, insect or bird on any of the 14 windows; the
    jaguar on the leopard's roar only. The share of windows with a false label stays within
    the head's out-of-fold rate for out-of-space calls (14 of 146 windows when committed)."""
    labels, scores = held_out
    negatives = [stem(row["path"]) for row in head.training["held_out_test"] if not row["label"]]
    assert len(negatives) == 9
    fired = {name: found for name, found in labels_fired(home, labels, scores, negatives).items() if found}
    assert {name: [label for label, _ in found] for name, found in fired.items()} == \
           {"minetest_sounds_leopard_roar_01": ["41970"]}
    thresholds = np.array(read_manifest(home.active_bundle()).thresholds_array())
    windows = np.concatenate([scores[name] for name in negatives])
    assert len(windows) == 14
    classes = label_classes(home, labels)
    for name in ("Aves", "Amphibia", "Insecta"):
        assert not (windows[:, classes == name] >= thresholds[classes == name]).any(), name
    calls = head.metrics["held_out"]["negatives_by_source"]["call"]
    false = int((windows >= thresholds).any(axis=1).sum())
    assert false / len(windows) <= calls["with_a_false_label"] / calls["windows"], (false, len(windows))
