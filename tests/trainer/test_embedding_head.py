"""The embedding head trains on the shared recordings and holds up on audio it never trained on.

The training run here is the real routine on the real recordings (both lists, less the held-out
test set, as the CLI trains) with a lighter augmentation budget (fewer mixes, a 2 s hop over
calls, two padded tails per negative) so it takes about a minute; the committed artefact uses
the defaults. Bars are set well below what both measure (see exporter/artefacts/README.md) and
far above chance (1 of 19 labels). The insects are the exception: held out by recording they are
barely found (2 of 10 recording parts in both runs), and the bars below say so rather than hide it;
BirdNET's own crickets and katydids, the second source of Gryllidae and Tettigoniidae, find none
of the training insects either (other species than it knows) and add no false positive out of
fold (`test_birdnets_family_scores_get_their_own_out_of_fold_thresholds`).

The committed artefact's own metrics are recomputed from the recordings where that fits in the
test's time: its clips and folds, and everything the committed weights give on the 959 clean
device windows (`test_the_committed_head_scores_the_recordings_as_it_says`). Its held-out
metrics need the full run with the default augmentation (2,239 windows through BirdNET and four
fits, ~3 minutes on the 2-core machine): `python -m trainer.embedding_head --data ../shared/data
--out /tmp/head.npz` reproduces them. Here they are checked for consistency with their own
per-label and per-recording rows.
"""

from __future__ import annotations

import csv
import re
from dataclasses import replace

import numpy as np
import pytest

from exporter.birdnet.convert import find_birdnet_file, sha256_file
from exporter.default_bundle import ARTEFACT
from exporter.manifest_builder import labels_from_taxonomy
from trainer.augment import plan_clean, plan_mixes
from exporter.head_artefacts import shift
from trainer.birdnet_families import FAMILY_GENERA, embed_and_score
from trainer.embeddings import EmbeddingCache, birdnet_session, embed_plans
from trainer.heldout import HELD_OUT_TEST, split_held_out
from trainer.labelled import (
    NOT_SAFE_NEGATIVES, assign_folds, chunk_negatives, clip_duration, clips_from_recordings, read_labelled_list,
    split_single_recordings,
)
from trainer.embedding_head import (
    KNOWN_NEGATIVE_MARGIN, THRESHOLD_RANGE, Config, EmbeddingHead, _held_out_recordings, _relative, _sources, evaluate,
    fold_split, train, window_targets,
)
from trainer.support import training_support

LIGHT = Config(hop_positive_s=2.0, mixes_per_positive_group=8, mixes_per_negative_clip=1, tails_s=(0.1, 1.0))
ALLOBATES = "21211"
INSECTS = {"48124": "Tettigoniidae", "52884": "Gryllidae", "50186": "Cicadidae"}
MAMMALS = {"41970": "Panthera onca", "41663": "Procyon lotor"}


def head_clips(shared_data):
    """The clips the trainer's CLI trains on: both recording lists, the Little Tinamou a negative
    (it is BirdNET's), the held-out test set taken out."""
    clips = [replace(c, label=None) if c.label == "littin1" else c for c in clips_from_recordings(shared_data)]
    return split_held_out(clips)[0]


def head_labels(shared_data, clips):
    return labels_from_taxonomy(shared_data / "taxonomy.csv", {c.label for c in clips if c.label})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="module")
def trained(shared_data, cache):
    clips = head_clips(shared_data)
    log: list[str] = []
    return train(clips, head_labels(shared_data, clips), LIGHT, cache_dir=cache, log=log.append), log


def test_held_out_metrics_beat_the_bar(trained):
    head, _ = trained
    held = head.metrics["held_out"]
    # Measured with this configuration: 39/43 held-out recording parts rank their label first,
    # 33/43 detected, macro clean recall 0.79, macro ROC AUC 0.964, 1/88 soundscape windows and
    # 6/81 out-of-space call windows with a false label. Chance top-1 is 1/19.
    assert len(held["recordings"]) == 43  # 29 frog parts, 10 insect recordings, 4 mammal halves
    assert held["recordings_top1"] >= 32
    assert held["recordings_detected"] >= 25
    assert held["macro_clean_recall"] >= 0.6
    assert held["macro_roc_auc"] >= 0.93
    soundscape = held["negatives_by_source"]["soundscape"]
    assert soundscape["with_a_false_label"] <= 0.05 * soundscape["windows"]
    calls = held["negatives_by_source"]["call"]
    assert calls["with_a_false_label"] <= 0.25 * calls["windows"]


