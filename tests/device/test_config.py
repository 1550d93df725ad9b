"""config.toml: defaults, file, flags; an invalid value is refused naming file, key and reason."""

from __future__ import annotations

import pytest

from device.config import ConfigError, Settings, load_settings
from tests.helpers import run_explorer


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_a_missing_file_gives_the_defaults(tmp_path):
    assert load_settings(tmp_path / "config.toml") == Settings()


def test_the_file_overrides_defaults_and_flags_override_the_file(tmp_path):
    path = write(tmp_path, '[device]\nid = "guide-pi-07"\n[audio]\nhop_s = 5\nmicrophone = "USB"\n'
                           '[detection]\nthresholds = { "21211" = 0.7 }\n')
    settings = load_settings(path)
    assert settings.device.id == "guide-pi-07" and settings.audio.hop_s == 5.0
    assert settings.detection.thresholds == {"21211": 0.7}
    flagged = settings.with_overrides(audio={"hop_s": 2.5, "microphone": None}, device={"id": None})
    assert flagged.audio.hop_s == 2.5 and flagged.audio.microphone == "USB" and flagged.device.id == "guide-pi-07"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[audio]\nhop_s = -1\n", "[audio] hop_s: -1.0 is below the minimum 0.25"),
        ('[audio]\nhop_s = "fast"\n', "[audio] hop_s: expected float, got str"),
        ("[device]\nlatitude = 123.0\n", "[device] latitude: 123.0 is above the maximum 90"),
        ("[detection]\nthresholds = { littin1 = 1.5 }\n", "[detection] thresholds.littin1: 1.5 is above the maximum 1"),
        ("[clips]\nbudget = 5\n", "[clips] budget: unknown key"),
        ("[sound]\nx = 1\n", "[sound]: unknown section"),
        ("[audio\nhop_s = 1\n", "not valid TOML"),
        ("[sync]\nport = 70000\n", "[sync] port: 70000 is above the maximum 65535"),
        ("[clips]\nenabled = 1\n", "[clips] enabled: expected bool, got int"),
    ],
)
def test_an_invalid_value_names_the_file_key_and_reason(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_run_refuses_to_start_on_an_invalid_config(device_home, shared_data):
    device_home.config_file.write_text("[audio]\nqueue_windows = 0\n")
    result = run_explorer("run", "--source", str(shared_data / "audio/birds/tico.wav"), "--headless", home=device_home)
    assert result.returncode != 0
    assert f"{device_home.config_file}: [audio] queue_windows: 0 is below the minimum 1" in result.stderr
    assert not device_home.database.exists()  # refused before anything was written
