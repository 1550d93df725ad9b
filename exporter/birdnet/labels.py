"""Map BirdNET V2.4's 6522 labels onto the site taxonomy (El Silencio, BirdCLEF 2025).

BirdNET labels read ``"Scientific name_Common name"``. We match on the scientific name only
(case-folded, whitespace collapsed): common names differ between eBird and iNaturalist spellings,
scientific names are what both taxonomies share.

No synonym table is used, because none would change the result. Measured on taxonomy.csv: 145 of
the 146 Aves match by name. The one missing bird, Shining-green Hummingbird (*Chrysuronia goudoti*,
``shghum1``), is absent under every name it has carried too: *Lepidopyga goudoti* (its genus before
Stiles, Remsen & McGuire 2017, Zootaxa 4353:401), *Amazilia goudoti* (HBW/BirdLife) and
*Sapphironia goudoti*; no BirdNET label carries its common name either (``ALIASES_CHECKED`` and the
tests keep this true). BirdNET V2.4 does not know the species. None of the 60
non-bird taxa (34 Amphibia, 17 Insecta, 9 Mammalia) is among BirdNET's classes: the frog, insect
and mammal branches must come from elsewhere.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.birdnet.convert import LABELS_FILE, N_CLASSES, find_birdnet_file

ALIASES_CHECKED = {
    "shghum1": ("Lepidopyga goudoti", "Amazilia goudoti", "Sapphironia goudoti", "Shining-green Hummingbird"),
}
"""Other names of the unmatched site birds, each verified absent from BirdNET V2.4's labels."""


@dataclass(frozen=True)
class BirdnetLabel:
    index: int
    scientific_name: str
    common_name: str


@dataclass(frozen=True)
class Taxon:
    """One row of taxonomy.csv."""

    primary_label: str
    scientific_name: str
    common_name: str
    class_name: str


@dataclass(frozen=True)
class LabelMapping:
    """The site taxa BirdNET can score, in taxonomy order, and those it cannot."""

    site_labels: tuple[str, ...]
    """``primary_label`` of each matched taxon (the restricted model's output order)."""
    birdnet_indices: tuple[int, ...]
    """BirdNET class index for each entry of ``site_labels``."""
    missing: tuple[Taxon, ...]
    """Site taxa with no BirdNET class."""
    covered_by_class: dict[str, tuple[int, int]]
    """class_name -> (taxa covered, taxa in the site list)."""


def normalise_name(name: str) -> str:
    """Case-fold and collapse whitespace (taxonomy.csv has a trailing space on one name)."""
    return " ".join(name.split()).casefold()


def read_birdnet_labels(path: Path | None = None) -> list[BirdnetLabel]:
    """BirdNET's labels in model output order.

    Raises:
        ValueError: a line lacks the ``_`` separator, or the count is not 6522.
    """
    path = Path(path) if path is not None else find_birdnet_file(LABELS_FILE)
    labels = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if "_" not in line:
            raise ValueError(f"{path}:{i + 1}: label {line!r} has no '_' between scientific and common name")
        sci, common = line.split("_", 1)
        labels.append(BirdnetLabel(i, sci.strip(), common.strip()))
    if len(labels) != N_CLASSES:
        raise ValueError(f"{path}: {len(labels)} labels, the model has {N_CLASSES} outputs")
    return labels


def read_taxonomy(path: Path) -> list[Taxon]:
    """Rows of taxonomy.csv.

    Raises:
        ValueError: a required column is missing.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"primary_label", "scientific_name", "common_name", "class_name"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: missing columns {sorted(need - set(reader.fieldnames or ()))}")
        return [
            Taxon(r["primary_label"].strip(), r["scientific_name"], r["common_name"], r["class_name"].strip())
            for r in reader
        ]


def map_to_taxonomy(labels: list[BirdnetLabel], taxa: list[Taxon]) -> LabelMapping:
    """Match site taxa to BirdNET classes by normalised scientific name.

    Raises:
        ValueError: two BirdNET labels share a scientific name (the match would be ambiguous).
    """
    by_name: dict[str, int] = {}
    for label in labels:
        key = normalise_name(label.scientific_name)
        if key in by_name:
            raise ValueError(f"BirdNET labels {by_name[key]} and {label.index} share the name {label.scientific_name!r}")
        by_name[key] = label.index
    site, indices, missing = [], [], []
    covered: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for taxon in taxa:
        total[taxon.class_name] += 1
        index = by_name.get(normalise_name(taxon.scientific_name))
        if index is None:
            missing.append(taxon)
            continue
        covered[taxon.class_name] += 1
        site.append(taxon.primary_label)
        indices.append(index)
    return LabelMapping(
        site_labels=tuple(site),
        birdnet_indices=tuple(indices),
        missing=tuple(missing),
        covered_by_class={c: (covered[c], n) for c, n in total.items()},
    )


def species_indices(birdnet_labels, names: Sequence[str]) -> list[int]:
    """BirdNET's class index of each scientific name, in `names` order (matched whole, never a
    substring: a search for "Owl" must not take the Powerful Owl).

    Raises:
        ValueError: a name is not exactly one BirdNET label (named).
    """
    out = []
    for name in names:
        found = [label.index for label in birdnet_labels if label.scientific_name == name]
        if len(found) != 1:
            raise ValueError(f"BirdNET's labels hold {len(found)} classes named exactly {name!r} (expected one)")
        out.append(found[0])
    return out