def test_per_class_results_are_reported_and_the_frogs_hold(trained):
    """Measured: Amphibia 27/29 parts detected, clean recall 0.92; Insecta 2/10, clean recall 0.07
    (one family's recordings do not predict another species of it); Mammalia 4/4 (halves of one
    clip each: weak). No class names itself on more than 5 % of the windows holding none of it."""
    head, _ = trained
    per_class = head.metrics["held_out"]["per_class"]
    assert set(per_class) == {"Amphibia", "Insecta", "Mammalia"}
    assert [per_class[name]["labels"] for name in ("Amphibia", "Insecta", "Mammalia")] == [14, 3, 2]
    assert per_class["Amphibia"]["recordings_detected"] >= 22 and per_class["Amphibia"]["macro_clean_recall"] >= 0.75
    assert per_class["Insecta"]["recordings"] == 10 and per_class["Mammalia"]["recordings"] == 4
    for name, row in per_class.items():
        assert row["other_windows_with_a_false_label"] <= 0.05 * row["other_windows"], name


def test_birdnets_family_scores_get_their_own_out_of_fold_thresholds(trained):
    """Gryllidae and Tettigoniidae: BirdNET's family maximum over its own species gets a threshold
    by the head's rule on the same out-of-fold windows; its odds shift puts that threshold on the
    head's, and the label's threshold is refitted on the combined score (never below the head's).
    Measured with this configuration: no training positive is found by BirdNET (its crickets score
    0.30 on E. bordigalensis, its katydids 0.05 on Platycleis grisea) and it adds no false
    positive out of fold."""
    head, _ = trained
    families = head.birdnet_families
    assert list(families) == ["48124", "52884"]
    for label, row in families.items():
        assert {name.split()[0] for name in row["species"]} == set(FAMILY_GENERA[label])
        assert shift(row["birdnet_threshold"], row["odds_factor"]) == pytest.approx(row["head_threshold"], abs=1e-6)
        threshold = head.thresholds[head.label_ids.index(label)]
        assert row["head_threshold"] - 1e-6 <= threshold <= THRESHOLD_RANGE[1]
        assert THRESHOLD_RANGE[0] <= row["birdnet_threshold"] <= THRESHOLD_RANGE[1]
        report = head.metrics["birdnet_families"][label]
        false = report["false_positives"]
        assert false["birdnet"] <= 0.01 * false["negative_windows"], (label, false)
        assert false["combined"] <= false["head"] + false["birdnet"]
        listed = [r["birdnet"] for r in report["negative_recordings"]]
        assert listed and listed == sorted(listed, reverse=True)
    assert len(families["52884"]["species"]) == 4 and len(families["48124"]["species"]) == 18


def test_allobates_femoralis_is_validated_leave_one_recording_out(trained):
    head, _ = trained
    clips = [c for c in head.training["clips"] if c["label"] == ALLOBATES]
    assert sorted(c["fold"] for c in clips) == [0, 1, 2]  # three recordings, each held out once
    row = head.metrics["held_out"]["per_label"][ALLOBATES]
    assert row["clean_windows"] >= 60
    assert row["clean_recall"] >= 0.8  # measured 0.90 on recordings it never trained on


