"""Detection rows: built from `device.domain.Detection` and back, and their lifecycle.

Lifecycle (the pipeline drives it from its one writer thread):

1. a label is first heard: `save_detection(det, final=False)` inserts the row as 'open',
   so the event is on disk within one commit of being heard;
2. each merged window: `save_detection(det, final=False)` updates the same row;
3. the event ends: `save_detection(det, final=True)` marks it 'closed' and queues its
   outbox message with the final payload, in the same transaction, so a detection is
   never closed without its message nor announced without being stored;
4. after a power cut: `recover_open_detections()` at start-up closes what was left open
   (close_reason 'recovered': the event may have been cut short) and queues their messages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from device.contracts.detection import detection_to_payload, detection_topic, payload_to_json
from device.domain import CLIP_WITHHELD_REASONS, Detection, iso_utc, parse_iso_utc, utc_now
from device.store.bundles import LabelCatalog, LabelInfo, label_info, load_label_catalog
from device.store.database import NotFoundError, StoreError
from device.store.outbox import enqueue

STATUSES = ("open", "closed")

# Columns written from a Detection (created_on is written once, on insert).
_DETECTION_COLUMNS = (
    "detection_id", "device_id", "tour_id", "label", "started_on", "ended_on", "start_s", "end_s",
    "peak_start_s", "confidence", "branch_scores", "bundle_name", "bundle_version", "bundle_sha256",
    "source", "window_count", "secondary", "status", "close_reason", "created_on", "updated_on", "closed_on",
    "site", "latitude", "longitude", "coordinate_uncertainty_m", "context_scores", "clip_withheld",
)  # fmt: skip
PLACE_COLUMNS = ("site", "latitude", "longitude", "coordinate_uncertainty_m")
"""The columns migration 4 added."""
PRIVACY_COLUMNS = ("context_scores", "clip_withheld")
"""The columns migration 5 added (the last of _DETECTION_COLUMNS)."""


def upsert_sql(columns: tuple[str, ...]) -> str:
    """The INSERT ... ON CONFLICT DO UPDATE that writes these columns of a detection row.

    A withheld clip stays withheld: once a row says `clip_withheld`, no later save clears it
    (whatever the caller's Detection holds), so no clip can be written for it afterwards."""
    def update(column: str) -> str:
        if column == "clip_withheld":
            return "clip_withheld = coalesce(detection.clip_withheld, excluded.clip_withheld)"
        return f"{column} = excluded.{column}"

    return "INSERT INTO detection ({cols}) VALUES ({marks}) ON CONFLICT (detection_id) DO UPDATE SET {updates}".format(
        cols=", ".join(columns),
        marks=", ".join("?" for _ in columns),
        updates=", ".join(update(c) for c in columns if c not in ("detection_id", "created_on")),
    )


_UPSERT = upsert_sql(_DETECTION_COLUMNS)


def _finite(value: float, name: str, det: Detection) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"detection {det.detection_id} ({det.label}): {name} is {value}, not a finite number")
    return value


def _context_json(det: Detection) -> str:
    scores = {}
    for name, score in det.context_scores.items():
        score = _finite(score, f"context score {name!r}", det)
        if not 0.0 <= score <= 1.0:
            raise ValueError(
                f"detection {det.detection_id} ({det.label}): context score {name!r} {score} is outside [0, 1]"
            )
        scores[str(name)] = score
    return json.dumps(scores, sort_keys=True, allow_nan=False)


