"""`explorer tour`: start, stop, list and summary through the real CLI and database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import click
import pytest
from click.testing import CliRunner

from device.cli.main import cli
from device.cli.tour_cmd import tour
from device.domain import Detection
from device.home import ExplorerHome
from device.store import Store

TINAMOU = {"primary_label": "littin1", "scientific_name": "Crypturellus soui", "common_name": "Little Tinamou", "class_name": "Aves"}
FROG = {"primary_label": "21211", "scientific_name": "Allobates femoralis", "common_name": "Brilliant-thighed Poison Frog", "class_name": "Amphibia"}  # fmt: skip


@pytest.fixture
def home(tmp_path) -> ExplorerHome:
    return ExplorerHome.resolve(tmp_path / "home")


@pytest.fixture
def run(home):
    def invoke(*args: str):
        return CliRunner().invoke(cli, ["--home", str(home.root), "tour", *args], catch_exceptions=False)

    return invoke


def _hear(home: ExplorerHome, tour_id: str, label: str, at_s: float = 0.0) -> Detection:
    start = datetime(2026, 4, 20, 7, 40, tzinfo=timezone.utc) + timedelta(seconds=at_s)
    det = Detection(
        label=label, started_on=start, ended_on=start + timedelta(seconds=5), confidence=0.8,
        branch_scores={"perch": 0.8}, bundle_name="elsilencio-default", bundle_version="1.0.0",
        bundle_sha256="a" * 64, device_id="pi-h02", tour_id=tour_id, source="H02.ogg", start_s=at_s, end_s=at_s + 5,
    )  # fmt: skip
    with Store.open(home.database) as store:
        store.record_bundle("elsilencio-default", "1.0.0", "a" * 64, [TINAMOU, FROG])
        store.save_detection(det, final=True)
    return det


def test_start_then_a_second_start_names_the_active_tour(run, home):
    started = run("start", "--name", "Dawn chorus", "--guide", "Ana")
    assert started.exit_code == 0 and "Started tour 'Dawn chorus'" in started.output
    again = run("start", "--name", "Second")
    assert again.exit_code == 1 and "'Dawn chorus'" in again.output and "still active" in again.output
    with Store.open(home.database) as store:
        assert store.active_tour().guide == "Ana"


def test_stop_ends_the_tour_and_stopping_again_is_a_clear_error(run):
    run("start", "--name", "Dawn")
    stopped = run("stop")
    assert stopped.exit_code == 0 and "Stopped tour 'Dawn'" in stopped.output
    again = run("stop")
    assert again.exit_code == 1 and "no tour is active" in again.output


def test_list_shows_tours_newest_first_and_marks_the_active_one(run):
    assert "No tours yet" in run("list").output
    run("start", "--name", "First")
    run("stop")
    run("start", "--name", "Second")
    lines = run("list").output.splitlines()
    assert lines[0].split()[:2] == ["ID", "STARTED"]
    assert lines[1].startswith("*") and lines[1].endswith("Second")
    assert lines[2].startswith(" ") and lines[2].endswith("First")


def test_summary_of_the_latest_tour_names_species_and_the_rate(run, home):
    run("start", "--name", "Dawn")
    with Store.open(home.database) as store:
        tour_id = store.active_tour().tour_id
    _hear(home, tour_id, "littin1", 0)
    _hear(home, tour_id, "littin1", 60)
    _hear(home, tour_id, "21211", 120)
    run("stop")
    output = run("summary").output
    assert "Species Spotting Rate: 2.0 species per tour (2 unique species in all)" in output
    assert "Detections: 3" in output
    tinamou_line = next(line for line in output.splitlines() if "Little Tinamou" in line)
    assert tinamou_line.split()[0] == "2" and "(Crypturellus soui)" in tinamou_line


def test_summary_json_over_all_tours_excludes_rejected_detections(run, home):
    ids = []
    for name, labels in (("one", ["littin1", "21211"]), ("two", ["littin1"])):
        run("start", "--name", name)
        with Store.open(home.database) as store:
            ids.append(store.active_tour().tour_id)
        dets = [_hear(home, ids[-1], label, 10 * i) for i, label in enumerate(labels)]
        run("stop")
    with Store.open(home.database) as store:
        store.add_feedback(dets[0].detection_id, "reject")  # tour two's only detection
    data = json.loads(run("summary", "--all", "--json").output)
    assert data["tour_count"] == 2 and data["unique_species"] == 2
    assert data["species_spotting_rate"] == 1.0  # (2 + 0) / 2
    assert data["rejected_count"] == 1
    assert [t["unique_species"] for t in data["tours"]] == [0, 2]  # newest first
    by_id = json.loads(run("summary", ids[0][:8], "--json").output)
    assert by_id["tours"][0]["name"] == "one" and by_id["species_spotting_rate"] == 2.0


def test_summary_errors_are_clear(run):
    assert "no tours yet" in run("summary").output
    run("start")
    bad = run("summary", "zzzz")
    assert bad.exit_code == 1 and "no tour with id 'zzzz'" in bad.output
    both = run("summary", "x", "--all")
    assert both.exit_code == 2 and "not both" in both.output


@pytest.mark.parametrize("name", ["start", "stop", "list", "summary"])
def test_every_command_has_help_ending_with_an_example(name):
    command = tour.get_command(click.Context(tour), name)
    assert command.help and command.help.strip().splitlines()[-1].strip().startswith("explorer tour " + name)
    assert "Example:" in command.help
    assert tour.help.rstrip().splitlines()[-1].strip().startswith("explorer tour")