def test_single_source_labels_are_held_out_in_time_disjoint_halves(trained):
    """13 frogs, the jaguar (one clip) and the raccoon (three clips of one video: one source)."""
    head, _ = trained
    by_label: dict[str, list[dict]] = {}
    for clip in head.training["clips"]:
        if clip["label"]:
            by_label.setdefault(clip["label"], []).append(clip)
    single = {label for label, rows in by_label.items() if all("#part" in row["group"] for row in rows)}
    assert single == set(by_label) - {ALLOBATES, *INSECTS} and len(single) == 15
    for label in single:
        rows = by_label[label]
        for path in {row["path"] for row in rows}:
            first, second = sorted((row for row in rows if row["path"] == path), key=lambda row: row["start_s"])
            assert first["end_s"] <= second["start_s"] and first["fold"] != second["fold"], (label, path)
    raccoon = by_label["41663"]
    assert len({row["path"] for row in raccoon}) == 3 and len({row["group"] for row in raccoon}) == 2


def test_clips_of_one_source_are_one_group(shared_data):
    """The licence column names a clip's source; clips cut from one video or upload are held out together."""
    groups: dict[str, set[str]] = {}
    for clip in clips_from_recordings(shared_data):
        groups.setdefault(clip.group_id, set()).add(_relative(clip.path).rsplit("/", 1)[1])
    shared = sorted(sorted(names) for names in groups.values() if len(names) > 1)
    assert shared == [
        ["minetest_sounds_leopard_roar_01.ogg", "minetest_sounds_leopard_saw_01.ogg"],
        ["minetest_sounds_raccoon_chatter.ogg", "minetest_sounds_raccoon_chatter_baby_01.ogg",
         "minetest_sounds_raccoon_chatter_baby_02.ogg"],
        ["minetest_sounds_squirrel_01.ogg", "minetest_sounds_squirrel_02.ogg"],
    ]
    # A catalogue number is no source address: the four Long-billed Hermit files stay apart.
    assert sum("Phae.long" in next(iter(names)) for names in groups.values()) == 4


def test_the_held_out_test_set_keeps_sources_whole(shared_data):
    clips = clips_from_recordings(shared_data)
    train_clips, test = split_held_out(clips)
    assert {_relative(c.path) for c in test} == set(HELD_OUT_TEST) and len(test) == 12
    assert {c.label for c in test} == {*INSECTS, None}
    with pytest.raises(ValueError, match="share a source"):
        split_held_out(clips, {"audio/negatives/minetest_sounds_leopard_saw_01.ogg": "half a source"})
    with pytest.raises(ValueError, match="not among the clips"):
        split_held_out(clips, {"audio/negatives/no_such_file.ogg": "missing"})


def test_rows_whose_species_is_in_a_family_label_are_no_insect_negatives(shared_data):
    """orni.wav (a cicada) and pellucens.wav (a tree cricket) keep their row's no-label, so they
    train no family, and are unknown (not 0) for the insect labels, 0 for the rest."""
    clips = head_clips(shared_data)
    labels = head_labels(shared_data, clips)
    chosen = [c for c in clips if _relative(c.path) in NOT_SAFE_NEGATIVES]
    assert len(chosen) == 2 and all(c.label is None for c in chosen)
    plans = plan_clean(chosen, [clip_duration(c) for c in chosen], 1.0, 5.0, ())
    y = window_targets(plans, chosen, labels)
    insect = np.array([label["class_name"] == "Insecta" for label in labels])
    assert np.isnan(y[:, insect]).all() and (y[:, ~insect] == 0).all()


def test_no_audio_trains_and_is_held_out_in_the_same_fold(shared_data):
    clips = chunk_negatives(split_single_recordings(head_clips(shared_data)))
    durations = [clip_duration(c) for c in clips]
    fold_of = assign_folds(clips, 3)
    plans = plan_clean(clips, durations, 2.0, 5.0) + plan_mixes(clips, durations, 8, 1)
    groups = [plan.groups(clips) for plan in plans]
    for fold in range(3):
        train_mask, held_mask = fold_split(groups, fold_of, fold)
        trained_groups = set().union(*(g for g, t in zip(groups, train_mask) if t))
        held_groups = set().union(*(g for g, h in zip(groups, held_mask) if h))
        assert held_groups and not trained_groups & held_groups
        assert any(p.kind == "mix" for p, h in zip(plans, held_mask) if h)