def detection_to_row(det: Detection, *, status: str = "open", now: datetime | None = None) -> dict:
    """The `detection` row for a Detection.

    Branch scores become a JSON object with NaN (the branch does not score this label)
    written as null, since JSON has no NaN. Context scores become a JSON object too (a
    non-finite one never reaches a Detection: the engine leaves it out).

    Raises:
        ValueError: a value the row cannot hold (NaN confidence, unknown status...).
    """
    if status not in STATUSES:
        raise ValueError(f"detection status {status!r} is not one of {STATUSES}")
    confidence = _finite(det.confidence, "confidence", det)
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"detection {det.detection_id} ({det.label}): confidence {confidence} is outside [0, 1]")
    if det.window_count < 1:
        raise ValueError(f"detection {det.detection_id} ({det.label}): window_count {det.window_count} < 1")
    if det.clip_withheld is not None and det.clip_withheld not in CLIP_WITHHELD_REASONS:
        raise ValueError(f"detection {det.detection_id} ({det.label}): clip_withheld {det.clip_withheld!r} "
                         f"is not one of {CLIP_WITHHELD_REASONS}")
    scores = {}
    for branch, score in det.branch_scores.items():
        score = None if score is None else float(score)
        scores[str(branch)] = None if score is None or math.isnan(score) else score
    stamp = iso_utc(now or utc_now())
    closed = status == "closed"
    return {
        "detection_id": det.detection_id,
        "device_id": det.device_id,
        "tour_id": det.tour_id,
        "label": det.label,
        "started_on": iso_utc(det.started_on),
        "ended_on": iso_utc(det.ended_on),
        "start_s": _finite(det.start_s, "start_s", det),
        "end_s": _finite(det.end_s, "end_s", det),
        "peak_start_s": _finite(det.peak_start_s, "peak_start_s", det),
        "confidence": confidence,
        "branch_scores": json.dumps(scores, sort_keys=True, allow_nan=False),
        "bundle_name": det.bundle_name,
        "bundle_version": det.bundle_version,
        "bundle_sha256": det.bundle_sha256,
        "source": det.source,
        "window_count": int(det.window_count),
        "secondary": 1 if det.secondary else 0,
        "status": status,
        "close_reason": "ended" if closed else None,
        "created_on": stamp,
        "updated_on": stamp,
        "closed_on": stamp if closed else None,
        "site": det.site,
        "latitude": det.latitude,
        "longitude": det.longitude,
        "coordinate_uncertainty_m": det.coordinate_uncertainty_m,
        "context_scores": _context_json(det),
        "clip_withheld": det.clip_withheld,
    }


def row_to_detection(row: dict) -> Detection:
    """The Detection a `detection` row holds (null branch scores come back as NaN; a row
    logged before context scores were kept has none)."""
    scores = json.loads(row["branch_scores"])
    context = row.get("context_scores")
    return Detection(
        label=row["label"],
        started_on=parse_iso_utc(row["started_on"]),
        ended_on=parse_iso_utc(row["ended_on"]),
        confidence=row["confidence"],
        branch_scores={k: (math.nan if v is None else float(v)) for k, v in scores.items()},
        bundle_name=row["bundle_name"],
        bundle_version=row["bundle_version"],
        bundle_sha256=row["bundle_sha256"],
        device_id=row["device_id"],
        tour_id=row["tour_id"],
        source=row["source"],
        start_s=row["start_s"],
        end_s=row["end_s"],
        window_count=row["window_count"],
        detection_id=row["detection_id"],
        secondary=bool(row["secondary"]),
        peak_start_s=row["peak_start_s"],
        site=row.get("site"),
        latitude=row.get("latitude"),
        longitude=row.get("longitude"),
        coordinate_uncertainty_m=row.get("coordinate_uncertainty_m"),
        context_scores={k: float(v) for k, v in json.loads(context).items()} if context else {},
        clip_withheld=row.get("clip_withheld"),
    )


def _queue_final_message(db: sqlite_utils.Database, det: Detection) -> str:
    info = label_info(db, det.label, det.bundle_sha256)
    payload = detection_to_payload(det, {det.label: info} if info else None)
    return enqueue(db, detection_topic(det.device_id), payload_to_json(payload), det.detection_id)


def save_detection(db: sqlite_utils.Database, det: Detection, final: bool = False) -> str | None:
    """Insert or update a detection; when `final`, close it and queue its message.

    Call inside one write transaction. Returns the queued message_id when `final`, else None.
    Closing an already closed detection updates it and queues a second message with the
    newer payload (the server upserts on detection_id, so the newest wins).

    Raises:
        StoreError: the detection was closed and is being saved open again.
        NotFoundError: its tour_id names no tour.
        ValueError: a value the row or payload cannot hold (checked on every save, so a
            bad detection fails when first heard, not at its close).
    """
    found = db.execute("SELECT status FROM detection WHERE detection_id = ?", [det.detection_id]).fetchone()
    if found and found[0] == "closed" and not final:
        raise StoreError(f"detection {det.detection_id} ({det.label}) is already closed; it cannot be reopened")
    if det.tour_id is not None and db.execute("SELECT 1 FROM tour WHERE tour_id = ?", [det.tour_id]).fetchone() is None:
        raise NotFoundError(f"detection {det.detection_id} ({det.label}): no tour with id {det.tour_id!r}")
    row = detection_to_row(det, status="closed" if final else "open")
    if not final:
        detection_to_payload(det)  # validation only: the payload it will need at close
    db.execute(_UPSERT, [row[c] for c in _DETECTION_COLUMNS])
    return _queue_final_message(db, det) if final else None


