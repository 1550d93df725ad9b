"""The Darwin Core Archive's metadata: an EML 2.1.1 document (GBIF's metadata profile).

GBIF needs a title, a licence and a contact before it publishes a dataset; the rest (coverage,
methods) is what lets a researcher judge it. The licence states two sets of terms, because the
archive carries both: the recordings' (the clips, the guides' recordings at the reserve) and the
models' (each bundle's manifest names its licence and attribution; the shipped bundles are
trained on BirdCLEF 2025 and xeno-canto recordings, CC BY-NC-SA 4.0, so what they produce is
shared on the same non-commercial, share-alike terms by default).

Note for publishers: GBIF registers datasets only under CC0, CC BY 4.0 or CC BY-NC 4.0; the
default licence here (CC BY-NC-SA 4.0, the terms the models' training data carries) is not one
of them, so publishing to GBIF needs the data owner's decision (`DatasetInfo.licence_*`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from device.domain import taxon_rank

LICENCE_NAME = "CC BY-NC-SA 4.0"
LICENCE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode"
RECORDINGS_TERMS = (
    "Clips recorded by the reserve's guides with their Explorer devices, shared under the dataset licence "
    "with attribution to El Silencio Natural Reserve.")
SHIPPED_MODEL_TERMS = (
    "CC BY-NC-SA 4.0: trained on BirdCLEF 2025 train audio (xeno-canto recordings under per-recording Creative "
    "Commons non-commercial licences; BirdCLEF 2025 data CC BY-NC-SA 4.0) and recordings listed with their "
    "licences in the project's shared recordings.csv; non-commercial, share-alike, with attribution")
"""The terms of the bundles this project builds (exporter/default_bundle.py, demo_bundle.py);
used for a bundle whose manifest the server does not hold."""
TAXA_LISTED = 500
"""Taxa named in the taxonomic coverage at most (the reserve's label space has 206)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the EML says about the dataset beyond what the rows give."""

    title: str = "El Silencio Acoustic Explorer: guides' acoustic detections at El Silencio Natural Reserve"
    organisation: str = "El Silencio Natural Reserve"
    contact_name: str = "El Silencio Natural Reserve research team"
    contact_email: str | None = None
    licence_name: str = LICENCE_NAME
    licence_url: str = LICENCE_URL
    recordings_terms: str = RECORDINGS_TERMS
    model_terms: Mapping[str, str] = field(default_factory=dict)
    """'name version' -> that bundle's licence and attribution (`bundle_terms`); bundles not
    named here get `SHIPPED_MODEL_TERMS`."""
    language: str = "en"


def bundle_terms(bundles_dir: Path) -> dict[str, str]:
    """'name version' -> 'licence; attribution' for every bundle folder (with a manifest.json)
    under `bundles_dir`, read from the manifests themselves.

    Raises:
        BundleError: a manifest that does not parse (named by the reader).
    """
    from device.bundle.manifest import MANIFEST_FILE, read_manifest

    terms = {}
    for manifest_path in sorted(Path(bundles_dir).glob(f"**/{MANIFEST_FILE}")):
        manifest = read_manifest(manifest_path.parent)
        terms[f"{manifest.name} {manifest.version}"] = f"{manifest.license}; {manifest.attribution}"
    return terms


@dataclass
class Coverage:
    """What the archive's occurrences span, gathered as rows stream past."""

    first_on: str | None = None
    last_on: str | None = None
    west: float | None = None
    east: float | None = None
    south: float | None = None
    north: float | None = None
    sites: set[str] = field(default_factory=set)
    taxa: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """scientific name -> (rank, common name)."""
    bundles: dict[str, str] = field(default_factory=dict)
    """'name version' -> sha256."""

    def add(self, row: Mapping[str, Any]) -> None:
        self.first_on = min(filter(None, (self.first_on, row["started_on"])))
        self.last_on = max(filter(None, (self.last_on, row["ended_on"])))
        if row["latitude"] is not None and row["longitude"] is not None:
            lat, lon = row["latitude"], row["longitude"]
            self.west = lon if self.west is None else min(self.west, lon)
            self.east = lon if self.east is None else max(self.east, lon)
            self.south = lat if self.south is None else min(self.south, lat)
            self.north = lat if self.north is None else max(self.north, lat)
        if row["site"]:
            self.sites.add(row["site"])
        name = row["scientific_name"]
        if name not in self.taxa and len(self.taxa) < TAXA_LISTED:
            self.taxa[name] = (taxon_rank(name), row["common_name"])
        self.bundles.setdefault(f"{row['bundle_name']} {row['bundle_version']}", row["bundle_sha256"])


def _text(parent: ET.Element, tag: str, text: str | None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    element.text = text
    return element


def _para(parent: ET.Element, tag: str, *paragraphs: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    for paragraph in paragraphs:
        _text(element, "para", paragraph)
    return element


def _party(parent: ET.Element, tag: str, info: DatasetInfo) -> None:
    party = ET.SubElement(parent, tag)
    _text(party, "organizationName", info.organisation)
    _text(party, "positionName", info.contact_name)
    if info.contact_email:
        _text(party, "electronicMailAddress", info.contact_email)


def model_terms_text(info: DatasetInfo, coverage: Coverage) -> list[str]:
    """One sentence per bundle that made a detection in the archive: its identity and terms."""
    return [f"Model bundle {model} (sha256 {sha}): {info.model_terms.get(model, SHIPPED_MODEL_TERMS)}."
            for model, sha in sorted(coverage.bundles.items())]


def eml_document(info: DatasetInfo, coverage: Coverage, published: date) -> str:
    """The EML 2.1.1 text (GBIF profile 1.1) for an archive with this coverage."""
    ET.register_namespace("eml", "eml://ecoinformatics.org/eml-2.1.1")
    root = ET.Element("{eml://ecoinformatics.org/eml-2.1.1}eml", {
        "packageId": str(uuid.uuid4()), "system": "http://gbif.org", "scope": "system",
        "{http://www.w3.org/XML/1998/namespace}lang": info.language})
    dataset = ET.SubElement(root, "dataset")
    _text(dataset, "title", info.title, **{"{http://www.w3.org/XML/1998/namespace}lang": info.language})
    _party(dataset, "creator", info)
    _party(dataset, "metadataProvider", info)
    _text(dataset, "pubDate", published.isoformat())
    _text(dataset, "language", info.language)
    _para(dataset, "abstract",
          "Species detected in audio by the El Silencio Acoustic Explorer: guides carry a device that names birds, "
          "frogs, insects and mammals offline with on-device models; each occurrence is one detection, with the "
          "model bundle that made it, its confidence and the guide's verdict where one was given.")
    keywords = ET.SubElement(dataset, "keywordSet")
    for word in ("Occurrence", "Observation", "passive acoustic monitoring", "bioacoustics"):
        _text(keywords, "keyword", word)
    _text(keywords, "keywordThesaurus", "GBIF Dataset Type Vocabulary: http://rs.gbif.org/vocabulary/gbif/dataset_type.xml")
    rights = ET.SubElement(dataset, "intellectualRights")
    licence = ET.SubElement(rights, "para")
    licence.text = "This work is licensed under a "
    link = ET.SubElement(licence, "ulink", {"url": info.licence_url})
    _text(link, "citetitle", info.licence_name)
    link.tail = f". Recordings: {info.recordings_terms} " + " ".join(model_terms_text(info, coverage))
    _coverage(dataset, coverage)
    _party(dataset, "contact", info)
    methods = ET.SubElement(dataset, "methods")
    step = ET.SubElement(methods, "methodStep")
    _para(step, "description",
          "Audio is cut into analysis windows and scored by the named model bundle on the device; consecutive windows "
          "over the label's threshold form one detection (eventDate spans them). Confidence is the peak fused score. "
          "A guide may confirm or reject a detection (identificationVerificationStatus).",
          *model_terms_text(info, coverage))
    sampling = ET.SubElement(methods, "sampling")
    _para(ET.SubElement(sampling, "studyExtent"), "description", "Sites: " + (", ".join(sorted(coverage.sites)) or "not recorded") + ".")
    _para(sampling, "samplingDescription", "Guide-carried handheld recorders (Raspberry Pi 5 with a microphone) on "
                                           "guided tours and from recordings analysed on the device.")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _coverage(dataset: ET.Element, coverage: Coverage) -> None:
    if coverage.first_on is None:
        return
    element = ET.SubElement(dataset, "coverage")
    if coverage.west is not None:
        geographic = ET.SubElement(element, "geographicCoverage")
        _text(geographic, "geographicDescription", "Where the devices reported their positions: " +
              (", ".join(sorted(coverage.sites)) or "sites not named"))
        box = ET.SubElement(geographic, "boundingCoordinates")
        for tag, value in (("westBoundingCoordinate", coverage.west), ("eastBoundingCoordinate", coverage.east),
                           ("northBoundingCoordinate", coverage.north), ("southBoundingCoordinate", coverage.south)):
            _text(box, tag, repr(float(value)))
    dates = ET.SubElement(ET.SubElement(element, "temporalCoverage"), "rangeOfDates")
    _text(ET.SubElement(dates, "beginDate"), "calendarDate", coverage.first_on[:10])
    _text(ET.SubElement(dates, "endDate"), "calendarDate", coverage.last_on[:10])
    taxonomic = ET.SubElement(element, "taxonomicCoverage")
    for name, (rank, common) in sorted(coverage.taxa.items()):
        entry = ET.SubElement(taxonomic, "taxonomicClassification")
        _text(entry, "taxonRankName", rank)
        _text(entry, "taxonRankValue", name)
        if common:
            _text(entry, "commonName", common)
