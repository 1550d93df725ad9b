"""Bundles the device has used, and the species facts of their labels.

The detection row stores only the label (a bundle's `primary_label`, e.g. `littin1`).
Recording each bundle's label table when it is first used lets exports and tour summaries
name species ("Crypturellus soui", "Little Tinamou") with no bundle loaded, and after
the bundle that made a detection has been replaced.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from device.domain import iso_utc, utc_now

LABEL_FACTS = ("primary_label", "scientific_name", "common_name", "class_name")


@dataclass(frozen=True)
class LabelInfo:
    primary_label: str
    scientific_name: str
    common_name: str
    class_name: str


def row_to_label_info(row: dict) -> LabelInfo:
    return LabelInfo(
        primary_label=row["primary_label"],
        scientific_name=row["scientific_name"],
        common_name=row["common_name"],
        class_name=row["class_name"],
    )


def _label_fact(label: Any, key: str, index: int) -> str:
    value = label.get(key) if isinstance(label, Mapping) else getattr(label, key, None)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"labels[{index}].{key}: missing or empty")
    return value


class LabelCatalog:
    """Every recorded label's facts, looked up by label and (preferably) bundle."""

    def __init__(self, rows: Iterable[dict]):
        self._by_bundle: dict[tuple[str, str], LabelInfo] = {}
        self._latest: dict[str, LabelInfo] = {}
        # rows arrive oldest bundle first, so later bundles overwrite: `_latest` holds the newest.
        for row in rows:
            info = row_to_label_info(row)
            self._by_bundle[(row["sha256"], info.primary_label)] = info
            self._latest[info.primary_label] = info

    def get(self, label: str, bundle_sha256: str | None = None) -> LabelInfo | None:
        """The facts from the bundle that made the detection, else the newest bundle naming the label."""
        if bundle_sha256 is not None:
            found = self._by_bundle.get((bundle_sha256, label))
            if found is not None:
                return found
        return self._latest.get(label)

    def as_mapping(self) -> dict[str, LabelInfo]:
        """label -> facts from the newest bundle that names it (for `detection_to_payload`)."""
        return dict(self._latest)

    def __len__(self) -> int:
        return len(self._latest)


def load_label_catalog(db: sqlite_utils.Database) -> LabelCatalog:
    return LabelCatalog(
        db.query(
            """SELECT b.sha256, l.primary_label, l.scientific_name, l.common_name, l.class_name
               FROM bundle_label l JOIN bundle b ON b.bundle_id = l.bundle_id
               ORDER BY b.last_used_on, b.rowid, l.position"""
        )
    )


def label_info(db: sqlite_utils.Database, label: str, bundle_sha256: str | None) -> LabelInfo | None:
    """One label's facts (the same preference as `LabelCatalog.get`) without loading them all."""
    rows = list(
        db.query(
            """SELECT l.primary_label, l.scientific_name, l.common_name, l.class_name
               FROM bundle_label l JOIN bundle b ON b.bundle_id = l.bundle_id
               WHERE l.primary_label = ?
               ORDER BY b.sha256 = ? DESC, b.last_used_on DESC, b.rowid DESC LIMIT 1""",
            [label, bundle_sha256 or ""],
        )
    )
    return row_to_label_info(rows[0]) if rows else None


def record_bundle(
    db: sqlite_utils.Database, name: str, version: str, sha256: str, labels: Iterable[Any] = ()
) -> str:
    """Note that a bundle is in use; return its bundle_id (call inside a write transaction).

    The first call inserts the bundle with its labels; later calls move `last_used_on`
    forward and, when `labels` is given, replace the stored label facts.

    Args:
        labels: the manifest's labels (`device.bundle.manifest.Label`, or mappings with
            primary_label, scientific_name, common_name, class_name), in manifest order.

    Raises:
        ValueError: a bad sha256 or a label missing a fact.
    """
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"bundle {name!r}: sha256 {sha256!r} is not 64 lowercase hex digits")
    facts = [tuple(_label_fact(label, key, i) for key in LABEL_FACTS) for i, label in enumerate(labels)]
    now = iso_utc(utc_now())
    found = db.execute("SELECT bundle_id FROM bundle WHERE sha256 = ?", [sha256]).fetchone()
    if found:
        bundle_id = found[0]
        db.execute(
            "UPDATE bundle SET name = ?, version = ?, last_used_on = ? WHERE bundle_id = ?",
            [name, version, now, bundle_id],
        )
        if facts:
            db.execute("DELETE FROM bundle_label WHERE bundle_id = ?", [bundle_id])
    else:
        bundle_id = str(uuid.uuid4())
        db.execute(
            """INSERT INTO bundle (bundle_id, name, version, sha256, first_used_on, last_used_on)
               VALUES (?, ?, ?, ?, ?, ?)""",
            [bundle_id, name, version, sha256, now, now],
        )
    seen: set[str] = set()
    for position, (primary_label, scientific_name, common_name, class_name) in enumerate(facts):
        if primary_label in seen:
            raise ValueError(f"bundle {name!r}: label {primary_label!r} appears twice")
        seen.add(primary_label)
        db.execute(
            """INSERT INTO bundle_label (bundle_label_id, bundle_id, position, primary_label,
                   scientific_name, common_name, class_name) VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [str(uuid.uuid4()), bundle_id, position, primary_label, scientific_name, common_name, class_name],
        )
    return bundle_id
