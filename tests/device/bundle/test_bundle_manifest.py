"""parse_manifest refuses what the device cannot run, naming the key; signing does not help."""

from __future__ import annotations

import copy
import json

import pytest

from device.bundle.manifest import BundleError, parse_manifest
from device.bundle.verify import verify_bundle
from exporter.signing import sign_manifest


@pytest.fixture
def raw(demo_build):
    return json.loads((demo_build[0] / "manifest.json").read_text())


def refused(raw, match):
    with pytest.raises(BundleError, match=match):
        parse_manifest(raw)


def test_the_demo_manifest_parses(raw):
    manifest = parse_manifest(copy.deepcopy(raw))
    assert len(manifest.labels) == 15 and manifest.branches[0].input.window_samples == 160_000


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_an_unknown_schema_version_is_refused(raw, version):
    raw["schema_version"] = version
    refused(raw, "schema_version")


def test_a_duplicate_label_is_refused(raw):
    raw["labels"].append(dict(raw["labels"][3]))
    refused(raw, r"labels\[15\].primary_label: '21211' appears twice")


def test_an_unknown_class_is_refused(raw):
    raw["labels"][0]["class_name"] = "Reptilia"
    refused(raw, r"labels\[0\].class_name: 'Reptilia' is not one of")


def test_empty_labels_are_refused(raw):
    raw["labels"] = []
    refused(raw, "non-empty list")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("primary_label", "  ", "empty"), ("scientific_name", 7, "expected str"), ("primary_label", "a,b", "characters")],
)
def test_malformed_label_fields_are_refused(raw, field, value, match):
    raw["labels"][1][field] = value
    refused(raw, match)


def test_a_label_missing_a_field_is_refused(raw):
    del raw["labels"][2]["common_name"]
    refused(raw, r"labels\[2\].common_name: missing")


def test_scores_for_an_unlisted_label_are_refused(raw):
    raw["branches"][0]["outputs"]["scores"]["labels"][0] = "ghost1"
    refused(raw, "not in manifest.labels")


def test_a_front_end_outside_the_graph_is_refused(raw):
    raw["branches"][0]["input"]["front_end"]["in_graph"] = False
    refused(raw, "must be inside the ONNX graph")


def test_a_file_name_with_a_path_is_refused(raw):
    raw["branches"][0]["file"] = "../model.onnx"
    refused(raw, "not a plain file name")


def test_a_threshold_outside_zero_one_is_refused(raw):
    raw["thresholds"]["per_label"]["littin1"] = 1.5
    refused(raw, "outside")


def test_a_signed_but_malformed_manifest_still_fails_verification(bundle_copy):
    path = bundle_copy.path / "manifest.json"
    raw = json.loads(path.read_text())
    raw["labels"].append(dict(raw["labels"][0]))
    path.write_text(json.dumps(raw))
    sign_manifest(bundle_copy.path, bundle_copy.private_key)
    with pytest.raises(BundleError, match="appears twice"):
        verify_bundle(bundle_copy.path, bundle_copy.trust_dir)
