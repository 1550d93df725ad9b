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


def test_a_labels_training_support_is_read_and_few_recordings_are_marked(raw):
    raw["labels"][0]["training"] = {"recordings": 1, "seconds": 4.5, "sources": ["colombianfrogs/sounds"],
                                    "note": "one call"}
    raw["labels"][1]["training"] = {"recordings": 3, "seconds": 40, "sources": []}
    raw["labels"][2]["training"] = {"recordings": None, "seconds": None, "sources": ["BirdNET V2.4"]}
    manifest = parse_manifest(raw)
    first, second, third = (manifest.labels[i].training for i in range(3))
    assert (first.recordings, first.seconds, first.sources, first.note, first.few) == (
        1, 4.5, ("colombianfrogs/sounds",), "one call", True)
    assert second.seconds == 40.0 and not second.few  # three recordings are not "few"
    assert third.recordings is None and not third.few  # unknown is not marked few
    assert manifest.labels[3].training is None
    assert manifest.label(manifest.labels[1].primary_label).training == second


@pytest.mark.parametrize(("training", "match"), [
    ([], r"training: expected an object"), ({"recordings": -1}, r"training\.recordings: -1 is not a count"),
    ({"recordings": 1.5}, r"training\.recordings: 1.5 is not a count"),
    ({"seconds": float("nan")}, r"training\.seconds: nan is not a count"),
    ({"recordings": True}, r"training\.recordings: True is not a count"),
    ({"sources": "xc"}, r"training\.sources: expected a list"), ({"note": 3}, r"training\.note: expected a string"),
])
def test_malformed_training_support_is_refused(raw, training, match):
    raw["labels"][0]["training"] = training
    refused(raw, r"labels\[0\]\." + match)


def test_context_outputs_are_read_and_are_not_labels(raw):
    outputs = raw["branches"][0]["outputs"]
    outputs["context"] = {"name": "context_logits", "labels": ["Human vocal", "Dog", "Engine"]}
    manifest = parse_manifest(raw)
    branch = manifest.branches[0]
    assert (branch.context_output, branch.context_labels, branch.context_activation) == (
        "context_logits", ("Human vocal", "Dog", "Engine"), "sigmoid")
    assert manifest.context_labels == ("Human vocal", "Dog", "Engine")
    assert "Human vocal" not in manifest.label_ids


@pytest.mark.parametrize(("context", "match"), [
    ({"name": "c", "labels": []}, "non-empty list"), ({"name": "c", "labels": ["Dog", "Dog"]}, "appears twice"),
    ({"name": "c", "labels": ["a,b"]}, "names like"), ({"labels": ["Dog"]}, r"context\.name: missing"),
    ({"name": "c", "labels": ["Dog"], "activation": "relu"}, "'relu' is not one of"),
])
def test_malformed_context_outputs_are_refused(raw, context, match):
    raw["branches"][0]["outputs"]["context"] = context
    refused(raw, match)
