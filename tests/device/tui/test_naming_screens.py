"""The guide's screens name a family as a family, mark thinly trained labels, and count withheld clips.

- A cicada in the log (label 50186, family Cicadidae, its taxonomy facts recorded with the bundle,
  its detection on a real cicada recording) reads "a cicada" / "family Cicadidae" on the main
  list, the detail screen and the tour summary, upright, never as a species.
- The detail screen shows "few training recordings (1)" for a label whose bundle manifest says it
  was taught by one recording: a real signed bundle (the demo head, its manifest given training
  support) runs the real trail recording; a label the manifest says is well supported, or says
  nothing of, has no mark. The phone view shows the same mark from the home's active bundle.
- The status bar counts clips the privacy filter withheld, only when there are any.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from device.domain import Detection
from device.store import Store
from device.tui.screens.species import SpeciesScreen
from device.tui.screens.summary import SummaryScreen
from device.tui.status import DeviceStatus
from device.tui.viewer import SnapshotFeed, ViewerApp, active_manifest, species_from_log
from device.tui.widgets.review_table import SpeciesTable
from device.tui.widgets.status_bar import status_items
from tests.device.tui.tui_helpers import drive, fixed_clock, settle

CICADA = {"primary_label": "50186", "scientific_name": "Cicadidae", "common_name": "Typical Cicadas", "class_name": "Insecta"}
TINAMOU = {"primary_label": "littin1", "scientific_name": "Crypturellus soui", "common_name": "Little Tinamou",
           "class_name": "Aves"}
T0 = datetime(2026, 4, 20, 19, 40, tzinfo=timezone.utc)


def _detection(label: str, source: str, start_s: float, tour_id: str) -> Detection:
    start = T0 + timedelta(seconds=start_s)
    return Detection(label=label, started_on=start, ended_on=start + timedelta(seconds=5), confidence=0.72,
                     branch_scores={"head": 0.72}, bundle_name="elsilencio-default", bundle_version="1.3.0",
                     bundle_sha256="c" * 64, device_id="pi-h02", tour_id=tour_id, source=source, start_s=start_s,
                     end_s=start_s + 5)


def shown(static: Static):
    """What a Static was last given to show (a rich Text here)."""
    return static.content


def italic_spans(text) -> list[str]:
    return [text.plain[span.start:span.end] for span in text.spans if "italic" in str(span.style)]


def test_a_family_reads_as_a_family_on_the_list_the_detail_and_the_summary(tmp_path, shared_data):
    cicada_source = str(shared_data / "audio" / "insects" / "minetest_sounds_cicada_01.ogg")
    store = Store.open(tmp_path / "explorer.db")
    store.record_bundle("elsilencio-default", "1.3.0", "c" * 64, [CICADA, TINAMOU])
    tour = store.start_tour(name="Night walk")
    store.save_detection(_detection("littin1", str(shared_data / "audio" / "birds" / "Cryp.soui.wav"), 0.0,
                                    tour.tour_id), final=True)
    store.save_detection(_detection("50186", cicada_source, 30.0, tour.tour_id), final=True)
    app = ViewerApp(SnapshotFeed(tmp_path / "no-state-yet.json", store), store, species_from_log(store), tour,
                    can_review=True, can_play=False, clock=fixed_clock(T0 + timedelta(minutes=1)), tz=timezone.utc)
    seen = {}

    async def scenario(pilot):
        await settle(pilot, app)
        table = app.screen.query_one(SpeciesTable)
        assert table.current_key == "50186"  # heard last: on top
        seen["list"] = table.get_row("50186")[2]
        seen["list_tinamou"] = table.get_row("littin1")[2]
        await pilot.press("c")  # the guide confirms it
        await pilot.pause()
        seen["notes"] = [n.message for n in app._notifications]
        await pilot.press("enter")
        assert isinstance(app.screen, SpeciesScreen)
        seen["detail"] = shown(app.screen.query_one("#common", Static))
        seen["few_mark_shown"] = app.screen.query_one("#training", Static).display
        await pilot.press("escape", "s")
        await pilot.pause()
        assert isinstance(app.screen, SummaryScreen)
        summary = app.screen.query_one(DataTable)
        seen["summary"] = summary.get_row("50186")[1]
        seen["summary_tinamou"] = summary.get_row("littin1")[1]

    drive(app, scenario, size=(100, 30))
    store.close()
    assert seen["list"].plain == "a cicada\nfamily Cicadidae" and italic_spans(seen["list"]) == []
    assert seen["list_tinamou"].plain == "Little Tinamou\nCrypturellus soui"
    assert italic_spans(seen["list_tinamou"]) == ["\nCrypturellus soui"]  # a species as before
    assert any(note.startswith("Confirmed: a cicada heard at") for note in seen["notes"]), seen["notes"]
    assert seen["detail"].plain.startswith("a cicada  family Cicadidae  ✱ insect") and italic_spans(seen["detail"]) == []
    assert seen["few_mark_shown"] is False  # the log says nothing of training: no mark
    assert seen["summary"].plain == "a cicada  family Cicadidae" and italic_spans(seen["summary"]) == []
    assert seen["summary_tinamou"].plain == "Little Tinamou  Crypturellus soui"
    for text in (seen["list"], seen["detail"], seen["summary"]):
        assert "Typical Cicadas" not in text.plain  # the family's plural never stands where a species' name does


# -- "few training recordings" ----------------------------------------------------------------

FEW_LABEL = "555086"  # Boana boans, the trail's first call
WELL_SUPPORTED = "littin1"
TRAINING = {
    FEW_LABEL: {"recordings": 1, "seconds": 41.5, "sources": ["colombianfrogs/sounds"],
                "note": "one advertisement call recording"},
    WELL_SUPPORTED: {"recordings": 6, "seconds": 310.0, "sources": ["xeno-canto"]},
}


def install_demo_with_training(home, training: dict) -> Path:
    """The demo head as a real signed bundle whose manifest states training support for some labels,
    made active in `home` (the demo's own builder with the labels' `training` filled in)."""
    from exporter.bundle_writer import write_bundle
    from exporter.demo_bundle import ARTEFACT, NAME, ONNX_FILE, demo_manifest, development_key, example_recordings, head_check
    from exporter.frontend import LogMelParams
    from exporter.linear_head import build_linear_head_model
    from exporter.head_artefacts import POOLING, TinyHead

    head = TinyHead.load(ARTEFACT)
    digest = hashlib.sha256(ARTEFACT.read_bytes()).hexdigest()
    manifest = demo_manifest(head, f"0.1.0+few{digest[:8]}", digest)
    for label in manifest["labels"]:
        if label["primary_label"] in training:
            label["training"] = training[label["primary_label"]]
    params = LogMelParams.from_manifest(head.front_end)
    model = build_linear_head_model(params, head.window_samples, head.mean, head.scale, head.weights, head.bias, POOLING)
    target = home.bundles / f"{NAME}-few-training"
    write_bundle(target, manifest, {ONNX_FILE: model.SerializeToString()}, development_key(home),
                 [head_check(head, example_recordings())])
    home.set_active_bundle(target)
    return target


@pytest.fixture
def few_runtime(device_home, trail_recording):
    """The trail heard through the bundle whose manifest marks Boana boans as taught by one recording."""
    from device.audio.files import FileSource
    from device.config import Settings
    from device.engine.loader import load_engine
    from device.tui.run import TuiRuntime

    bundle = install_demo_with_training(device_home, TRAINING)
    engine = load_engine(device_home, bundle, 1)
    runtime = TuiRuntime(device_home, Settings(), engine, FileSource(trail_recording), live=False, tour_name="Dawn")
    yield runtime
    runtime.close()


async def open_detail(pilot, app, label: str) -> Static:
    table = app.screen.query_one(SpeciesTable)
    table.move_cursor(row=table.get_row_index(label))
    await pilot.press("enter")
    await pilot.pause()
    assert isinstance(app.screen, SpeciesScreen) and app.screen.label == label
    return app.screen.query_one("#training", Static)


def test_the_detail_screen_marks_a_label_the_manifest_says_few_recordings_taught(few_runtime, device_home):
    runtime = few_runtime
    labels = {label.primary_label: label for label in runtime.engine.manifest.labels}
    assert labels[FEW_LABEL].training.few and not labels[WELL_SUPPORTED].training.few
    assert labels["65448"].training is None  # the manifest says nothing of this one
    app = runtime.app()
    seen = {}

    async def scenario(pilot):
        assert runtime.pipeline.wait(60), "the trail was not analysed within 60 s"
        await settle(pilot, app)
        heard = {row.label for row in app.board.rows()}
        assert {FEW_LABEL, WELL_SUPPORTED, "65448"} <= heard
        for label in (FEW_LABEL, WELL_SUPPORTED, "65448"):
            mark = await open_detail(pilot, app, label)
            seen[label] = (mark.display, shown(mark))
            await pilot.press("escape")
            await pilot.pause()

    drive(app, scenario, size=(80, 24))
    display, text = seen[FEW_LABEL]
    assert display and "few training recordings (1)" in str(text)
    assert seen[WELL_SUPPORTED][0] is False and seen["65448"][0] is False

    # The phone view reads the same mark from the home's active bundle (the log keeps no training facts).
    store = Store.open(device_home.database)
    manifest = active_manifest(device_home)
    assert manifest is not None and manifest.version.startswith("0.1.0+few")
    viewer = ViewerApp(SnapshotFeed(device_home.root / "no-state.json", store), store,
                       species_from_log(store, manifest), store.active_tour(), can_review=False, can_play=False)

    async def phone(pilot):
        await settle(pilot, viewer)
        mark = await open_detail(pilot, viewer, FEW_LABEL)
        seen["phone"] = (mark.display, str(shown(mark)))

    drive(viewer, phone)
    store.close()
    assert seen["phone"][0] and "few training recordings (1)" in seen["phone"][1]


def test_a_home_without_a_readable_active_bundle_gives_the_phone_view_no_manifest(tmp_path):
    from device.home import ExplorerHome

    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    assert active_manifest(home) is None
    broken = home.bundles / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json", encoding="utf-8")
    home.set_active_bundle(broken)
    assert active_manifest(home) is None  # named from the log instead; the view still opens


# -- clips withheld ------------------------------------------------------------------------------

QUIET = DeviceStatus(source="mic:pulse", source_state="capturing", bundle="elsilencio-default 1.3.0", rtf=0.007,
                     windows_inferred=40, pending_sync=0)


def test_the_status_bar_counts_withheld_clips_only_when_there_are_any():
    words = [text for text, _ in status_items(QUIET, timezone.utc)]
    assert not any("withheld" in w for w in words)
    items = dict(status_items(dataclasses.replace(QUIET, clips_withheld=3), timezone.utc))
    assert items["3 clips withheld for privacy"] == ""  # the filter doing its job: no warning style
    assert "1 clip withheld for privacy" in dict(status_items(dataclasses.replace(QUIET, clips_withheld=1), None))


def test_the_collector_reads_the_pipelines_withheld_count_and_the_phone_view_carries_it(
        runtime_factory, trail_recording):
    runtime = runtime_factory(trail_recording)
    assert runtime.pipeline.wait(60)
    collector = runtime.collector
    pipeline = collector.pipeline
    assert collector.collect().clips_withheld == pipeline.status().clips_withheld == 0  # the demo bundle scores no voices

    class Withholding:
        """The pipeline's own status, with the privacy filter's count set."""

        def status(self):
            return dataclasses.replace(pipeline.status(), clips_withheld=2)

    collector.pipeline = Withholding()
    status = collector.collect()
    assert status.clips_withheld == 2
    assert DeviceStatus.from_dict(status.to_dict()).clips_withheld == 2  # through the phone view's state file
    assert DeviceStatus.from_dict({k: v for k, v in status.to_dict().items() if k != "clips_withheld"}).clips_withheld == 0

