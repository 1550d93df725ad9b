"""BirdNET V2.4's own crickets and katydids as a second source for two family labels.

BirdNET V2.4 names four *Gryllus* species and eighteen Tettigoniidae species of North America
(and no cicada). Held out by recording, the embedding head cannot tell a new cricket or katydid
species from the two recordings per family it trains on; BirdNET's Fall Field Cricket, trained
on many recordings, scores 0.99 on the held-out *Gryllus campestris*. So Gryllidae `52884` and
Tettigoniidae `48124` get a BirdNET score too: the family maximum of BirdNET's probabilities
over those species, computed exactly as the device computes it (per 3 s crop: sigmoid of each
species' logit, the family maximum; then the maximum over the window's crops, as the engine
max-pools every BirdNET score; max commutes, so it is also the max over species of the pooled
species probabilities).

How it is combined with the head (`combine`): each source keeps its own calibration and gets
its own threshold, fitted the same way out of fold (trainer.embedding_head); BirdNET's score is
then moved in logit space so that its threshold lands on the head's, and the label takes the
larger of the two. The label is named when either source passes its own threshold, and a
BirdNET score above its threshold stays ordered as BirdNET ordered it. A fitted combination
(the BirdNET family logit as a feature of a logistic fit) was not used: the training positives
are other species than BirdNET knows (*E. bordigalensis*, *Platycleis grisea*, ...), on which
BirdNET scores low, so a fit would learn to ignore exactly the evidence wanted for a held-out
*Gryllus*.

Only genera whose every species is in the family by any current classification are used:
*Oecanthus* (tree crickets, Oecanthidae in the Orthoptera Species File, Gryllidae in
iNaturalist) and *Orocharis* are left out, as the brief of issue 10 asks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from pathlib import Path

import numpy as np

from device.audio.resample import resample
from device.engine.engine import make_crops
from exporter.head_artefacts import combine
from device.engine.session import activate
from trainer.augment import MODEL_RATE_HZ, AudioStore, WindowPlan
from trainer.embeddings import CROP_SAMPLES, EmbeddingCache
from trainer.labelled import LabelledClip

FAMILY_GENERA: dict[str, tuple[str, ...]] = {
    "52884": ("Gryllus",),
    "48124": ("Amblycorypha", "Conocephalus", "Microcentrum", "Neoconocephalus", "Orchelimum", "Pterophylla",
              "Scudderia"),
}
"""Family label -> BirdNET V2.4 genera whose species all belong to it (Gryllidae, Tettigoniidae)."""
SPECIES_RECIPE = "birdnet-species-v1"
"""Bump when `window_species_scores` changes: cached scores of another recipe are not reused."""


def family_species(birdnet_labels, genera: Mapping[str, Sequence[str]] = FAMILY_GENERA) -> dict[str, list[str]]:
    """Family label -> the scientific names of BirdNET's species in those genera (BirdNET's order).

    Args:
        birdnet_labels: `exporter.birdnet.labels.read_birdnet_labels()`.

    Raises:
        ValueError: a genus has no BirdNET species (a different BirdNET would silently drop it).
    """
    out = {}
    for family, names in genera.items():
        species = []
        for genus in names:
            found = [label.scientific_name for label in birdnet_labels if label.scientific_name.split(" ")[0] == genus]
            if not found:
                raise ValueError(f"BirdNET's labels hold no species of the genus {genus!r} (family label {family})")
            species += found
        out[family] = species
    return out


def window_species_scores(session, samples: np.ndarray, rate: int, indices: Sequence[int],
                          valid: int | None = None) -> np.ndarray:
    """BirdNET's probability of each species in `indices` on one analysis window, max over crops,
    as the device computes its branch scores (same resampling, crops and float32 sigmoid)."""
    valid = len(samples) if valid is None else valid
    audio = resample(samples, rate, MODEL_RATE_HZ)
    crops = make_crops(audio, CROP_SAMPLES, round(valid * MODEL_RATE_HZ / rate))
    logits = session.run(["logits"], {"waveform": crops})[0][:, list(indices)]
    return activate(logits, "sigmoid").max(axis=0)


class SpeciesCache(EmbeddingCache):
    """The embedding cache's keys (window plan, audio hash, model), under its own folder per
    species list."""

    def __init__(self, root: Path, model_id: str, indices: Sequence[int]):
        super().__init__(root, model_id)
        tag = hashlib.sha256(json.dumps(list(map(int, indices))).encode()).hexdigest()[:12]
        self.root = Path(root) / f"{SPECIES_RECIPE}-{model_id}-{tag}"


def embed_and_score(plans: list[WindowPlan], clips: list[LabelledClip], session, cache_root: Path, model_id: str,
                    families: Mapping[str, Sequence[str]], log: Callable[[str], None] = print
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """([windows, 1024] embeddings, [windows, families] BirdNET family scores or None without families).

    One BirdNET run per window for both (its `embedding` and `logits` come out of the same pass):
    what is in the caches is read back, the rest rendered once and computed together. Embeddings
    are exactly `trainer.embeddings.device_embedding`'s.
    """
    from exporter.birdnet.labels import read_birdnet_labels, species_indices
    from trainer.embeddings import embed_plans

    embeddings = EmbeddingCache(Path(cache_root), model_id)
    if not families:
        return embed_plans(plans, clips, session, embeddings, log), None
    names, columns = family_columns(families)
    indices = species_indices(read_birdnet_labels(), names)
    species_cache = SpeciesCache(Path(cache_root), model_id, indices)
    store = AudioStore(clips)
    x = np.zeros((len(plans), 1024), np.float32)
    species = np.zeros((len(plans), len(indices)), np.float32)
    computed = 0
    for i, plan in enumerate(plans):
        key = embeddings.key(plan, clips)
        paths = embeddings.path(key), species_cache.path(key)
        if all(path.is_file() for path in paths):
            x[i], species[i] = np.load(paths[0]), np.load(paths[1])
            continue
        if plan.kind == "clean":
            samples, rate, valid = store.clean(plan)
        else:
            samples, rate, valid = store.mix(plan), MODEL_RATE_HZ, None
        valid = len(samples) if valid is None else valid
        crops = make_crops(resample(samples, rate, MODEL_RATE_HZ), CROP_SAMPLES, round(valid * MODEL_RATE_HZ / rate))
        embedding, logits = session.run(["embedding", "logits"], {"waveform": crops})
        x[i], species[i] = embedding.mean(axis=0), activate(logits[:, indices], "sigmoid").max(axis=0)
        for path, value in zip(paths, (x[i], species[i])):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as handle:
                np.save(handle, value)
            tmp.replace(path)
        computed += 1
    log(f"embeddings: {len(plans)} windows, {computed} computed, {len(plans) - computed} from the cache "
        f"(with BirdNET's {len(indices)} cricket and katydid species)")
    return x, family_scores(species, columns)


def family_scores(species: np.ndarray, columns: Sequence[Sequence[int]]) -> np.ndarray:
    """[windows, families]: per family, the maximum of its species' columns of `species`."""
    return np.stack([np.asarray(species)[:, list(cols)].max(axis=1) for cols in columns], axis=1)


