"""A Darwin Core Archive of the kind GBIF ingests: occurrences, their confidence as facts, their clips.

The archive (a zip) holds:

- `occurrence.txt`, the core: one occurrence per detection (`occurrenceID` = the detection's
  UUID, `basisOfRecord` = MachineObservation, `eventDate` = the ISO interval the detection
  spans, the taxon with `kingdom`, `class`, `taxonRank` (a family-level label is `scientificName`
  Cicadidae, `taxonRank` family, `family` Cicadidae and `vernacularName` the family's plural,
  "Typical Cicadas", never a species), the coordinates the device sent, the
  model as `identifiedBy`, the guide's verdict as `identificationVerificationStatus`, the
  confidence in `identificationRemarks`), see `occurrence_fields`;
- `measurementorfact.txt`: the confidence and each branch's score as measurements, so a
  researcher can filter on them without parsing remarks;
- `multimedia.txt` (GBIF Simple Multimedia, `type` = Sound): the clip of each detection the
  server holds, as a file inside the archive (`clips/<clip_id>.flac`) or as a URL on the server;
- `meta.xml`, which maps each column to its term, and `eml.xml`, the dataset's metadata
  (title, licence with the recordings' and the models' terms, contact, coverage, methods).

Every text file is UTF-8, tab-separated, no quoting, one header line (what `meta.xml` says):
tabs and newlines inside a value become spaces.

Detections a guide rejected are left out unless asked for (`include_rejected`): GBIF would
publish each as an occurrence of a species that was not heard. Detections without a scientific
name (a bundle whose labels carried none) are left out too: GBIF cannot match them to a taxon.
Both are counted in the result.

Memory stays bounded: rows stream into files in a scratch folder, only the coverage (time
range, bounding box, the set of taxa and bundles) accumulates, then everything is zipped.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from sync_server.export.eml import Coverage, DatasetInfo, eml_document
from sync_server.export.tables import absolute_url
from device.domain import taxon_rank
from device.naming import display_name
from sync_server.export.taxa import kingdom

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
OCCURRENCE_ROW_TYPE = DWC + "Occurrence"
MOF_ROW_TYPE = DWC + "MeasurementOrFact"
MULTIMEDIA_ROW_TYPE = "http://rs.gbif.org/terms/1.0/Multimedia"

OCCURRENCE_TERMS = (
    ("occurrenceID", DWC), ("basisOfRecord", DWC), ("occurrenceStatus", DWC), ("eventID", DWC),
    ("eventDate", DWC), ("scientificName", DWC), ("vernacularName", DWC), ("kingdom", DWC), ("class", DWC),
    ("family", DWC), ("taxonRank", DWC), ("locality", DWC), ("decimalLatitude", DWC), ("decimalLongitude", DWC),
    ("geodeticDatum", DWC), ("coordinateUncertaintyInMeters", DWC), ("identifiedBy", DWC),
    ("identificationVerificationStatus", DWC), ("identificationRemarks", DWC), ("samplingProtocol", DWC),
    ("dynamicProperties", DWC), ("license", DC),
)
"""The core's columns (term name, namespace), in file order; occurrenceID is the id column."""
MOF_TERMS = (
    ("measurementID", DWC), ("measurementType", DWC), ("measurementValue", DWC), ("measurementUnit", DWC),
    ("measurementMethod", DWC), ("measurementDeterminedBy", DWC),
)
MULTIMEDIA_TERMS = (
    ("type", DC), ("format", DC), ("identifier", DC), ("title", DC), ("created", DC), ("license", DC),
    ("description", DC),
)

VERIFICATION = {"unreviewed": "unverified", "confirmed": "verified by guide", "rejected": "rejected by guide"}
"""identificationVerificationStatus by verdict (Darwin Core recommends a controlled vocabulary
and names none; these say who verified)."""
SAMPLING_PROTOCOL = ("passive acoustic recording on a guide's handheld device (El Silencio Acoustic "
                     "Explorer), automated identification over consecutive analysis windows")
GEODETIC_DATUM = "EPSG:4326"
"""The device's coordinates are WGS84 decimal degrees (the detection contract says so); EPSG:4326
is the value GBIF recommends for WGS84."""
CLIPS_IN_ARCHIVE = "clips"
CLIP_MODES = ("copy", "url", "none")


@dataclass
class DwcaResult:
    """What an archive holds, and what was left out of it and why."""

    occurrences: int = 0
    clips: int = 0
    rejected_left_out: int = 0
    unnamed_left_out: int = 0
    missing_clip_files: list[str] = field(default_factory=list)
    """Clips the database names whose file the server no longer has (listed, not fatal)."""

    @property
    def rows(self) -> int:
        return self.occurrences


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _scores_text(scores: Mapping[str, float | None]) -> str:
    return ", ".join(f"{branch} {'n/a' if score is None else f'{score:.3f}'}" for branch, score in sorted(scores.items()))


