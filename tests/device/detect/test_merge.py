"""Consecutive windows with the same label merge into one detection event."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import soundfile as sf

from device.detect.decide import Decider
from device.detect.merge import EventMerger, EventStamp
from device.domain import Prediction, Window

LABELS = ("21211", "65448", "littin1")
T0 = datetime(2023, 4, 20, 7, 40, tzinfo=timezone.utc)


def real_window(shared_data, index: int, hop_s: float = 2.5) -> Window:
    audio, rate = sf.read(shared_data / "audio/elsilencio_soundscape/H02_20230420_074000.ogg", dtype="float32")
    start = round(index * hop_s * rate)
    return Window(
        samples=audio[start : start + 5 * rate],
        sample_rate_hz=rate,
        start_s=index * hop_s,
        started_on=T0 + timedelta(seconds=index * hop_s),
        source="H02",
        index=index,
    )


def prediction(window: Window, scores) -> Prediction:
    scores = np.asarray(scores, dtype=np.float32)
    return Prediction(window=window, labels=LABELS, scores=scores, branch_scores={"tiny": scores})


def test_primary_is_top_score_and_secondaries_are_over_threshold(shared_data):
    decider = Decider(LABELS, np.array([0.5, 0.3, 0.9], dtype=np.float32))
    heard = decider.decide(prediction(real_window(shared_data, 0), [0.6, 0.7, 0.8]))
    assert [(h.label, h.primary) for h in heard] == [("65448", True), ("21211", False)]
    assert decider.decide(prediction(real_window(shared_data, 0), [0.1, 0.2, 0.3])) == []


def test_overlapping_windows_merge_into_one_event_with_peak_and_count(shared_data):
    decider = Decider(LABELS, np.full(3, 0.5, dtype=np.float32))
    merger = EventMerger(EventStamp("dev-1", "demo", "1", "ab" * 32, tour_id="t1"))
    series = [[0.9, 0, 0], [0.95, 0, 0], [0.7, 0, 0], [0.1, 0, 0]]
    opened, closed = [], []
    for i, scores in enumerate(series):
        p = prediction(real_window(shared_data, i), scores)
        result = merger.push(p, decider.decide(p))
        opened += result.opened
        closed += result.closed
    assert len(opened) == 1 and len(closed) == 1
    event = closed[0]
    d = event.detection
    assert d.label == "21211" and d.window_count == 3
    assert d.confidence == np.float32(0.95)
    assert d.started_on == T0 and d.ended_on == T0 + timedelta(seconds=2 * 2.5 + 5)
    assert (d.start_s, d.end_s, d.peak_start_s) == (0.0, 10.0, 2.5)
    assert d.tour_id == "t1" and d.device_id == "dev-1"
    # the clip keeps the audio of the peak window, not the first one
    np.testing.assert_array_equal(event.peak_audio, real_window(shared_data, 1).samples)


def test_gap_windows_keep_an_event_open_and_flush_closes_it(shared_data):
    decider = Decider(LABELS, np.full(3, 0.5, dtype=np.float32))
    merger = EventMerger(EventStamp("dev-1", "demo", "1", "ab" * 32), gap_windows=1)
    for i, scores in enumerate([[0.9, 0, 0], [0.1, 0, 0], [0.8, 0, 0]]):
        p = prediction(real_window(shared_data, i), scores)
        assert merger.push(p, decider.decide(p)).closed == []
    (event,) = merger.flush()
    assert event.detection.window_count == 2 and merger.open == {}


def test_an_event_is_secondary_only_if_its_label_never_topped_a_window(shared_data):
    decider = Decider(LABELS, np.full(3, 0.5, dtype=np.float32))
    merger = EventMerger(EventStamp("dev-1", "demo", "1", "ab" * 32))
    for i, scores in enumerate([[0.6, 0.9, 0], [0.9, 0.6, 0]]):
        p = prediction(real_window(shared_data, i), scores)
        merger.push(p, decider.decide(p))
    events = {e.detection.label: e.detection for e in merger.flush()}
    assert events["21211"].secondary is False and events["65448"].secondary is False


def test_every_event_carries_the_devices_site_and_coordinates_and_uncertainty_only_with_them(shared_data):
    from device.config import DeviceSettings

    placed = EventStamp.for_device(DeviceSettings(id="dev-1", site="El Silencio Natural Reserve", latitude=6.23,
                                                  longitude=-74.71), "demo", "1", "ab" * 32, tour_id="t1")
    merger = EventMerger(placed)
    p = prediction(real_window(shared_data, 0), [0.9, 0, 0])
    [event] = merger.push(p, Decider(LABELS, np.full(3, 0.5, dtype=np.float32)).decide(p)).opened
    d = event.detection
    assert (d.device_id, d.site, d.latitude, d.longitude, d.coordinate_uncertainty_m) == (
        "dev-1", "El Silencio Natural Reserve", 6.23, -74.71, 1000.0)  # the default uncertainty, with coordinates
    unplaced = EventStamp.for_device(DeviceSettings(id="dev-1", site=" ", coordinate_uncertainty_m=50.0),
                                     "demo", "1", "ab" * 32)
    assert (unplaced.site, unplaced.latitude, unplaced.longitude, unplaced.coordinate_uncertainty_m) == (None,) * 4
