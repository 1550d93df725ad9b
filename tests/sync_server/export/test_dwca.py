"""The Darwin Core Archive of ingested detections, opened by python-dwca-reader and validated by
dwcahandler (unique occurrenceIDs, named columns), and every term checked against dwcahandler's
register of Darwin Core / Dublin Core terms: the occurrence terms the issue lists, the confidence
as facts, the clips as Sound through Simple Multimedia (in the archive, or by URL), meta.xml, eml.xml."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from xml.etree import ElementTree as ET

import pytest
import soundfile as sf
from dwca.read import DwCAReader
from dwcahandler import DwcaHandler, MetaElementTypes
from metapype.eml import validate as metapype_validate
from metapype.model import metapype_io

from sync_server.db.queries import DetectionFilter, detection_rows
from sync_server.export.dwca import write_dwca
from sync_server.export.eml import DatasetInfo, bundle_terms
from sync_server.export.formats import ExportOptions, export
from tests.sync_server.export.conftest import BUNDLE, SITE

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
MOF = DWC + "MeasurementOrFact"
MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"
REQUIRED = ("occurrenceID", "basisOfRecord", "eventDate", "scientificName", "kingdom", "class", "taxonRank",
            "identifiedBy", "identificationVerificationStatus", "identificationRemarks", "samplingProtocol")
"""Terms every occurrence must fill (the issue's list; the coordinate terms where the device sent a position)."""
METAPYPE_LACKS_ULINK = {
    "Child 'ulink' not allowed in parent 'para'", "Child 'ulink' is not allowed in this position for parent 'para'",
    "Unknown node rule type: ulink", "Unknown node rule type: citetitle"}
"""metapype's rules have no `ulink`, EML's text-module link that GBIF's IPT writes (and reads) the
licence with: `<para>... <ulink url="..."><citetitle>CC BY-NC 4.0</citetitle></ulink></para>`."""
PLACED = ("decimalLatitude", "decimalLongitude", "geodeticDatum", "coordinateUncertaintyInMeters")


@pytest.fixture(scope="module")
def archive(filled, tmp_path_factory):
    out = tmp_path_factory.mktemp("dwca") / "elsilencio.zip"
    info = DatasetInfo(contact_email="research@elsilencio.example.org")
    summary = export(filled.server, "dwca", DetectionFilter(), out, ExportOptions(dataset=info))
    return out, summary


def core_rows(path):
    with DwCAReader(str(path)) as reader:
        return [(row.data, [(ext.rowtype, ext.data) for ext in row.extensions]) for row in reader], reader.metadata


def test_python_dwca_reader_opens_the_archive_with_one_occurrence_per_published_detection(archive, filled):
    path, summary = archive
    rows, _ = core_rows(path)
    published = {filled.ids[k] for k in ("frog_confirmed", "frog_unreviewed", "tinamou", "cicada", "tungara",
                                        "frog_other_device")}
    assert {data[DWC + "occurrenceID"] for data, _ in rows} == published
    assert summary.rows == len(published)
    assert summary.left_out == {"rejected by a guide": 1, "without a scientific name": 1,
                                "clip file missing (occurrence kept)": 0}
    by_id = {data[DWC + "occurrenceID"]: (data, extensions) for data, extensions in rows}
    stored = {row["detection_id"]: row for row in detection_rows(filled.server)}
    for detection_id, (data, extensions) in by_id.items():
        row = stored[detection_id]
        for term in REQUIRED:
            assert data[DWC + term], (term, detection_id)
        assert data[DWC + "basisOfRecord"] == "MachineObservation"
        assert data[DWC + "eventDate"] == f"{row['started_on']}/{row['ended_on']}"
        assert data[DWC + "identifiedBy"] == f"{BUNDLE[0]} {BUNDLE[1]}"
        assert data[DWC + "kingdom"] == "Animalia" and data[DWC + "class"] == row["class_name"]
        facts = [e for kind, e in extensions if kind == MOF]
        assert float(facts[0][DWC + "measurementValue"]) == row["confidence"]
        assert {f[DWC + "measurementID"].split("#")[1] for f in facts[1:]} == {
            b for b, s in row["branch_scores"].items() if s is not None}
        assert f"confidence {row['confidence']:.3f}" in data[DWC + "identificationRemarks"]
        if row["latitude"] is not None:
            assert [float(data[DWC + t]) for t in PLACED if t != "geodeticDatum"] == list(SITE[1:])
            assert data[DWC + "geodeticDatum"] == "EPSG:4326" and data[DWC + "locality"] == SITE[0]
        else:
            assert all(data[DWC + t] == "" for t in PLACED)  # pi-h03 sent no position: none invented
        assert json.loads(data[DWC + "dynamicProperties"])["detection_seq"] == row["seq"]
        assert data[DWC + "eventID"] == (row["tour_id"] or "")
    cicada = by_id[filled.ids["cicada"]][0]
    assert (cicada[DWC + "taxonRank"], cicada[DWC + "family"]) == ("family", "Cicadidae")
    # A family stays a family: its scientific name is the family's, its vernacular the family's plural.
    assert (cicada[DWC + "scientificName"], cicada[DWC + "vernacularName"]) == ("Cicadidae", "Typical Cicadas")
    assert by_id[filled.ids["tinamou"]][0][DWC + "taxonRank"] == "species"
    assert by_id[filled.ids["tinamou"]][0][DWC + "identificationVerificationStatus"] == "verified by guide"
    assert by_id[filled.ids["frog_unreviewed"]][0][DWC + "identificationVerificationStatus"] == "unverified"


def test_clips_are_sound_in_the_archive_byte_for_byte(archive, filled):
    path, _ = archive
    rows, _ = core_rows(path)
    held = {row["detection_id"]: row["clip"] for row in detection_rows(filled.server) if row["clip"]}
    media = {data[DWC + "occurrenceID"]: [e for kind, e in ext if kind == MULTIMEDIA] for data, ext in rows}
    with zipfile.ZipFile(path) as opened:
        for detection_id, items in media.items():
            if detection_id not in held:
                assert items == []
                continue
            (item,) = items
            assert (item[DC + "type"], item[DC + "format"]) == ("Sound", "audio/flac")
            data = opened.read(item[DC + "identifier"])
            assert hashlib.sha256(data).hexdigest() == held[detection_id]["sha256"]
            audio, rate = sf.read(io.BytesIO(data))
            assert rate == held[detection_id]["sample_rate_hz"] and len(audio) > 0
    assert sum(len(items) for items in media.values()) == 4  # the rejected one's clip is not published
    assert media[filled.ids["tinamou"]][0][DC + "title"] == "Little Tinamou (Crypturellus soui) [littin1]"


def test_dwcahandler_validates_it_and_knows_every_term_and_row_type(archive):
    path, _ = archive
    assert DwcaHandler.validate_dwca(str(path), content_keys={MetaElementTypes.OCCURRENCE: ["occurrenceID"]})
    terms, classes = DwcaHandler.list_terms()
    known_terms, known_types = set(terms["uri"]), set(classes["class_uri"])
    with zipfile.ZipFile(path) as opened:
        meta = ET.fromstring(opened.read("meta.xml"))
    ns = {"t": "http://rs.tdwg.org/dwc/text/"}
    parts = meta.findall("t:core", ns) + meta.findall("t:extension", ns)
    assert [p.get("rowType") for p in parts] == [DWC + "Occurrence", MOF, MULTIMEDIA]
    for part in parts:
        assert part.get("rowType") in known_types
        for field in part.findall("t:field", ns):
            assert field.get("term") in known_terms, field.get("term")


def test_dwcahandler_refuses_an_archive_with_repeated_occurrence_ids(filled, tmp_path):
    """The validation is not vacuous: the same detection twice fails it."""
    row = next(r for r in detection_rows(filled.server) if r["detection_id"] == filled.ids["tinamou"])
    write_dwca([row, row], tmp_path / "twice.zip", clips="none")
    assert not DwcaHandler.validate_dwca(str(tmp_path / "twice.zip"),
                                         content_keys={MetaElementTypes.OCCURRENCE: ["occurrenceID"]})


def test_the_eml_names_title_licences_contact_and_coverage(archive, demo_home_template):
    path, _ = archive
    _, metadata = core_rows(path)
    dataset = metadata.find("dataset")
    assert dataset.find("title").text.startswith("El Silencio Acoustic Explorer")
    rights = "".join(dataset.find("intellectualRights").itertext())
    assert "CC BY-NC-SA 4.0" in rights and "Recordings:" in rights and f"Model bundle {BUNDLE[0]} {BUNDLE[1]}" in rights
    assert dataset.find("intellectualRights/para/ulink").get("url").startswith("https://creativecommons.org/")
    assert dataset.find("contact/electronicMailAddress").text == "research@elsilencio.example.org"
    box = dataset.find("coverage/geographicCoverage/boundingCoordinates")
    assert float(box.find("northBoundingCoordinate").text) == SITE[1]
    assert dataset.find("coverage/temporalCoverage/rangeOfDates/beginDate/calendarDate").text == "2026-04-20"
    taxa = {e.find("taxonRankValue").text: e.find("taxonRankName").text
            for e in dataset.findall("coverage/taxonomicCoverage/taxonomicClassification")}
    assert taxa["Cicadidae"] == "family" and taxa["Crypturellus soui"] == "species"
    with zipfile.ZipFile(path) as opened:  # EML's rules as metapype (dwcahandler's EML library) holds them
        problems = []
        metapype_validate.tree(metapype_io.from_xml(opened.read("eml.xml").decode()), problems)
    assert {p[1] for p in problems} <= METAPYPE_LACKS_ULINK, problems
    terms = bundle_terms(demo_home_template / "bundles")  # the models' terms from real manifests
    assert terms and all("CC BY-NC-SA 4.0" in text for text in terms.values())


def test_clips_by_url_and_rejected_detections_on_request(filled, tmp_path):
    out = tmp_path / "linked.zip"
    summary = export(filled.server, "dwca", DetectionFilter(status="rejected"), out,
                     ExportOptions(clips="url", base_url="https://explorer.example.org/"))
    rows, _ = core_rows(out)
    ((data, extensions),) = rows  # status=rejected asks for them
    assert data[DWC + "identificationVerificationStatus"] == "rejected by guide" and summary.rows == 1
    ((_, item),) = [e for e in extensions if e[0] == MULTIMEDIA]
    assert item[DC + "identifier"].startswith("https://explorer.example.org/api/v1/clips/")
    with zipfile.ZipFile(out) as opened:
        assert not [n for n in opened.namelist() if n.startswith("clips/")]
    with pytest.raises(ValueError, match="base_url"):
        write_dwca([], tmp_path / "no.zip", clips="url")