def odds_factor(head_threshold: float, birdnet_threshold: float) -> float:
    """k such that `shift(birdnet_threshold, k) == head_threshold`: the ratio of their odds."""
    return float(head_threshold / (1 - head_threshold) / (birdnet_threshold / (1 - birdnet_threshold)))


def family_columns(families: Mapping[str, Sequence[str]]) -> tuple[list[str], list[list[int]]]:
    """(every species name, family after family; each family's columns in that list)."""
    names, columns = [], []
    for species in families.values():
        columns.append(list(range(len(names), len(names) + len(species))))
        names += list(species)
    return names, columns


REPORTED_NEGATIVES = 6
"""Negative recordings listed per family in the report: those BirdNET's family score rates highest."""


def family_report(families: Mapping[str, Mapping], label_ids: list[str], thresholds: np.ndarray,
                  head: np.ndarray, birdnet: np.ndarray, targets: np.ndarray, kinds: np.ndarray,
                  recordings: list[str]) -> dict[str, dict]:
    """Out of fold, what each source adds for each family label (the artefact's `metrics.birdnet_families`).

    Args:
        families: `EmbeddingHead.birdnet_families` (its thresholds and odds factors).
        head: [windows, labels] the head's own out-of-fold calibrated scores; birdnet [windows,
            families]; targets, kinds ("clean"/"mix") and, per window, its recording (the clip
            under a clean window; "" for a mix): all over the held-out windows.

    Returns:
        label -> {"clean_recall"/"mix_recall": {head, birdnet, combined}, "false_positives":
        {head, birdnet, combined, negative_windows}, "negative_recordings": [{path, birdnet,
        combined, windows}] for the clean windows of the negatives BirdNET rates highest}.
    """
    recordings = np.asarray(recordings)
    out = {}
    for f, (label, row) in enumerate(families.items()):
        j = label_ids.index(label)
        both = combine(head[:, j], birdnet[:, f], row["odds_factor"])
        fired = {"head": head[:, j] >= row["head_threshold"], "birdnet": birdnet[:, f] >= row["birdnet_threshold"],
                 "combined": both >= thresholds[j]}
        positive, negative = targets[:, j] > 0, targets[:, j] == 0
        report: dict[str, Any] = {}
        for kind in ("clean", "mix"):
            mask = positive & (kinds == kind)
            report[f"{kind}_recall"] = {name: float(hit[mask].mean()) if mask.any() else None
                                        for name, hit in fired.items()}
        report["false_positives"] = {name: int((hit & negative).sum()) for name, hit in fired.items()}
        report["false_positives"]["negative_windows"] = int(negative.sum())
        rows = []
        for path in sorted(set(recordings[negative & (kinds == "clean")]) - {""}):
            mask = negative & (kinds == "clean") & (recordings == path)
            rows.append({"path": path, "windows": int(mask.sum()), "birdnet": round(float(birdnet[mask, f].max()), 4),
                         "combined": round(float(both[mask].max()), 4)})
        rows.sort(key=lambda r: -r["birdnet"])
        report["negative_recordings"] = rows[:REPORTED_NEGATIVES]
        out[label] = report
    return out
