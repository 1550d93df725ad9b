"""BirdNET's 6522 labels mapped onto the site taxonomy by scientific name."""

from __future__ import annotations

import pytest

from exporter.birdnet.labels import (
    ALIASES_CHECKED,
    map_to_taxonomy,
    normalise_name,
    read_birdnet_labels,
    read_taxonomy,
)


@pytest.fixture(scope="module")
def labels():
    return read_birdnet_labels()


@pytest.fixture(scope="module")
def taxa(shared_data):
    return read_taxonomy(shared_data / "taxonomy.csv")


def test_birdnet_ships_6522_labels_in_output_order(labels):
    assert len(labels) == 6522
    assert labels[0].scientific_name == "Abroscopus albogularis"
    assert labels[0].common_name == "Rufous-faced Warbler"
    assert [label.index for label in labels] == list(range(6522))


def test_birdnet_covers_145_of_the_146_site_birds_and_none_of_the_other_taxa(labels, taxa):
    mapping = map_to_taxonomy(labels, taxa)
    assert mapping.covered_by_class == {
        "Aves": (145, 146),
        "Amphibia": (0, 34),
        "Insecta": (0, 17),
        "Mammalia": (0, 9),
    }
    assert [t.primary_label for t in mapping.missing if t.class_name == "Aves"] == ["shghum1"]
    assert len(mapping.site_labels) == len(mapping.birdnet_indices) == 145


def test_each_index_points_at_the_label_with_the_taxons_scientific_name(labels, taxa):
    mapping = map_to_taxonomy(labels, taxa)
    by_code = {t.primary_label: t for t in taxa}
    for code, index in zip(mapping.site_labels, mapping.birdnet_indices):
        assert normalise_name(labels[index].scientific_name) == normalise_name(by_code[code].scientific_name)
    assert len(set(mapping.birdnet_indices)) == 145


def test_the_missing_bird_is_absent_under_its_other_names_too(labels):
    names = {normalise_name(label.scientific_name) for label in labels}
    commons = {normalise_name(label.common_name) for label in labels}
    for alias in ALIASES_CHECKED["shghum1"]:
        assert normalise_name(alias) not in names | commons


def test_names_match_regardless_of_case_and_stray_whitespace():
    assert normalise_name("  Daedadelus   waehnerorum ") == normalise_name("daedadelus waehnerorum")


def test_a_label_file_without_separator_is_refused_with_its_line(tmp_path):
    bad = tmp_path / "labels.txt"
    bad.write_text("Abroscopus albogularis_Rufous-faced Warbler\nNoSeparatorHere\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels.txt:2: label 'NoSeparatorHere'"):
        read_birdnet_labels(bad)