def test_embeddings_are_cached_on_disk(trained, shared_data, cache):
    _, log = trained
    # A cold cache: every window computed, bar the rare one planned twice (a file-end tail that
    # coincides with the last grid window is the same audio, so it is read back, not recomputed).
    (line,) = [line for line in log if line.startswith("embeddings: ") and "from the cache" in line]
    windows, computed = (int(word) for word in re.match(r"embeddings: (\d+) windows, (\d+) computed", line).groups())
    assert computed >= 0.99 * windows, line
    clips = head_clips(shared_data)[:2]
    plans = plan_clean(clips, [clip_duration(c) for c in clips], 2.0, 5.0, ())
    session, model_id = birdnet_session(cache)
    again: list[str] = []
    first = embed_plans(plans, clips, session, EmbeddingCache(cache, model_id), again.append)
    assert f"0 computed, {len(plans)} from the cache" in again[-1]
    assert first.shape == (len(plans), 1024) and np.isfinite(first).all() and first.any(axis=1).all()


def test_a_generic_labelled_list_is_read_with_times_groups_and_backgrounds(tmp_path, shared_data):
    listing = tmp_path / "confirmed.csv"
    audio = shared_data / "audio/birdclef_train_audio/2.ogg"
    listing.write_text(
        "path,label,start_s,end_s,group,background\n"
        f"{audio},21211,3.5,9,guide-a,\n"
        f"{shared_data / 'audio/elsilencio_soundscape/H02_20230420_074000.ogg'},,,,,yes\n"
    )
    first, second = read_labelled_list(listing)
    assert (first.label, first.start_s, first.end_s, first.group_id) == ("21211", 3.5, 9.0, "guide-a")
    assert second.label is None and second.background and second.end_s is None
    listing.write_text(f"path,label,start_s,end_s\n{audio},21211,9,3\n")
    with pytest.raises(ValueError, match=r"confirmed.csv:2: end_s 3.0 is not after start_s 9.0"):
        read_labelled_list(listing)
    listing.write_text("file,species\nx.wav,21211\n")
    with pytest.raises(ValueError, match=r"missing columns \['label', 'path'\]"):
        read_labelled_list(listing)


def test_a_missing_recording_list_is_refused_by_name(tmp_path):
    (tmp_path / "recordings.csv").write_text("path,primary_label,in_label_space,license,source_repo\n")
    with pytest.raises(FileNotFoundError, match="recordings_more.csv: recording list missing"):
        clips_from_recordings(tmp_path)


def test_the_committed_artefact_is_small_and_was_trained_by_this_code(shared_data, cache):
    assert ARTEFACT.stat().st_size < 300_000
    head = EmbeddingHead.load(ARTEFACT)
    rows = [r for name in ("recordings.csv", "recordings_more.csv")
            for r in csv.DictReader(open(shared_data / name, newline=""))]
    in_space = {r["primary_label"] for r in rows if r["in_label_space"] == "yes"} - {"littin1"}
    assert set(head.label_ids) == in_space and len(in_space) == 19
    classes = {label["primary_label"]: label["class_name"] for label in head.labels}
    assert {lid for lid, c in classes.items() if c == "Insecta"} == set(INSECTS)
    assert {lid for lid, c in classes.items() if c == "Mammalia"} == set(MAMMALS)
    assert head.training["left_to_birdnet"] == ["littin1"]
    assert len(head.site) == 206 and head.weights.shape == (1024, 19)
    assert head.training["config"] == {k: list(v) if isinstance(v, tuple) else v for k, v in Config().__dict__.items()}
    assert head.training["birdnet_tflite_sha256_16"] == sha256_file(find_birdnet_file())[:16]
    # ... and on the graph the bundle ships: a change of the converter needs a retrained head
    assert head.training["birdnet_onnx_sha256_12"] == birdnet_session(cache)[1].split("-")[1]
    assert ((head.thresholds >= 0.2) & (head.thresholds <= 0.9)).all()
    assert head.calibration[0] > 0
    held = head.metrics["held_out"]
    assert held["recordings_top1"] >= 32 and held["macro_roc_auc"] >= 0.93


