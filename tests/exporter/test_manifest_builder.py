"""The manifest builders produce what device.bundle.manifest accepts, from the real taxonomy."""

from __future__ import annotations

import csv

import pytest

from device.bundle.manifest import parse_manifest
from exporter.frontend import DEFAULT_LOG_MEL, FrontEndError
from exporter.manifest_builder import branch_entry, build_manifest, labels_from_taxonomy


def test_labels_follow_taxonomy_order_with_names_and_class(shared_data):
    taxonomy = shared_data / "taxonomy.csv"
    labels = labels_from_taxonomy(taxonomy, ["littin1", "21211", "1564122"])
    order = [row["primary_label"] for row in csv.DictReader(open(taxonomy, newline="", encoding="utf-8"))]
    assert [label["primary_label"] for label in labels] == sorted(["littin1", "21211", "1564122"], key=order.index)
    by_id = {label["primary_label"]: label for label in labels}
    assert by_id["littin1"] == {
        "primary_label": "littin1", "scientific_name": "Crypturellus soui",
        "common_name": "Little Tinamou", "class_name": "Aves",
    }
    assert by_id["1564122"]["scientific_name"] == "Daedadelus waehnerorum", "trailing space stripped"


def test_unknown_labels_are_named(shared_data):
    with pytest.raises(KeyError, match="not-a-bird"):
        labels_from_taxonomy(shared_data / "taxonomy.csv", ["littin1", "not-a-bird"])


def test_a_built_manifest_parses_once_hashes_are_filled(shared_data):
    labels = labels_from_taxonomy(shared_data / "taxonomy.csv", ["21211", "littin1"])
    branch = branch_entry(
        name="b", file="b.onnx", front_end=DEFAULT_LOG_MEL, window_samples=160_000,
        labels=["21211", "littin1"], embedding_dim=128,
    )
    raw = build_manifest(
        name="t", version="1", labels=labels, branches=[branch], license="CC BY-NC-SA 4.0",
        attribution="test", per_label_thresholds={"littin1": 0.7},
    )
    assert branch["sha256"] is None
    raw["branches"][0]["sha256"] = "a" * 64
    manifest = parse_manifest(raw)
    assert manifest.branches[0].input.sample_rate_hz == 32_000
    assert manifest.branches[0].input.front_end.parameters["n_mels"] == 64
    assert manifest.branches[0].mel_output == "mel" and manifest.branches[0].embedding_dim == 128
    assert manifest.fusion.rule == "max" and manifest.fusion.required_branches == ("b",)
    assert manifest.threshold("littin1") == 0.7 and manifest.threshold("21211") == 0.5
    assert manifest.branches[0].activation == "none"


def test_a_branch_with_a_bad_front_end_is_refused():
    with pytest.raises(FrontEndError, match="n_fft"):
        branch_entry(name="b", file="b.onnx", front_end={**DEFAULT_LOG_MEL, "n_fft": 1000}, window_samples=160_000, labels=["x"])
