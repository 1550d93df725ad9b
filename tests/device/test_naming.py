"""How a label is named to a person: every taxonomy.csv row, families as families, and the device
CLI's CSV and Raven tables that use the rule."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from device.domain import Detection, taxon_rank
from device.naming import CLASS_MEMBER, FAMILY_SINGULAR, display_name, taxon_name

BINOMIAL_IN_PARENS = re.compile(r"\(([A-Z][a-z]+) [a-z]+\)$")


@pytest.fixture(scope="module")
def taxonomy(shared_data) -> list[dict[str, str]]:
    with open(Path(shared_data) / "taxonomy.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_taxonomy_row_is_named_by_its_rank(taxonomy):
    families = 0
    for row in taxonomy:
        name = taxon_name(row["scientific_name"], row["common_name"], row["class_name"], row["primary_label"])
        scientific, common = row["scientific_name"].strip(), row["common_name"].strip()
        assert name.rank == taxon_rank(scientific), row
        if name.rank == "family":
            families += 1
            # Never like a species: no plural vernacular where a species' common name goes, an article
            # first ("a cicada"), the family name upright, and the rank said where the name stands alone.
            assert common not in name.text and name.text.startswith(("a ", "an ")), name.text
            assert name.text == f"{FAMILY_SINGULAR[scientific]} ({scientific})", name.text
            assert not name.italic and name.subline == f"family {scientific}"
            assert not BINOMIAL_IN_PARENS.search(name.text)
        else:
            assert name.rank == "species" and name.italic, row
            expected = scientific if common == scientific else f"{common} ({scientific})"
            assert name.text == expected, row  # a species is named as today, its names never said twice
            assert name.heading == (common if common != scientific else scientific)
    assert families == 3  # 48124 Tettigoniidae, 50186 Cicadidae, 52884 Gryllidae


def test_the_three_families_of_the_label_space_read_as_a_guide_says_them(taxonomy):
    by_label = {row["primary_label"]: row for row in taxonomy}
    named = {label: display_name(by_label[label]["scientific_name"], by_label[label]["common_name"],
                                 by_label[label]["class_name"]) for label in ("50186", "48124", "52884")}
    assert named == {"50186": "a cicada (Cicadidae)", "48124": "a katydid (Tettigoniidae)",
                     "52884": "a cricket (Gryllidae)"}
    raccoon = by_label["41663"]
    assert display_name(raccoon["scientific_name"], raccoon["common_name"]) == "Common Raccoon (Procyon lotor)"
    assert set(FAMILY_SINGULAR) == {row["scientific_name"] for row in taxonomy if taxon_rank(row["scientific_name"]) == "family"}


def test_other_families_genera_and_unnamed_labels_have_a_general_wording():
    grasshopper = taxon_name("Acrididae", "Short-horned Grasshoppers", "Insecta", "47651")
    assert grasshopper.text == "an insect of the family Acrididae" and grasshopper.subline == ""
    assert taxon_name("Acrididae", "", None).text == "a member of the family Acrididae"
    treefrog = taxon_name("Dendropsophus", "", "Amphibia")
    assert (treefrog.rank, treefrog.text, treefrog.italic) == ("genus", "a frog of the genus Dendropsophus", True)
    assert taxon_name("Dendropsophus", "", None).text == "a member of the genus Dendropsophus"
    assert set(CLASS_MEMBER) == {"Aves", "Amphibia", "Insecta", "Mammalia"}
    unnamed = taxon_name(None, None, None, "unknown1")
    assert (unnamed.rank, unnamed.text, unnamed.heading, unnamed.subline) == (None, "unknown1", "unknown1", "")
    assert taxon_name("", "Little Tinamou", "Aves", "littin1").text == "Little Tinamou"


def test_extra_facts_go_inside_the_parentheses():
    assert taxon_name("Cicadidae", "Typical Cicadas", "Insecta").text_with("Insecta") == "a cicada (Cicadidae, Insecta)"
    assert taxon_name("Procyon lotor", "Common Raccoon").text_with("Mammalia") == "Common Raccoon (Procyon lotor, Mammalia)"
    trailing = taxon_name("Daedadelus waehnerorum ", "Daedadelus waehnerorum ", "Insecta")  # as taxonomy.csv has it
    assert trailing.text_with("Insecta", "") == "Daedadelus waehnerorum (Insecta)"
    assert taxon_name("Acrididae", "", "Insecta").text_with("Insecta") == "an insect of the family Acrididae (Insecta)"


# -- the device's own exports (`explorer detections export`) ------------------------------------

CICADA = {"primary_label": "50186", "scientific_name": "Cicadidae", "common_name": "Typical Cicadas", "class_name": "Insecta"}
TINAMOU = {"primary_label": "littin1", "scientific_name": "Crypturellus soui", "common_name": "Little Tinamou",
           "class_name": "Aves"}
CICADA_SOURCE = "audio/insects/minetest_sounds_cicada_01.ogg"


def _detection(label: str, start_s: float) -> Detection:
    start = datetime(2026, 4, 20, 20, 10, tzinfo=timezone.utc) + timedelta(seconds=start_s)
    return Detection(label=label, started_on=start, ended_on=start + timedelta(seconds=5), confidence=0.7,
                     branch_scores={"head": 0.7}, bundle_name="elsilencio-default", bundle_version="1.3.0",
                     bundle_sha256="c" * 64, device_id="pi-h02", source=CICADA_SOURCE, start_s=start_s,
                     end_s=start_s + 5)


def test_the_device_csv_and_raven_tables_name_a_family_as_a_family(tmp_path):
    from device.cli.detections_cmd import CSV_COLUMNS, RAVEN_COLUMNS, render_csv, render_raven
    from device.store import Store

    with Store.open(tmp_path / "explorer.db") as store:
        store.record_bundle("elsilencio-default", "1.3.0", "c" * 64, [CICADA, TINAMOU])
        for det in (_detection("50186", 0.0), _detection("littin1", 10.0), _detection("unknown1", 20.0)):
            store.save_detection(det, final=True)
        records = store.detection_records()
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(render_csv(records)))}
    assert {"taxon_rank", "display_name"} <= set(CSV_COLUMNS)
    cicada = rows["50186"]
    assert (cicada["scientific_name"], cicada["common_name"]) == ("Cicadidae", "Typical Cicadas")  # the taxonomy's, kept
    assert (cicada["taxon_rank"], cicada["display_name"]) == ("family", "a cicada (Cicadidae)")
    assert (rows["littin1"]["taxon_rank"], rows["littin1"]["display_name"]) == ("species", "Little Tinamou (Crypturellus soui)")
    assert (rows["unknown1"]["taxon_rank"], rows["unknown1"]["display_name"]) == ("", "unknown1")
    lines = render_raven(records).splitlines()
    selections = {r["Species Code"]: r for r in (dict(zip(RAVEN_COLUMNS, line.split("\t"))) for line in lines[1:])}
    assert (selections["50186"]["Common Name"], selections["50186"]["Scientific Name"]) == ("a cicada", "Cicadidae")
    assert (selections["littin1"]["Common Name"], selections["littin1"]["Scientific Name"]) == ("Little Tinamou",
                                                                                                 "Crypturellus soui")
    assert selections["unknown1"]["Common Name"] == ""


def test_the_tour_summarys_text_names_a_family_as_a_family():
    from device.store.summary import SpeciesTally, species_name

    moment = datetime(2026, 4, 20, 20, 10, tzinfo=timezone.utc)

    def tally(label, scientific, common, class_name):
        return SpeciesTally(label, scientific, common, class_name, 2, 1, moment, moment)

    assert species_name(tally("50186", "Cicadidae", "Typical Cicadas", "Insecta")) == "a cicada (Cicadidae)"
    assert species_name(tally("littin1", "Crypturellus soui", "Little Tinamou", "Aves")) == "Little Tinamou (Crypturellus soui)"
    assert species_name(tally("unknown1", None, None, None)) == "unknown1"