def test_the_held_out_test_set_trained_nothing_and_is_scored_in_the_artefact(committed):
    listed = committed.training["held_out_test"]
    assert sorted(row["path"] for row in listed) == sorted(HELD_OUT_TEST)
    trained_on = {row["path"] for row in committed.training["clips"]}
    assert not trained_on & set(HELD_OUT_TEST)
    assert not {row["group"] for row in committed.training["clips"]} & {row["group"] for row in listed}
    test = committed.metrics["test"]
    assert [row["path"] for row in test["recordings"]] == [row["path"] for row in listed]
    assert test["negative_windows"] == 14


def test_training_support_counts_independent_recordings(committed, shared_data):
    """What the manifest tells a researcher: the artefact's counts follow from the training clips."""
    clips = head_clips(shared_data)
    support = committed.training["support"]
    assert support == training_support(clips, committed.labels)
    assert (support["41970"]["recordings"], support["41970"]["seconds"]) == (1, 1.39)
    assert support["41663"]["recordings"] == 1 and "one video" in support["41663"]["note"]
    assert [support[lid]["recordings"] for lid in INSECTS] == [2, 2, 6]  # one of each family held out
    assert support[ALLOBATES]["recordings"] == 3
    assert all(support[lid]["note"].startswith("family level") for lid in ("48124", "50186"))
    assert support["48124"]["sources"] == ["Rthoptera R package (F. Rivas Fuenzalida, C. Brizio / xeno-canto)"]


SCORE_TOLERANCE = 1e-4
"""The artefact rounds recording scores to 4 decimals (5e-5); the rest allows for another CPU's
float32 kernels in BirdNET (measured here: every score equal to the 4th decimal)."""
THRESHOLD_TOLERANCE = 1e-5
"""A threshold the known-negative rule sets is one score plus the margin: recomputed here within
2.4e-7 (float32 embedding rounding); 40x that for another machine."""
SET_BY_KNOWN_NEGATIVES = {
    "21038": "C. inguinalis: the BirdCLEF SampleAudio recording, 10-15 s (0.875)",
    "41663": "P. lotor: the Boana punctata frog recording, 5-10 s (0.705)",
    "48124": "Tettigoniidae: the meadow grasshopper, through BirdNET's katydids (0.276 -> 0.826 combined)",
    "52884": "Gryllidae: the scaly cricket, through BirdNET's crickets (0.372 -> 0.193 combined; the head alone 0.2)",
    "65547": "H. tatayoi: a 0.6 s padded tail of the Leucostethus brachistriatus recording (0.402)",
}
"""Labels whose committed threshold is the final head's (for the two families: the combined) best
score on a negative recording plus KNOWN_NEGATIVE_MARGIN (every other label's comes from the
held-out quantile, above that)."""


@pytest.fixture(scope="module")
def committed() -> EmbeddingHead:
    return EmbeddingHead.load(ARTEFACT)


def committed_clips(shared_data):
    """The clips the trainer's CLI makes from the recording lists, as the artefact records them."""
    clips = chunk_negatives(split_single_recordings(head_clips(shared_data)))
    return clips, assign_folds(clips, Config().folds)


def test_the_committed_head_was_trained_on_these_clips_and_folds(committed, shared_data):
    clips, fold_of = committed_clips(shared_data)
    rows = [{"path": _relative(c.path), "label": c.label, "start_s": c.start_s, "end_s": c.end_s,
             "group": _relative(c.group_id), "fold": fold_of[c.group_id], "background": c.background,
             "license": c.license, "source": c.source} for c in clips]
    assert rows == committed.training["clips"]
    # both lists less birdclef_train_audio/1.ogg (species unknown) and the 12 held-out recordings
    assert len({row["path"] for row in rows}) == 69 + 36 - 12


