"""`input.min_sample_rate_hz`: the lowest recording rate a branch can use, in the manifest."""

from __future__ import annotations

import json

import pytest

from device.bundle.manifest import DEFAULT_MIN_SAMPLE_RATE_HZ, BundleError, parse_manifest


@pytest.fixture
def raw(demo_build):
    return json.loads((demo_build[0] / "manifest.json").read_text())


def test_a_branch_without_one_takes_the_default(raw):
    assert "min_sample_rate_hz" not in raw["branches"][0]["input"]
    assert parse_manifest(raw).branches[0].input.min_sample_rate_hz == DEFAULT_MIN_SAMPLE_RATE_HZ == 8000


def test_a_branch_may_raise_it(raw):
    raw["branches"][0]["input"]["min_sample_rate_hz"] = 16000
    assert parse_manifest(raw).branches[0].input.min_sample_rate_hz == 16000


@pytest.mark.parametrize("value, reason", [
    (0, "0 is not between 1 and the branch's own rate"),
    (48000, r"48000 is not between 1 and the branch's own rate \(32000 Hz\)"),
    ("8000", "expected int, got str"),
    (8000.5, "expected int, got float"),
])
def test_a_value_the_device_cannot_use_is_refused_naming_the_key(raw, value, reason):
    raw["branches"][0]["input"]["min_sample_rate_hz"] = value
    with pytest.raises(BundleError, match=rf"manifest.branches\[tiny\].input.min_sample_rate_hz: {reason}"):
        parse_manifest(raw)
