"""Domain facts every floor shares: how a scientific name's rank is read."""

from __future__ import annotations

import pytest

from device.domain import taxon_rank


@pytest.mark.parametrize("name, rank", [
    ("Allobates femoralis", "species"),
    ("Crypturellus soui soui", "species"),
    ("Cicadidae", "family"),
    ("Tettigoniidae", "family"),
    ("Gryllidae", "family"),
    ("Pristimantis", "genus"),
    ("", None),
    (None, None),
])
def test_a_names_rank_is_read_from_its_form(name, rank):
    assert taxon_rank(name) == rank


def test_the_family_labels_of_the_label_space_are_read_as_families(shared_data):
    import csv

    with open(shared_data / "taxonomy.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    families = {row["scientific_name"] for row in rows if taxon_rank(row["scientific_name"]) == "family"}
    assert families == {"Cicadidae", "Gryllidae", "Tettigoniidae"}
    assert all(taxon_rank(row["scientific_name"]) == "species" for row in rows
               if row["scientific_name"] not in families)