def test_the_committed_head_scores_the_recordings_as_it_says(committed, shared_data, cache, trained):
    """The committed weights on every clean device window of its training clips (the trainer's own
    planning, embedding and evaluation) give the in-sample metrics and known-negative thresholds
    the artefact stores. `trained` first: its cache already holds about half of these windows."""
    clips, _ = committed_clips(shared_data)
    config = Config()
    plans = plan_clean(clips, [clip_duration(c) for c in clips], config.hop_positive_s, config.hop_negative_s,
                       config.tails_s)
    session, model_id = birdnet_session(cache)
    families = {label: row["species"] for label, row in committed.birdnet_families.items()}
    x, birdnet = embed_and_score(plans, clips, session, cache, model_id, families, lambda line: None)
    scores = committed.combined_scores(x.astype(np.float64), birdnet)
    labels = committed.label_ids
    targets = window_targets(plans, clips, committed.labels)
    recordings = _held_out_recordings(plans, clips, np.ones(len(plans), bool))
    ours = evaluate(scores, targets, np.array([p.kind for p in plans]), _sources(plans, clips), committed.thresholds,
                    labels, recordings)
    stored = committed.metrics["train"]
    assert len(ours["recordings"]) == len(stored["recordings"]) == 43
    for mine, theirs in zip(ours["recordings"], stored["recordings"]):
        assert {k: mine[k] for k in ("group", "label", "top1", "detected")} == \
               {k: theirs[k] for k in ("group", "label", "top1", "detected")}
        assert abs(mine["score"] - theirs["score"]) <= SCORE_TOLERANCE, (mine, theirs)
    for label in labels:
        for key in ("clean_windows", "clean_recall"):
            assert ours["per_label"][label][key] == stored["per_label"][label][key], (label, key)
    for source in ("call (padded)", "soundscape (padded)"):  # kinds made of clean windows only
        assert ours["negatives_by_source"][source] == stored["negatives_by_source"][source]

    negatives = ~(targets > 0).any(axis=1)
    known = np.where(targets[negatives] == 0, scores[negatives], -np.inf).max(axis=0) + KNOWN_NEGATIVE_MARGIN
    assert (committed.thresholds >= np.clip(known, *THRESHOLD_RANGE) - THRESHOLD_TOLERANCE).all()
    bound = {label for label, t, k in zip(labels, committed.thresholds, known) if abs(t - k) <= THRESHOLD_TOLERANCE}
    assert bound == set(SET_BY_KNOWN_NEGATIVES)
    # BirdNET's own family thresholds: both set by its best score on a negative recording (BirdNET
    # trained on none of this audio, so every training window is out of its sample)
    for f, (label, row) in enumerate(committed.birdnet_families.items()):
        j = labels.index(label)
        best = np.where(targets[negatives, j] == 0, birdnet[negatives, f], -np.inf).max()
        assert abs(row["birdnet_threshold"] - (best + KNOWN_NEGATIVE_MARGIN)) <= THRESHOLD_TOLERANCE, (label, best)


def test_the_committed_held_out_summary_follows_from_its_rows(committed):
    held = committed.metrics["held_out"]
    rows, parts = held["per_label"], held["recordings"]
    assert list(rows) == committed.label_ids
    assert held["recordings_top1"] == sum(p["top1"] for p in parts) == 39
    assert held["recordings_detected"] == sum(p["detected"] for p in parts) == 32
    for key, macro in (("clean_recall", "macro_clean_recall"), ("mix_recall", "macro_mix_recall"),
                       ("roc_auc", "macro_roc_auc")):
        assert held[macro] == pytest.approx(np.mean([row[key] for row in rows.values()]), abs=1e-12)
    classes = {label["primary_label"]: label["class_name"] for label in committed.labels}
    for name, row in held["per_class"].items():
        mine = [p for p in parts if classes[p["label"]] == name]
        assert row["recordings"] == len(mine) and row["recordings_detected"] == sum(p["detected"] for p in mine)
    assert [row["threshold"] for row in rows.values()] == [round(float(t), 4) for t in committed.thresholds]
    assert held["windows"] == committed.training["windows"]["held_out"] == 1380


def test_a_file_that_is_not_a_head_is_refused_by_name(tmp_path):
    bogus = tmp_path / "head.npz"
    np.savez(bogus, weights=np.zeros(3))
    with pytest.raises(ValueError, match="head.npz: not an embedding-head artefact"):
        EmbeddingHead.load(bogus)
