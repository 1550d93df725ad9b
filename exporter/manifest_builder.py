"""Builders for the schema-v1 manifest dict, so no caller hand-writes the schema.

The builders fill in what can be derived (the branch's sample rate from its front end,
the fusion over every branch, label metadata from taxonomy.csv) and leave the file
hashes to `bundle_writer.write_bundle`, which computes them from the bytes it writes.
`device.bundle.manifest.parse_manifest` stays the judge of validity.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from device.bundle.manifest import SCHEMA_VERSION
from device.domain import iso_utc, utc_now
from exporter.frontend import LogMelParams

EXPORTER_VERSION = "0.1.0"


def labels_from_taxonomy(taxonomy_csv: Path, primary_labels: Iterable[str]) -> list[dict[str, str]]:
    """Manifest label entries for `primary_labels`, in taxonomy.csv's order.

    Names are stripped (BirdCLEF 2025's taxonomy carries a few trailing spaces).

    Raises:
        KeyError: a label is not in the taxonomy (named in the message).
    """
    wanted = set(primary_labels)
    entries = []
    with open(taxonomy_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["primary_label"] in wanted:
                entries.append(
                    {
                        "primary_label": row["primary_label"].strip(),
                        "scientific_name": row["scientific_name"].strip(),
                        "common_name": row["common_name"].strip(),
                        "class_name": row["class_name"].strip(),
                    }
                )
    missing = wanted - {entry["primary_label"] for entry in entries}
    if missing:
        raise KeyError(f"{taxonomy_csv}: labels {sorted(missing)} are not in the taxonomy")
    return entries


def branch_entry(
    *,
    name: str,
    file: str,
    front_end: Mapping[str, Any],
    window_samples: int,
    labels: Sequence[str],
    activation: str = "none",
    embedding_dim: int | None = None,
    mel: bool = True,
    precision: str = "fp32",
    threads: int = 1,
    input_name: str = "waveform",
    scores_output: str = "scores",
    embedding_output: str = "embedding",
    mel_output: str = "mel",
) -> dict[str, Any]:
    """One `branches[]` entry for a waveform-fed branch with an in-graph front end.

    Args:
        front_end: the manifest front-end dict the graph was built from (validated here).
        activation: what the device applies to `scores`; "none" when the graph ends in a
            sigmoid (see the manifest docstring).
        embedding_dim: size of the `embedding` output, or None when the graph has none.
        mel: whether the graph exposes its log-mel as `mel_output` (for the TUI).
    """
    params = LogMelParams.from_manifest(front_end)
    return {
        "name": name,
        "file": file,
        "sha256": None,
        "precision": precision,
        "threads": threads,
        "input": {
            "name": input_name,
            "kind": "waveform",
            "sample_rate_hz": params.sample_rate_hz,
            "window_samples": window_samples,
            "front_end": params.to_manifest(),
        },
        "outputs": {
            "scores": {"name": scores_output, "labels": list(labels), "activation": activation},
            "embedding": {"name": embedding_output, "dim": embedding_dim} if embedding_dim else None,
            "mel": {"name": mel_output, "bands": params.n_mels} if mel else None,
        },
    }


def build_manifest(
    *,
    name: str,
    version: str,
    labels: Sequence[Mapping[str, str]],
    branches: Sequence[Mapping[str, Any]],
    license: str,
    attribution: str,
    default_threshold: float = 0.5,
    per_label_thresholds: Mapping[str, float] | None = None,
    fusion: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    created_on: str | None = None,
) -> dict[str, Any]:
    """A schema-v1 manifest dict (file hashes still None: `write_bundle` fills them).

    With no `fusion`, a one-branch bundle uses the branch as is ("max" over one input) and
    a several-branch bundle takes the max across branches, requiring all of them.
    """
    branch_names = [branch["name"] for branch in branches]
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "created_on": created_on or iso_utc(utc_now()),
        "provenance": {"exporter_version": EXPORTER_VERSION, **(provenance or {})},
        "license": license,
        "attribution": attribution,
        "labels": [dict(label) for label in labels],
        "branches": [dict(branch) for branch in branches],
        "fusion": dict(fusion) if fusion else {"kind": "rule", "rule": "max", "required_branches": branch_names},
        "thresholds": {
            "default": float(default_threshold),
            "per_label": {label: float(value) for label, value in (per_label_thresholds or {}).items()},
        },
    }