def recover_open_detections(db: sqlite_utils.Database) -> int:
    """Close every detection left open (by a crash or power cut) and queue its message.

    Call inside one write transaction, at start-up before the pipeline saves anything.
    Returns how many were closed.
    """
    rows = list(db.query("SELECT * FROM detection WHERE status = 'open' ORDER BY started_on, rowid"))
    stamp = iso_utc(utc_now())
    for row in rows:
        db.execute(
            """UPDATE detection SET status = 'closed', close_reason = 'recovered', closed_on = ?, updated_on = ?
               WHERE detection_id = ?""",
            [stamp, stamp, row["detection_id"]],
        )
        _queue_final_message(db, row_to_detection(row))
    return len(rows)


def get_detection(db: sqlite_utils.Database, detection_id: str) -> Detection:
    rows = list(db.query("SELECT * FROM detection WHERE detection_id = ?", [detection_id]))
    if not rows:
        raise NotFoundError(f"no detection with id {detection_id!r}")
    return row_to_detection(rows[0])


def detection_status(db: sqlite_utils.Database, detection_id: str) -> str:
    found = db.execute("SELECT status FROM detection WHERE detection_id = ?", [detection_id]).fetchone()
    if found is None:
        raise NotFoundError(f"no detection with id {detection_id!r}")
    return found[0]


def _where(tour_id: str | None, since: datetime | None) -> tuple[str, list]:
    clauses, params = [], []
    if tour_id is not None:
        clauses.append("d.tour_id = ?")
        params.append(tour_id)
    if since is not None:
        clauses.append("d.started_on >= ?")  # iso_utc text sorts as time does
        params.append(iso_utc(since))
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def list_detections(
    db: sqlite_utils.Database, tour_id: str | None = None, since: datetime | None = None
) -> list[Detection]:
    """Detections (open and closed), oldest first, optionally of one tour and/or since a time."""
    where, params = _where(tour_id, since)
    sql = f"SELECT d.* FROM detection d {where} ORDER BY d.started_on, d.rowid"
    return [row_to_detection(row) for row in db.query(sql, params)]


@dataclass(frozen=True)
class DetectionRecord:
    """A detection with what the log knows around it: for exports and review screens."""

    detection: Detection
    status: str
    close_reason: str | None
    verdict: str | None
    """The guide's latest feedback ('confirm' / 'reject'), None when there is none."""
    clip_path: str | None
    """The detection's clip, unless it has none or retention deleted it."""
    clip_sample_rate_hz: int | None
    species: LabelInfo | None
    """Species facts from the bundle that made it (else the newest bundle naming the label)."""


def detection_records(
    db: sqlite_utils.Database,
    tour_id: str | None = None,
    since: datetime | None = None,
    catalog: LabelCatalog | None = None,
) -> list[DetectionRecord]:
    """Like `list_detections` (oldest first), with status, latest verdict, live clip and species facts."""
    where, params = _where(tour_id, since)
    sql = f"""
        SELECT d.*,
            (SELECT f.verdict FROM feedback f WHERE f.detection_id = d.detection_id
             ORDER BY f.created_on DESC, f.rowid DESC LIMIT 1) AS verdict,
            (SELECT c.path FROM clip c WHERE c.detection_id = d.detection_id AND c.deleted_on IS NULL
             ORDER BY c.created_on DESC, c.rowid DESC LIMIT 1) AS clip_path,
            (SELECT c.sample_rate_hz FROM clip c WHERE c.detection_id = d.detection_id AND c.deleted_on IS NULL
             ORDER BY c.created_on DESC, c.rowid DESC LIMIT 1) AS clip_sample_rate_hz
        FROM detection d {where}
        ORDER BY d.started_on, d.rowid
    """
    catalog = catalog or load_label_catalog(db)
    return [
        DetectionRecord(
            detection=row_to_detection(row),
            status=row["status"],
            close_reason=row["close_reason"],
            verdict=row["verdict"],
            clip_path=row["clip_path"],
            clip_sample_rate_hz=row["clip_sample_rate_hz"],
            species=catalog.get(row["label"], row["bundle_sha256"]),
        )
        for row in db.query(sql, params)
    ]


def last_detection_on(db: sqlite_utils.Database) -> datetime | None:
    """When the newest detection started, or None before the first."""
    found = db.execute("SELECT max(started_on) FROM detection").fetchone()
    return parse_iso_utc(found[0]) if found and found[0] else None
