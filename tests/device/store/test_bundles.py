"""Bundles seen, and their labels' species facts (from the real BirdCLEF taxonomy)."""

from __future__ import annotations

import csv

import pytest

from device.bundle.manifest import Label


@pytest.fixture
def taxonomy_labels(shared_data):
    with open(shared_data / "taxonomy.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [Label(r["primary_label"], r["scientific_name"], r["common_name"], r["class_name"]) for r in rows]


def test_a_bundle_and_its_manifest_labels_are_recorded(store, taxonomy_labels):
    bundle_id = store.record_bundle("elsilencio-default", "1.0.0", "a" * 64, taxonomy_labels)
    catalog = store.label_catalog()
    assert len(catalog) == len(taxonomy_labels) == 206
    tinamou = catalog.get("littin1")
    assert (tinamou.scientific_name, tinamou.common_name, tinamou.class_name) == ("Crypturellus soui", "Little Tinamou", "Aves")
    row = next(store.db.query("SELECT * FROM bundle"))
    assert row["bundle_id"] == bundle_id and row["first_used_on"] == row["last_used_on"]
    positions = [r["primary_label"] for r in store.db.query("SELECT primary_label FROM bundle_label ORDER BY position")]
    assert positions == [label.primary_label for label in taxonomy_labels]


def test_recording_again_moves_last_used_and_keeps_one_row(store, taxonomy_labels):
    first = store.record_bundle("elsilencio-default", "1.0.0", "a" * 64, taxonomy_labels[:3])
    again = store.record_bundle("elsilencio-default", "1.0.0", "a" * 64)
    assert first == again
    row = next(store.db.query("SELECT * FROM bundle"))
    assert row["last_used_on"] >= row["first_used_on"]
    assert store.db.execute("SELECT count(*) FROM bundle_label").fetchone()[0] == 3  # kept when no labels given


def test_names_come_from_the_detecting_bundle_else_the_newest(store):
    def label(common):
        return {"primary_label": "littin1", "scientific_name": "Crypturellus soui", "common_name": common, "class_name": "Aves"}

    store.record_bundle("old", "1", "a" * 64, [label("Little Tinamou (v1)")])
    store.record_bundle("new", "2", "b" * 64, [label("Little Tinamou")])
    catalog = store.label_catalog()
    assert catalog.get("littin1", "a" * 64).common_name == "Little Tinamou (v1)"
    assert catalog.get("littin1", "c" * 64).common_name == "Little Tinamou"
    assert catalog.get("nosuch") is None


def test_bad_bundle_facts_are_refused_and_nothing_is_stored(store):
    with pytest.raises(ValueError, match="sha256"):
        store.record_bundle("x", "1", "ABC", [])
    with pytest.raises(ValueError, match=r"labels\[0\].common_name"):
        store.record_bundle("x", "1", "a" * 64, [{"primary_label": "a", "scientific_name": "b", "class_name": "Aves"}])
    assert store.db.execute("SELECT count(*) FROM bundle").fetchone()[0] == 0