def occurrence_fields(row: dict[str, Any], licence_url: str) -> dict[str, str]:
    """One detection as Darwin Core terms (the core's columns, `OCCURRENCE_TERMS`)."""
    name = row["scientific_name"]
    rank = taxon_rank(name)
    located = row["latitude"] is not None and row["longitude"] is not None
    model = f"{row['bundle_name']} {row['bundle_version']}"
    remarks = (f"automated identification by model bundle {model} (sha256 {row['bundle_sha256']}): confidence "
               f"{row['confidence']:.3f} (peak fused score over {row['window_count']} window(s)); branch scores: "
               f"{_scores_text(row['branch_scores'])}")
    if row["verdict"] is not None:
        remarks += f"; guide's verdict: {row['verdict']} on {row['verdict_on']}"
    properties = {"device_id": row["device_id"], "detection_seq": row["seq"], "label": row["label"],
                  "source": row["source"], "start_s": row["start_s"], "end_s": row["end_s"],
                  "secondary": row["secondary"], "tour_name": row["tour_name"]}
    return {
        "occurrenceID": row["detection_id"], "basisOfRecord": "MachineObservation", "occurrenceStatus": "present",
        "eventID": row["tour_id"] or "", "eventDate": f"{row['started_on']}/{row['ended_on']}",
        "scientificName": name, "vernacularName": row["common_name"] or "",
        "kingdom": kingdom(row["class_name"]), "class": row["class_name"] or "",
        "family": name if rank == "family" else "", "taxonRank": rank, "locality": row["site"] or "",
        "decimalLatitude": _number(row["latitude"]), "decimalLongitude": _number(row["longitude"]),
        "geodeticDatum": GEODETIC_DATUM if located else "",
        "coordinateUncertaintyInMeters": _number(row["coordinate_uncertainty_m"]) if located else "",
        "identifiedBy": model, "identificationVerificationStatus": VERIFICATION[row["verification_status"]],
        "identificationRemarks": remarks, "samplingProtocol": SAMPLING_PROTOCOL,
        "dynamicProperties": json.dumps(properties, sort_keys=True), "license": licence_url,
    }


def _display(row: dict[str, Any]) -> str:
    """The clip's title names the label as a person reads it: "a cicada (Cicadidae)" for a family."""
    return display_name(row["scientific_name"], row["common_name"], row["class_name"], row["label"])


def measurement_rows(row: dict[str, Any]) -> list[dict[str, str]]:
    """The detection's confidence, then each branch's score, as MeasurementOrFact rows."""
    model = f"{row['bundle_name']} {row['bundle_version']}"
    facts = [{"measurementID": f"{row['detection_id']}#confidence", "measurementType": "identification confidence",
              "measurementValue": _number(row["confidence"]), "measurementUnit": "probability (0-1)",
              "measurementMethod": f"peak fused score of model bundle {model} over the detection's windows",
              "measurementDeterminedBy": model}]
    for branch, score in sorted(row["branch_scores"].items()):
        if score is None:
            continue
        facts.append({"measurementID": f"{row['detection_id']}#{branch}",
                      "measurementType": f"identification confidence ({branch} branch)",
                      "measurementValue": _number(score), "measurementUnit": "probability (0-1)",
                      "measurementMethod": f"score of branch {branch} of model bundle {model} in the peak window",
                      "measurementDeterminedBy": model})
    return facts


def _clean(value: Any) -> str:
    return "" if value is None else str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


class _Table:
    """One tab-separated file of the archive, written as rows stream past."""

    def __init__(self, path: Path, terms: tuple[tuple[str, str], ...], id_column: str):
        self.path, self.terms, self.id_column = path, terms, id_column
        self.handle = open(path, "w", encoding="utf-8", newline="")
        self.handle.write("\t".join([id_column] + [name for name, _ in terms if name != id_column]) + "\n")
        self.rows = 0

    def write(self, row_id: str, values: Mapping[str, Any]) -> None:
        cells = [row_id] + [_clean(values.get(name)) for name, _ in self.terms if name != self.id_column]
        self.handle.write("\t".join(_clean(c) for c in cells) + "\n")
        self.rows += 1

    def close(self) -> None:
        self.handle.close()


