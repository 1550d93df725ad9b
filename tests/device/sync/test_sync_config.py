"""The [sync] keys the receipts and the status brought: defaults, and values refused by name."""

from __future__ import annotations

import pytest

from device.config import ConfigError, Settings, load_settings


def test_the_receipt_timeout_and_the_status_interval_have_their_defaults_and_can_be_set(tmp_path):
    assert (Settings().sync.receipt_timeout_s, Settings().sync.status_interval_s) == (600.0, 300.0)
    path = tmp_path / "config.toml"
    path.write_text("[sync]\nreceipt_timeout_s = 120\nstatus_interval_s = 60\n")
    settings = load_settings(path)
    assert (settings.sync.receipt_timeout_s, settings.sync.status_interval_s) == (120.0, 60.0)


@pytest.mark.parametrize("text,expected", [
    ("[sync]\nreceipt_timeout_s = 0\n", "[sync] receipt_timeout_s: 0.0 is below the minimum 1"),
    ("[sync]\nreceipt_timeout_s = 700000\n", "[sync] receipt_timeout_s: 700000.0 is above the maximum 604800"),
    ('[sync]\nreceipt_timeout_s = "10 min"\n', "[sync] receipt_timeout_s: expected float, got str"),
    ("[sync]\nstatus_interval_s = 0.5\n", "[sync] status_interval_s: 0.5 is below the minimum 1"),
])
def test_a_bad_value_is_refused_naming_the_file_and_key(tmp_path, text, expected):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert str(path) in str(error.value) and expected in str(error.value)
