"""`Detector`: the decider and the merger wired from the manifest, the device's settings and the stamp."""

from __future__ import annotations

import numpy as np

from device.analysis import analyze_file
from device.config import DetectionSettings, DeviceSettings, Settings
from device.detect.decide import Decider, thresholds_for
from device.detect.detector import Detector
from device.detect.merge import EventMerger, EventStamp
from device.engine.loader import load_engine

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis (21211)


def test_it_is_the_thresholds_and_merge_the_settings_ask_for(device_home, shared_data):
    engine = load_engine(device_home, None)
    detection = DetectionSettings(thresholds={"21211": 0.9, "not-a-label": 0.1}, min_threshold=0.3, merge_gap_windows=1)
    settings = Settings(device=DeviceSettings(id="guide-pi-01"), detection=detection)
    detector = Detector.for_engine(engine, settings, tour_id="tour-1")
    np.testing.assert_array_equal(detector.decider.thresholds,
                                  thresholds_for(engine.manifest, detection.thresholds, detection.min_threshold))
    assert detector.decider.thresholds[engine.labels.index("21211")] == np.float32(0.9)
    assert detector.merger.gap_windows == 1
    assert detector.merger.stamp == EventStamp("guide-pi-01", engine.manifest.name, engine.manifest.version,
                                               engine.bundle.sha256, "tour-1", site="El Silencio Natural Reserve")


def test_it_finds_the_events_a_hand_wired_decider_and_merger_find(device_home, shared_data):
    engine = load_engine(device_home, None)
    predictions = list(analyze_file(engine, shared_data / FROG))
    detector = Detector.for_engine(engine, Settings())
    detector.set_tour("tour-2")
    stamp = EventStamp(Settings().device.id, engine.manifest.name, engine.manifest.version, engine.bundle.sha256,
                       "tour-2", site=Settings().device.site)
    decider, merger = Decider(engine.labels, thresholds_for(engine.manifest)), EventMerger(stamp)
    ours, theirs = [], []
    for prediction in predictions:
        ours += detector.push(prediction).closed
        theirs += merger.push(prediction, decider.decide(prediction)).closed
    ours += detector.flush()
    theirs += merger.flush()
    assert "21211" in {e.detection.label for e in ours}
    assert facts(ours) == facts(theirs)


def facts(events) -> list[tuple]:
    return [(e.detection.label, e.detection.start_s, e.detection.end_s, e.detection.confidence, e.detection.tour_id)
            for e in events]
