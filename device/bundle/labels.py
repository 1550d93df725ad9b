"""The manifest's labels: what each names, and how much audio taught the bundle it.

`manifest.labels` is a subset of BirdCLEF 2025 taxonomy.csv in its order; each label may say
how it was trained (`training`), so a researcher sees which labels are thinly supported and
the guide's detail screen marks the few-recording ones (see device/bundle/manifest.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from device.bundle.fields import BundleError, _count, _need

KNOWN_CLASSES = ("Aves", "Amphibia", "Insecta", "Mammalia")
FEW_TRAINING_RECORDINGS = 3
"""Fewer independent recordings than this and a label is marked "few training recordings": with
one or two, every training window came from one or two individuals, microphones and places, and
held-out recall on a new recording says little (exporter/artefacts/README.md)."""
@dataclass(frozen=True)
class TrainingSupport:
    """How much audio taught the bundle one label, and where it came from."""

    recordings: int | None
    """Independent recordings (None: the source does not say, e.g. BirdNET's own classes)."""
    seconds: float | None
    sources: tuple[str, ...] = ()
    note: str = ""
    """What a researcher should know (e.g. "short edited clips of one captive animal")."""

    @property
    def few(self) -> bool:
        """Whether the guide's screen should mark the label "few training recordings"."""
        return self.recordings is not None and self.recordings < FEW_TRAINING_RECORDINGS


@dataclass(frozen=True)
class Label:
    primary_label: str
    scientific_name: str
    common_name: str
    class_name: str
    training: TrainingSupport | None = None
    """None: the manifest does not say (bundles built before labels carried it)."""


def _parse_training(raw: Any, where: str) -> TrainingSupport | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: expected an object")
    sources = raw.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise BundleError(f"{where}.sources: expected a list of strings")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise BundleError(f"{where}.note: expected a string")
    return TrainingSupport(recordings=_count(raw.get("recordings"), int, f"{where}.recordings"),
                           seconds=_count(raw.get("seconds"), float, f"{where}.seconds"),
                           sources=tuple(sources), note=note)


def _parse_labels(raw: Any) -> tuple[Label, ...]:
    if not isinstance(raw, list) or not raw:
        raise BundleError("manifest.labels: expected a non-empty list")
    labels, seen = [], set()
    for i, item in enumerate(raw):
        where = f"manifest.labels[{i}]"
        label = Label(
            primary_label=_need(item, "primary_label", str, where),
            scientific_name=_need(item, "scientific_name", str, where),
            common_name=_need(item, "common_name", str, where),
            class_name=_need(item, "class_name", str, where),
            training=_parse_training(item.get("training"), f"{where}.training"),
        )
        if label.class_name not in KNOWN_CLASSES:
            raise BundleError(f"{where}.class_name: {label.class_name!r} is not one of {KNOWN_CLASSES}")
        if label.primary_label in seen:
            raise BundleError(f"{where}.primary_label: {label.primary_label!r} appears twice")
        if any(c in label.primary_label for c in ",\n\r\t\"") or label.primary_label != label.primary_label.strip():
            raise BundleError(f"{where}.primary_label: {label.primary_label!r} holds characters a label may not")
        seen.add(label.primary_label)
        labels.append(label)
    return tuple(labels)
