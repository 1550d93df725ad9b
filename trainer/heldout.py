"""The held-out test set: recordings that train nothing in the committed head.

Cross-validation (trainer.embedding_head) tests each fold head on audio that fold never saw, but
the committed head is refit on everything, and its thresholds are raised above its own scores on
every training negative. So the device's end-to-end test (tests/device/run/test_default_model.py)
needs audio that neither trained the final head nor set a threshold: `HELD_OUT_TEST`, taken out
before training starts, recorded in the artefact (`training.held_out_test`) and scored by the
final head here (`metrics.test`), exactly as the device cuts a file (5 s windows, the last one
zero-padded).

Chosen before any head was trained on them, by kind, not by score: one recording of each insect
family (the other recordings of that family train), and about half of each kind of negative.
Clips from one source are held out together (both leopard calls, both squirrel calls), so no
source is on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from trainer.augment import WINDOW_S, Layer, WindowPlan
from trainer.birdnet_families import embed_and_score
from trainer.embeddings import birdnet_session
from trainer.labelled import LabelledClip, clip_duration

HELD_OUT_TEST: dict[str, str] = {
    "audio/insects/Rthoptera_tettigonia_cantans.flac":
        "Tettigoniidae: Tettigonia cantans (Italy, C. Brizio); Coryphoda albidicollis and Platycleis grisea train",
    "audio/insects/Rthoptera_gryllus_campestris_XC753101.flac":
        "Gryllidae: Gryllus campestris (Italy, C. Brizio); Eumodicogryllus bordigalensis and the freesound "
        "cricket train",
    "audio/insects/minetest_sounds_cicada_01.ogg":
        "Cicadidae: a freesound cicada (InspectorJ); Magicicada neotredecim and five other freesound cicadas train",
    "audio/negatives/minetest_sounds_rain_medium.ogg": "rain: 1 of 3 (heavy and light rain train)",
    "audio/negatives/minetest_sounds_thunder_01.ogg": "thunder: the only one",
    "audio/negatives/minetest_sounds_bumble_bee_01.ogg": "bees: 1 of 2 (the honey bee trains)",
    "audio/negatives/minetest_sounds_leopard_saw_01.ogg":
        "big cats: the leopard's saw call, the jaguar's nearest confuser (the tiger trains)",
    "audio/negatives/minetest_sounds_leopard_roar_01.ogg": "big cats: the leopard's roar (same source as its saw)",
    "audio/negatives/minetest_sounds_squirrel_01.ogg": "squirrel (one source, both its clips held out)",
    "audio/negatives/minetest_sounds_squirrel_02.ogg": "squirrel (same source as squirrel_01)",
    "audio/negatives/minetest_sounds_bat_01.ogg": "bat: the only one",
    "audio/negatives/minetest_sounds_grasshopper.ogg":
        "grasshoppers: 1 of 2 (the meadow grasshopper, which named a frog on the previous head, trains)",
}
"""path (relative to the shared data) -> why it is held out. Wind, water, the scaly cricket, the
tiger, the gorilla and human speech train (one recording each): a head never told that speech or
wind is not a frog would learn it from the forest only."""


def relative_path(path) -> str:
    """A shared-data path without the machine-specific prefix (as the artefact stores paths)."""
    return str(path).split("/shared/data/", 1)[-1]


def split_held_out(clips: list[LabelledClip], held: Mapping[str, str] = HELD_OUT_TEST
                   ) -> tuple[list[LabelledClip], list[LabelledClip]]:
    """(clips that train, held-out clips), by the relative paths in `held`.

    Raises:
        ValueError: a held-out path is not among the clips (the list and the data disagree), or
            a held-out clip shares its group with a clip that trains (its source would be on
            both sides).
    """
    wanted = set(held)
    found = {relative_path(c.path) for c in clips} & wanted
    if found != wanted:
        raise ValueError(f"held-out recordings not among the clips: {sorted(wanted - found)}")
    test = [c for c in clips if relative_path(c.path) in wanted]
    train = [c for c in clips if relative_path(c.path) not in wanted]
    shared = {c.group_id for c in test} & {c.group_id for c in train}
    if shared:
        raise ValueError(f"held-out recordings share a source with training ones: {sorted(shared)}")
    return train, test


def device_plans(clips: list[LabelledClip], durations: list[float]) -> list[WindowPlan]:
    """Every window the device cuts from each clip: 5 s apart from 0, the last one zero-padded."""
    plans = []
    for i, (clip, duration) in enumerate(zip(clips, durations)):
        labels = (clip.label,) if clip.label else ()
        for start in np.arange(0.0, max(duration, 1e-3), WINDOW_S):
            plans.append(WindowPlan("clean", labels, (Layer(i, float(start), min(WINDOW_S, duration - start), 0.0),)))
    return plans


def evaluate_test(head, clips: list[LabelledClip], cache_dir: Path, threads: int = 1) -> dict:
    """The final head on the held-out recordings, window by window as the device scores them.

    Scores are the bundle's (`EmbeddingHead.combined_scores`): for the labels with a BirdNET
    family source, the larger of the head's and BirdNET's shifted score.

    Returns:
        {"recordings": [{path, label, windows, score (best of its own label), detected, fired,
        birdnet}], "negative_windows", "negative_windows_with_a_label"}; `fired` maps each label
        crossing its threshold in some window to its best score, `birdnet` each family label
        with a BirdNET source to BirdNET's best family score (unshifted).
    """
    if not clips:
        return {"recordings": [], "negative_windows": 0, "negative_windows_with_a_label": 0}
    plans = device_plans(clips, [clip_duration(c) for c in clips])
    session, model_id = birdnet_session(Path(cache_dir), threads)
    families = {label: row["species"] for label, row in head.birdnet_families.items()}
    x, birdnet = embed_and_score(plans, clips, session, Path(cache_dir), model_id, families, lambda line: None)
    scores = head.combined_scores(x, birdnet)
    fired = scores >= head.thresholds
    owner = np.array([plan.layers[0].clip for plan in plans])
    rows = []
    for i, clip in enumerate(clips):
        mine = owner == i
        best = scores[mine].max(axis=0)
        row = {"path": relative_path(clip.path), "label": clip.label, "windows": int(mine.sum()),
               "fired": {head.label_ids[j]: round(float(best[j]), 4) for j in np.flatnonzero(fired[mine].any(axis=0))},
               "birdnet": {label: round(float(birdnet[mine, f].max()), 4) for f, label in enumerate(families)}}
        if clip.label:
            j = head.label_ids.index(clip.label)
            row.update(score=round(float(best[j]), 4), detected=bool(fired[mine, j].any()))
        rows.append(row)
    negative = np.array([not plan.labels for plan in plans])
    return {"recordings": rows, "negative_windows": int(negative.sum()),
            "negative_windows_with_a_label": int(fired[negative].any(axis=1).sum())}
