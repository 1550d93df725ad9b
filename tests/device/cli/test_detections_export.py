"""`explorer detections export`: CSV with species names, Raven selection tables per source."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import click
import pytest
from click.testing import CliRunner

from device.cli.detections_cmd import CSV_COLUMNS, RAVEN_COLUMNS, detections
from device.cli.main import cli
from device.domain import Detection
from device.home import ExplorerHome
from device.store import Store

TINAMOU = {"primary_label": "littin1", "scientific_name": "Crypturellus soui", "common_name": "Little Tinamou", "class_name": "Aves"}
FROG = {"primary_label": "21211", "scientific_name": "Allobates femoralis", "common_name": "Brilliant-thighed Poison Frog", "class_name": "Amphibia"}  # fmt: skip
SOUNDSCAPE = "/data/H02_20230420_074000.ogg"
FROGS = "/data/2.ogg"


@pytest.fixture
def home(tmp_path) -> ExplorerHome:
    return ExplorerHome.resolve(tmp_path / "home")


@pytest.fixture
def run(home):
    def invoke(*args: str):
        return CliRunner().invoke(cli, ["--home", str(home.root), "detections", "export", *args], catch_exceptions=False)

    return invoke


def _detection(label, source, start_s, tour_id=None, confidence=0.8):
    start = datetime(2023, 4, 20, 7, 40, tzinfo=timezone.utc) + timedelta(seconds=start_s)
    return Detection(
        label=label, started_on=start, ended_on=start + timedelta(seconds=5), confidence=confidence,
        branch_scores={"perch": confidence, "birdnet": float("nan")}, bundle_name="elsilencio-default",
        bundle_version="1.0.0", bundle_sha256="a" * 64, device_id="pi-h02", tour_id=tour_id, source=source,
        start_s=start_s, end_s=start_s + 5,
    )  # fmt: skip


@pytest.fixture
def logged(home):
    """Two sources: the soundscape (two tinamous, in a tour) and a frog recording (no tour)."""
    with Store.open(home.database) as store:
        store.record_bundle("elsilencio-default", "1.0.0", "a" * 64, [TINAMOU, FROG])
        tour = store.start_tour(name="Dawn")
        dets = [
            _detection("littin1", SOUNDSCAPE, 35.0, tour.tour_id, 0.9),
            _detection("littin1", SOUNDSCAPE, 5.0, tour.tour_id, 0.7),
            _detection("21211", FROGS, 10.0),
        ]
        for det in dets:
            store.save_detection(det, final=True)
        store.add_feedback(dets[0].detection_id, "confirm")
    return tour, dets


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_has_clear_columns_and_names_species_without_a_bundle_loaded(run, logged):
    result = run()
    assert result.exit_code == 0
    header = result.output.splitlines()[0].split(",")
    assert header == list(CSV_COLUMNS)
    assert {"scientific_name", "common_name", "started_on", "start_s", "confidence", "verdict"} <= set(header)
    rows = {r["detection_id"]: r for r in _rows(result.output)}
    tour, dets = logged
    first = rows[dets[0].detection_id]
    assert (first["label"], first["scientific_name"], first["common_name"]) == ("littin1", "Crypturellus soui", "Little Tinamou")
    assert first["tour_id"] == tour.tour_id and first["verdict"] == "confirm" and first["status"] == "closed"
    assert first["started_on"] == "2023-04-20T07:40:35.000Z" and first["start_s"] == "35.000"
    assert first["branch_scores"] == '{"birdnet": null, "perch": 0.9}'
    assert rows[dets[2].detection_id]["class_name"] == "Amphibia"


def test_csv_filters_by_tour_prefix_and_writes_a_file(run, logged, tmp_path):
    tour, dets = logged
    out = tmp_path / "export" / "dawn.csv"
    result = run("--tour", tour.tour_id[:8], "--out", str(out))
    assert result.exit_code == 0
    assert {r["detection_id"] for r in _rows(out.read_text())} == {dets[0].detection_id, dets[1].detection_id}
    assert not list(out.parent.glob(".*.tmp"))


def test_raven_for_one_source_is_a_tab_separated_selection_table(run, logged):
    tour, dets = logged
    result = run("--format", "raven", "--tour", tour.tour_id)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split("\t") == list(RAVEN_COLUMNS)
    assert lines[0].startswith("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)")
    rows = [dict(zip(RAVEN_COLUMNS, line.split("\t"))) for line in lines[1:]]
    assert [r["Selection"] for r in rows] == ["1", "2"]
    assert [r["Begin Time (s)"] for r in rows] == ["5.000", "35.000"]  # offsets within the file, in order
    assert rows[0]["End Time (s)"] == "10.000" and rows[0]["View"] == "Spectrogram 1" and rows[0]["Channel"] == "1"
    assert rows[0]["Species Code"] == "littin1" and rows[0]["Common Name"] == "Little Tinamou"
    assert rows[1]["Confidence"] == "0.9000" and rows[1]["Verdict"] == "confirm"
    assert {r["Begin Path"] for r in rows} == {SOUNDSCAPE}
    assert float(rows[0]["Low Freq (Hz)"]) < float(rows[0]["High Freq (Hz)"])


def test_raven_with_several_sources_writes_one_table_per_source(run, logged, tmp_path):
    refused = run("--format", "raven")
    assert refused.exit_code == 1 and "2 source recordings" in refused.output and "--out DIR" in refused.output
    out = tmp_path / "selections"
    assert run("--format", "raven", "--out", str(out)).exit_code == 0
    tables = sorted(p.name for p in out.iterdir())
    assert tables == ["2.selections.txt", "H02_20230420_074000.selections.txt"]
    frog_lines = (out / "2.selections.txt").read_text().splitlines()
    assert len(frog_lines) == 2 and frog_lines[1].split("\t")[3] == "10.000"
    assert frog_lines[1].split("\t")[0] == "1"  # selections are numbered per table


def test_an_empty_log_exports_just_the_header(run):
    assert run().output.strip() == ",".join(CSV_COLUMNS)
    assert run("--format", "raven").output.strip() == "\t".join(RAVEN_COLUMNS)


def test_an_unknown_tour_is_a_clear_error(run, logged):
    result = run("--tour", "nosuchtour")
    assert result.exit_code == 1 and "no tour with id 'nosuchtour'" in result.output


def test_help_ends_with_an_example():
    command = detections.get_command(click.Context(detections), "export")
    assert "Example:" in command.help
    assert command.help.strip().splitlines()[-1].strip().startswith("explorer detections export")
    assert detections.help.strip().splitlines()[-1].strip().startswith("explorer detections export")
