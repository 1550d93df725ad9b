"""The privacy filter's rules, on the real default bundle's predictions of real speech and a real
frog: what `[privacy]` turns on and off, and how it fails (closed for people, open for loud)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from device.analysis import file_windows
from device.bundle.verify import verify_bundle
from device.config import PrivacySettings, Settings
from device.detect.detector import Detector
from device.detect.privacy import HUMAN_VOCAL, PrivacyFilter
from device.engine.engine import Engine

SPEECH = "audio/negatives/whisper_jfk_speech.flac"
FROG = "audio/colombian_frogs/Boana_pugnax.wav"
THUNDER = "audio/negatives/minetest_sounds_thunder_01.ogg"


@pytest.fixture(scope="module")
def predictions(default_home_template, shared_data):
    from device.home import ExplorerHome

    home = ExplorerHome.resolve(default_home_template)
    engine = Engine(verify_bundle(home.active_bundle(), home.trusted_keys), threads=1)
    return engine, {name: [engine.predict(w) for w in file_windows(shared_data / path)]
                    for name, path in (("speech", SPEECH), ("frog", FROG), ("thunder", THUNDER))}


def test_speech_is_private_a_frog_is_not_and_off_means_off(predictions):
    engine, heard = predictions
    on = PrivacyFilter(PrivacySettings(), engine.context_labels)
    assert all(on.judge(p).private for p in heard["speech"])
    assert not any(on.judge(p).private for p in heard["frog"] + heard["thunder"])
    off = PrivacyFilter(PrivacySettings(enabled=False), engine.context_labels)
    assert not any(off.judge(p).private for p in heard["speech"])


def test_the_threshold_is_a_strict_over(predictions):
    engine, heard = predictions
    score = heard["speech"][0].context[HUMAN_VOCAL]
    assert not PrivacyFilter(PrivacySettings(human_vocal_threshold=score), engine.context_labels).judge(
        heard["speech"][0]).private
    assert PrivacyFilter(PrivacySettings(human_vocal_threshold=score - 1e-6), engine.context_labels).judge(
        heard["speech"][0]).private


def test_a_window_missing_its_human_vocal_score_is_private(predictions):
    engine, heard = predictions
    frog = heard["frog"][0]
    unscored = replace(frog, context={k: v for k, v in frog.context.items() if k != HUMAN_VOCAL})
    assert PrivacyFilter(PrivacySettings(), engine.context_labels).judge(unscored).private


def test_a_bundle_that_cannot_hear_people_withholds_nothing_and_says_so(predictions, caplog):
    engine, heard = predictions
    with caplog.at_level(logging.WARNING, logger="device.detect.privacy"):
        blind = PrivacyFilter(PrivacySettings(), ())
    assert "no 'Human vocal' output" in caplog.text and not blind.hears_people
    assert not any(blind.judge(replace(p, context={})).private for p in heard["speech"])


def test_loud_suppression_is_off_by_default_and_names_the_class_when_on(predictions):
    engine, heard = predictions
    thunder = heard["thunder"][0]  # BirdNET's Fireworks: 0.922
    assert PrivacyFilter(PrivacySettings(), engine.context_labels).judge(thunder).loud is None
    loud = PrivacyFilter(PrivacySettings(suppress_while_loud=True), engine.context_labels)
    assert loud.judge(thunder).loud == "Fireworks"
    assert not any(loud.judge(p).loud for p in heard["frog"] + heard["speech"])
    # A class the bundle lacks never suppresses (fail open: an option, not a guarantee).
    lacking = PrivacyFilter(PrivacySettings(suppress_while_loud=True), tuple(n for n in engine.context_labels
                                                                            if n != "Fireworks"))
    assert lacking.judge(thunder).loud is None


def test_a_loud_window_hears_nothing_and_closes_what_was_open(predictions):
    engine, heard = predictions
    settings = Settings(privacy=PrivacySettings(suppress_while_loud=True))
    detector = Detector.for_engine(engine, settings)
    opened = detector.push(heard["frog"][0]).opened
    assert opened  # the frog is heard
    merged = detector.push(heard["thunder"][0])
    assert merged.suppressed == "Fireworks" and merged.opened == [] and merged.extended == []
    assert [e.detection.label for e in merged.closed] == [e.detection.label for e in opened]