def _meta_xml(core: _Table, extensions: list[_Table]) -> str:
    """meta.xml: which file is the core, which are extensions, and each column's term."""
    archive = ET.Element("archive", {"xmlns": "http://rs.tdwg.org/dwc/text/", "metadata": "eml.xml"})

    def describe(kind: str, table: _Table, row_type: str) -> None:
        element = ET.SubElement(archive, kind, {
            "encoding": "UTF-8", "fieldsTerminatedBy": "\\t", "linesTerminatedBy": "\\n", "fieldsEnclosedBy": "",
            "ignoreHeaderLines": "1", "rowType": row_type})
        ET.SubElement(ET.SubElement(element, "files"), "location").text = table.path.name
        ET.SubElement(element, "id" if kind == "core" else "coreid", {"index": "0"})
        index = 1
        for name, namespace in table.terms:
            if name == table.id_column and kind == "core":
                ET.SubElement(element, "field", {"index": "0", "term": namespace + name})
                continue
            ET.SubElement(element, "field", {"index": str(index), "term": namespace + name})
            index += 1

    describe("core", core, OCCURRENCE_ROW_TYPE)
    for table, row_type in zip(extensions, (MOF_ROW_TYPE, MULTIMEDIA_ROW_TYPE)):
        describe("extension", table, row_type)
    ET.indent(archive)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(archive, encoding="unicode") + "\n"


def write_dwca(rows: Iterable[dict[str, Any]], out: Path, info: DatasetInfo | None = None, clips: str = "copy",
               base_url: str | None = None, include_rejected: bool = False,
               now: datetime | None = None) -> DwcaResult:
    """Write a Darwin Core Archive of the rows to `out` (a zip).

    Args:
        rows: detection rows (`iter_detection_rows`).
        info: the dataset's title, licence, contact and the models' terms (default: `DatasetInfo()`).
        clips: 'copy' puts each clip's FLAC in the archive; 'url' links it on the server (give
            `base_url`, e.g. https://explorer.example.org, so the link works away from it); 'none'
            leaves the multimedia extension empty.
        include_rejected: keep detections a guide rejected (marked 'rejected by guide').
        now: the publication date (default: today, UTC).

    Raises:
        ValueError: an unknown `clips` mode, or 'url' without `base_url`.
    """
    if clips not in CLIP_MODES:
        raise ValueError(f"clips: {clips!r} is not one of {', '.join(CLIP_MODES)}")
    if clips == "url" and not base_url:
        raise ValueError("clips: 'url' needs base_url (the server's address) so the links resolve")
    info = info or DatasetInfo()
    result, coverage = DwcaResult(), Coverage()
    copies: list[tuple[Path, str]] = []
    with tempfile.TemporaryDirectory(prefix="dwca-") as scratch:
        folder = Path(scratch)
        core = _Table(folder / "occurrence.txt", OCCURRENCE_TERMS, "occurrenceID")
        facts = _Table(folder / "measurementorfact.txt", MOF_TERMS, "coreid")
        media = _Table(folder / "multimedia.txt", MULTIMEDIA_TERMS, "coreid")
        try:
            for row in rows:
                if row["verification_status"] == "rejected" and not include_rejected:
                    result.rejected_left_out += 1
                    continue
                if not row["scientific_name"]:
                    result.unnamed_left_out += 1
                    continue
                core.write(row["detection_id"], occurrence_fields(row, info.licence_url))
                for fact in measurement_rows(row):
                    facts.write(row["detection_id"], fact)
                coverage.add(row)
                held = row["clip"]
                if held and clips != "none":
                    if clips == "copy":
                        source = Path(held["path"])
                        if not source.is_file():
                            result.missing_clip_files.append(held["clip_id"])
                            continue
                        identifier = f"{CLIPS_IN_ARCHIVE}/{held['clip_id']}.flac"
                        copies.append((source, identifier))
                    else:
                        identifier = absolute_url(held["url"], base_url)
                    media.write(row["detection_id"], {
                        "type": "Sound", "format": "audio/flac", "identifier": identifier,
                        "title": f"{_display(row)} [{row['label']}]",
                        "created": row["started_on"], "license": info.licence_url,
                        "description": (f"{held['duration_s']} s clip from {held['start_s']} s into {row['source']} "
                                        f"on device {row['device_id']}, {held['sample_rate_hz']} Hz FLAC, sha256 "
                                        f"{held['sha256']}")})
                    result.clips += 1
        finally:
            for table in (core, facts, media):
                table.close()
        result.occurrences = core.rows
        published = (now or datetime.now(timezone.utc)).date()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("meta.xml", _meta_xml(core, [facts, media]))
            archive.writestr("eml.xml", eml_document(info, coverage, published))
            for table in (core, facts, media):
                archive.write(table.path, table.path.name)
            for source, name in copies:
                archive.write(source, name, compress_type=zipfile.ZIP_STORED)  # FLAC is compressed already
    return result
