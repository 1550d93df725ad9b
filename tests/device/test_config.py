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


def test_the_devices_place_is_read_with_its_uncertainty(tmp_path):
    path = write(tmp_path, '[device]\nsite = "El Silencio Natural Reserve"\nlatitude = 6.23\nlongitude = -74.71\n'
                           "coordinate_uncertainty_m = 100\n")
    device = load_settings(path).device
    assert (device.site, device.latitude, device.longitude, device.coordinate_uncertainty_m) == (
        "El Silencio Natural Reserve", 6.23, -74.71, 100.0)
    assert Settings().device.coordinate_uncertainty_m == 1000.0  # a carried device's beat (the docstring says why)


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
        ('[device]\nid = "guide pi 01"\n', "[device] id: 'guide pi 01' is not a device id (1-64 of A-Z"),
        ('[device]\nid = ""\n', "[device] id: '' is not a device id"),
        (f'[device]\nid = "{"p" * 65}"\n', "is not a device id"),
        ('[device]\nid = "-pi"\n', "starting with a letter or digit"),
        ('[sync]\nenabled = true\nhost = " "\n', "[sync] host: empty while [sync] enabled is true"),
        ("[device]\nlatitude = 6.23\n", "[device] longitude: missing while [device] latitude is set"),
        ("[device]\nlongitude = -74.71\n", "[device] latitude: missing while [device] longitude is set"),
        ("[device]\ncoordinate_uncertainty_m = 0\n", "[device] coordinate_uncertainty_m: 0.0 must be above 0"),
        ("[device]\ncoordinate_uncertainty_m = 3e7\n", "[device] coordinate_uncertainty_m: 30000000.0 is above"),
        (f'[device]\nsite = "{"s" * 129}"\n', "[device] site: 129 characters is over the 128-character limit"),
        ('[device]\nsite = "H\\u000202"\n', "[device] site: holds control characters"),
        ('[sync]\nenabled = true\ntls = true\nca_file = "/nonexistent/ca.crt"\n',
         "[sync] ca_file: /nonexistent/ca.crt is not a readable file (tls is on)"),
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


def test_the_device_id_rule_is_the_wire_contracts(tmp_path):
    """Every id config.toml accepts, the detection payload accepts, and every one it refuses, the
    payload refuses too: one rule (device.contracts.checks), not two that drift."""
    from device.contracts.checks import check_device_id

    for candidate in ("guide-pi-01", "pi.h02:mic_2", "A", "x" * 64, "guide pi 01", "pi/02", "", "x" * 65, "_pi", "pi\u00e9"):
        try:
            check_device_id(candidate, "id")
            wire_ok = True
        except ValueError:
            wire_ok = False
        path = write(tmp_path, f"[device]\nid = {candidate!r}\n".replace("'", '"'))
        try:
            load_settings(path)
            config_ok = True
        except ConfigError:
            config_ok = False
        assert config_ok == wire_ok, candidate


@pytest.mark.parametrize("where", ["file", "flag"])
def test_run_refuses_a_device_id_the_wire_refuses_before_analysing_anything(device_home, shared_data, where):
    flags = []
    if where == "file":
        device_home.config_file.write_text('[device]\nid = "guide pi 01"\n')
        expected = f"{device_home.config_file}: [device] id: 'guide pi 01' is not a device id"
    else:
        flags = ["--device-id", "guide pi 01"]
        expected = "flags: [device] id: 'guide pi 01' is not a device id"
    result = run_explorer("run", "--source", str(shared_data / "audio/birds/tico.wav"), "--headless", *flags,
                          home=device_home)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "windows" not in result.stdout  # refused at start, not reported at the end
    assert not device_home.database.exists()
