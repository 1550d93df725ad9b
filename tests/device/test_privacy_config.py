"""`[privacy]` in config.toml: on by default, its keys read, a bad value refused naming file and key."""

from __future__ import annotations

import pytest

from device.config import HUMAN_VOCAL_THRESHOLD, ConfigError, PrivacySettings, Settings, load_settings


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_privacy_is_on_by_default_and_suppression_off():
    privacy = Settings().privacy
    assert privacy == PrivacySettings()
    assert privacy.enabled and privacy.human_vocal_threshold == HUMAN_VOCAL_THRESHOLD == 0.05
    assert not privacy.suppress_while_loud and privacy.loud_threshold == 0.5
    assert privacy.loud_classes == ("Engine", "Siren", "Gun", "Fireworks")


def test_the_section_is_read(tmp_path):
    path = write(tmp_path, "[privacy]\nenabled = false\nhuman_vocal_threshold = 0.1\nsuppress_while_loud = true\n"
                           'loud_threshold = 0.6\nloud_classes = ["Engine", "Gun"]\n')
    privacy = load_settings(path).privacy
    assert privacy == PrivacySettings(enabled=False, human_vocal_threshold=0.1, suppress_while_loud=True,
                                      loud_threshold=0.6, loud_classes=("Engine", "Gun"))
    assert load_settings(write(tmp_path, "[privacy]\nhuman_vocal_threshold = 0\n")).privacy.human_vocal_threshold == 0.0


@pytest.mark.parametrize("text, problem", [
    ("human_vocal_threshold = 1.5", r"\[privacy\] human_vocal_threshold: 1.5 is above the maximum 1"),
    ('human_vocal_threshold = "low"', r"\[privacy\] human_vocal_threshold: expected float"),
    ("enabled = 1", r"\[privacy\] enabled: expected bool"),
    ('loud_classes = "Engine"', r"\[privacy\] loud_classes: expected a list of names"),
    ('loud_classes = ["Engine", 3]', r"\[privacy\] loud_classes: expected a list of names"),
    ("loud_threshold = -0.1", r"\[privacy\] loud_threshold: -0.1 is below the minimum 0"),
    ("voices = true", r"\[privacy\] voices: unknown key"),
])
def test_a_bad_value_is_refused_naming_file_and_key(tmp_path, text, problem):
    path = write(tmp_path, f"[privacy]\n{text}\n")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
