"""`Store`: the device's log, one object per thread over one SQLite connection.

Each method is one transaction (writes) or one snapshot read, delegating to the module
for its noun (tours, detections, outbox, clips...). Every SQLite failure comes out as a
`StoreError` naming the database file; a failed write has rolled back, so what was
committed before is intact.

Threads: a Store is used by the thread that opened it (sqlite3 enforces this). The
pipeline's writer thread opens one; the TUI opens its own on its thread. `Store.open` on
an up-to-date database costs a few PRAGMAs, so opening one per thread (or per CLI
command) is cheap; WAL lets those readers run while the writer commits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import sqlite_utils

from device.domain import Detection, Receipt
from device.store import bundles, clips, detections, feedback, outbox, summary, tours, uploads, watched
from device.store.database import connect, guard, snapshot, transaction

T = TypeVar("T")


class Store:
    """The device's local log. Create with `Store.open(path)`; close it, or use `with`."""

    def __init__(self, db: sqlite_utils.Database, path: Path, device=None):
        self.db = db
        """The sqlite-utils Database (for read-only queries the methods do not cover)."""
        self.path = path
        self.device = device
        """The device's `[device]` settings (`device.config.DeviceSettings`), or None: who
        the tours started through this store are reported as (see device/store/tours.py)."""
        self._closed = False

    @classmethod
    def open(cls, path: Path | str, device=None) -> "Store":
        """Open (creating and migrating if needed) the database at `path`.

        Args:
            device: the device's `[device]` settings: the id and place its tours are reported
                with. Without them tours are recorded but not reported until a store that has
                them stops the tour (every command that starts or stops tours passes them).

        Raises:
            StoreError: not a database, unwritable, or written by a newer release.
        """
        path = Path(path)
        return cls(connect(path), path, device)

    def close(self) -> None:
        """Close the connection (from the thread that opened it); closing twice is harmless."""
        if not self._closed:
            self.db.close()
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    def _write(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        # guard wraps transaction: the rollback happens first, then the error is named.
        with guard(self.path, action), transaction(self.db):
            return fn(self.db, *args)

    def _read(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        with guard(self.path, action), snapshot(self.db):
            return fn(self.db, *args)

    # Tours -------------------------------------------------------------------------

    def start_tour(self, name: str | None = None, guide: str | None = None) -> tours.Tour:
        """Start a tour and queue its message (as this store's `device`). Raises
        `TourActiveError` (naming it) while another is active."""
        return self._write("starting a tour", tours.start_tour, name, guide, self.device)

    def stop_tour(self, tour_id: str | None = None) -> tours.Tour:
        """End the active tour, or the one named, and queue its message. Raises `StoreError`
        when there is none to stop."""
        return self._write("stopping a tour", tours.stop_tour, tour_id, self.device)

    def active_tour(self) -> tours.Tour | None:
        return self._read("reading the active tour", tours.active_tour)

    def tour(self, tour_id: str) -> tours.Tour:
        """One tour by id, or by a unique prefix of it (the CLI shows 8 characters)."""
        return self._read("reading a tour", lambda db: tours.get_tour(db, tours.resolve_tour_id(db, tour_id)))

    def list_tours(self) -> list[tours.Tour]:
        """Every tour, newest first."""
        return self._read("listing tours", tours.list_tours)

    def tour_summary(self, tour_ids: Sequence[str]) -> summary.TourSummary:
        """Species heard and the Species Spotting Rate over these tours (ids or unique prefixes).

        Detections whose latest feedback is 'reject' do not count (see device.store.summary).
        """

        def run(db: sqlite_utils.Database) -> summary.TourSummary:
            return summary.tour_summary(db, [tours.resolve_tour_id(db, t) for t in tour_ids])

        return self._read("summarising tours", run)

    # Detections --------------------------------------------------------------------

    def save_detection(self, det: Detection, final: bool = False) -> str | None:
        """Insert/update a detection as 'open'; with `final`, close it and queue its message.

        Returns the outbox message_id when `final`, else None. See device.store.detections.
        """
        action = f"saving detection {det.detection_id} ({det.label})"
        return self._write(action, detections.save_detection, det, final)

    def recover_open_detections(self) -> int:
        """Close detections a crash left open and queue their messages; return how many.

        Call at start-up, before the pipeline saves anything.
        """
        return self._write("recovering open detections", detections.recover_open_detections)

    def last_detection_on(self) -> datetime | None:
        """When the newest detection started (the started_on index answers max() at once)."""
        return self._read("reading the newest detection", detections.last_detection_on)

    def detection(self, detection_id: str) -> Detection:
        """One detection. Raises `NotFoundError` for an unknown id."""
        return self._read("reading a detection", detections.get_detection, detection_id)

    def detection_status(self, detection_id: str) -> str:
        """'open' or 'closed'. Raises `NotFoundError` for an unknown id."""
        return self._read("reading a detection", detections.detection_status, detection_id)

    def detections(self, tour_id: str | None = None, since: datetime | None = None) -> list[Detection]:
        """Detections oldest first, optionally of one tour and/or started at or after `since`."""
        return self._read("listing detections", detections.list_detections, tour_id, since)

    def detection_records(
        self, tour_id: str | None = None, since: datetime | None = None
    ) -> list[detections.DetectionRecord]:
        """Detections with status, latest verdict, live clip and species facts (for exports)."""
        return self._read("listing detections", detections.detection_records, tour_id, since)

    # Feedback ----------------------------------------------------------------------

    def add_feedback(self, detection_id: str, verdict: str, note: str | None = None) -> feedback.Feedback:
        """Record a guide's 'confirm' or 'reject' and queue its outbox message, in one transaction.

        Raises `NotFoundError` for an unknown detection."""
        return self._write("recording feedback", feedback.add_feedback, detection_id, verdict, note)

    def feedback_for(self, detection_id: str) -> list[feedback.Feedback]:
        """Every verdict on a detection, oldest first."""
        return self._read("reading feedback", feedback.feedback_for, detection_id)

    # Bundles -----------------------------------------------------------------------

    def record_bundle(self, name: str, version: str, sha256: str, labels: Iterable[Any] = ()) -> str:
        """Note a bundle in use and its labels' species facts; return its bundle_id."""
        action = f"recording bundle {name} {version}"
        return self._write(action, bundles.record_bundle, name, version, sha256, list(labels))

    def label_catalog(self) -> bundles.LabelCatalog:
        """Species facts of every label of every bundle recorded."""
        return self._read("reading labels", bundles.load_label_catalog)

    # Outbox ------------------------------------------------------------------------

    def pending_messages(self, limit: int = 100, destination: str | None = None,
                         receipt_timeout_s: float = outbox.RECEIPT_TIMEOUT_S,
                         after: tuple[str, int] = outbox.START) -> list[outbox.OutboxMessage]:
        """Pending messages (no receipt, no PUBACK within the receipt timeout), oldest first,
        from just after `after` (a message's `position`). See device.store.outbox."""
        return self._read("reading the outbox", outbox.pending_messages, limit, destination, receipt_timeout_s, after)

    def open_messages(self, limit: int = 100, after: tuple[str, int] = outbox.START) -> list[outbox.OutboxMessage]:
        """Every message no receipt has confirmed or refused, oldest first (`explorer sync` by hand)."""
        return self._read("reading the outbox", outbox.open_messages, limit, after)

    def pending_count(self, destination: str | None = None, receipt_timeout_s: float = outbox.RECEIPT_TIMEOUT_S) -> int:
        return self._read("reading the outbox", outbox.pending_count, destination, receipt_timeout_s)

    def outbox_open_counts(self, destination: str | None = None,
                           receipt_timeout_s: float = outbox.RECEIPT_TIMEOUT_S) -> outbox.OutboxCounts:
        """Pending and unconfirmed counts only (cheap: an index of the open rows)."""
        return self._read("reading the outbox", outbox.open_counts, destination, receipt_timeout_s)

    def outbox_counts(self, destination: str | None = None,
                      receipt_timeout_s: float = outbox.RECEIPT_TIMEOUT_S) -> outbox.OutboxCounts:
        """Pending, unconfirmed, confirmed and refused counts (scans the outbox)."""
        return self._read("reading the outbox", outbox.state_counts, destination, receipt_timeout_s)

    def not_confirmed_count(self) -> int:
        """Messages the server has not confirmed (nor refused) yet: what the guide's status line shows."""
        return self._read("reading the outbox", outbox.not_confirmed_count)

    def message_states(self, message_ids: Iterable[str]) -> dict[str, str]:
        """message_id -> 'confirmed', 'refused' or 'open'."""
        return self._read("reading the outbox", outbox.message_states, list(message_ids))

    def record_attempt(self, message_id: str, destination: str, ok: bool, detail: str | None = None) -> str:
        """Append a delivery attempt (SUCCESS when `ok`); return its attempt_id."""
        return self._write("recording a delivery attempt", outbox.record_attempt, message_id, destination, ok, detail)

    def record_attempts(self, attempts: list[tuple[str, str, bool, str | None]]) -> list[str]:
        """Append (message_id, destination, ok, detail) attempts in one transaction; return their ids."""
        return self._write("recording delivery attempts", outbox.record_attempts, attempts)

    def apply_receipts(self, receipts: Sequence[Receipt]) -> outbox.ReceiptOutcome:
        """Mark what the server's receipts name confirmed or refused, in one transaction."""
        return self._write("applying receipts", outbox.apply_receipts, list(receipts))

    def refusals(self, limit: int = 10) -> list[tuple[str, str, datetime, str]]:
        """The newest refused messages: (kind, record_id, refused_on, reason)."""
        return self._read("reading the outbox", outbox.refusals, limit)

    def last_delivery_on(self) -> datetime | None:
        """When a message was last delivered (its newest SUCCESS attempt, any destination), or None."""
        return self._read("reading the outbox", outbox.last_delivery_on)

    def last_confirmed_on(self) -> datetime | None:
        """When a receipt last confirmed a message, or None."""
        return self._read("reading the outbox", outbox.last_confirmed_on)

    # Clips -------------------------------------------------------------------------

    def add_clip(
        self,
        detection_id: str,
        path: Path | str,
        duration_s: float,
        sample_rate_hz: int,
        size_bytes: int | None = None,
        start_s: float | None = None,
    ) -> clips.Clip:
        """Record a clip file already on disk (see `device.store.clips.write_clip`).

        `size_bytes` defaults to the file's size, `start_s` to the detection's peak window
        start. Raises `NotFoundError` for an unknown detection.
        """
        args = (detection_id, path, duration_s, sample_rate_hz, size_bytes, start_s)
        return self._write("recording a clip", clips.add_clip, *args)

    def save_clip(
        self,
        clips_dir: Path | str,
        detection: Detection,
        samples: np.ndarray,
        sample_rate_hz: int,
        start_s: float | None = None,
    ) -> Path:
        """Write a detection's clip as FLAC (atomically) and record it; return its path.

        Args:
            start_s: offset of the first sample within the source; default the detection's
                peak window start (`peak_start_s`).

        Raises:
            ClipWithheldError: the detection's clip is withheld (`clip_withheld`, on the
                Detection or its row): nothing is written.
            StoreError: the disk is full or the write failed; no partial file is left, and
                no file is left without its row.
        """
        clips.refuse_withheld(detection.detection_id, detection.clip_withheld or self._read(
            "reading a detection", lambda db: clips.withheld_reason(db, detection.detection_id)))
        path = clips.write_clip(clips_dir, detection, samples, sample_rate_hz)
        try:
            self.add_clip(detection.detection_id, path, len(samples) / sample_rate_hz, sample_rate_hz, None, start_s)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def list_clips(self, detection_id: str | None = None, include_deleted: bool = False) -> list[clips.Clip]:
        return self._read("listing clips", clips.list_clips, detection_id, include_deleted)

    def enforce_clip_budget(self, budget_bytes: int, keep_per_species: int) -> clips.ClipBudgetResult:
        """Delete the oldest clips until they fit `budget_bytes`, keeping `keep_per_species` per label.

        Detections are never deleted: a clip's row gets `deleted_on` (committed first),
        then its file is removed.
        """

        def plan_and_mark(db: sqlite_utils.Database) -> tuple[list[clips.Clip], int]:
            doomed, remaining = clips.plan_clip_deletions(db, budget_bytes, keep_per_species)
            clips.mark_clips_deleted(db, [c.clip_id for c in doomed])
            return doomed, remaining

        doomed, remaining = self._write("enforcing the clip budget", plan_and_mark)
        for clip in doomed:
            try:
                os.unlink(clip.path)
            except FileNotFoundError:
                pass
        return clips.ClipBudgetResult(
            deleted=tuple(c.path for c in doomed), live_bytes=remaining, over_budget=remaining > budget_bytes
        )

    def sweep_orphan_clips(self, clips_dir: Path | str) -> clips.SweepResult:
        """Remove clip files a crash left without a live row (see `clips.sweep_orphan_clips`)."""
        return self._read("sweeping orphan clips", clips.sweep_orphan_clips, clips_dir)

    # Clip upload (device/store/uploads.py: what each call means) ----------------------

    def clip_upload_candidates(self, limit: int) -> list[uploads.UploadCandidate]:
        """Wanted clips not finished: judged first, then requested, each oldest first."""
        return self._read("reading the clips to upload", uploads.upload_candidates, limit)

    def begin_clip_upload(self, clip_id: str, sha256: str, size_bytes: int, now: datetime) -> None:
        self._write("starting a clip upload", uploads.begin_upload, clip_id, sha256, size_bytes, now)

    def mark_clip_gone(self, clip_id: str, size_bytes: int, reason: str, now: datetime) -> None:
        self._write("marking a clip gone", uploads.mark_gone, clip_id, size_bytes, reason, now)

    def reserve_clip_chunk(self, clip_id: str, expected: tuple[int, int], end: int, wire_bytes: int,
                           budget_bytes: int, now: datetime) -> str:
        """'ok' (in flight, counted against today's budget), 'budget' or 'moved'."""
        args = (clip_id, expected, end, wire_bytes, budget_bytes, now)
        return self._write("reserving a clip chunk", uploads.reserve_chunk, *args)

    def unsend_clip_chunk(self, clip_id: str, end: int, now: datetime) -> None:
        self._write("recording an unsent clip chunk", uploads.unsend_chunk, clip_id, end, now)

    def apply_clip_messages(self, acks: Sequence[Any], requests: Sequence[Any], now: datetime) -> uploads.AckOutcome:
        """Apply the server's clip acks and newest clip request, in one transaction."""
        return self._write("applying clip acks", uploads.apply_clip_messages, list(acks), list(requests), now)

    def clip_bytes_sent_on(self, day: str) -> int:
        return self._read("reading the clip budget", uploads.bytes_sent_on, day)

    def clip_upload_counts(self, now: datetime) -> uploads.UploadCounts:
        return self._read("counting clip uploads", uploads.upload_counts, now)

    def clip_upload(self, clip_id: str) -> uploads.ClipUpload | None:
        return self._read("reading a clip upload", uploads.clip_upload, clip_id)

    def requested_clip_ids(self) -> set[str]:
        return self._read("reading the clip request", uploads.requested_ids)

    # Watch folder ------------------------------------------------------------------

    def watched_file_status(self, path: Path | str, size: int, mtime: float) -> str | None:
        """'processing' / 'done' / 'failed' for this exact file, or None (new or changed: process it)."""
        return self._read("reading watched files", watched.watched_file_status, path, size, mtime)

    def watched_file_done(self, path: Path | str, size: int, mtime: float) -> bool:
        """Whether this version of the file was handled ('done' or 'failed'): the watcher's `is_done`.

        A 'failed' file is not retried until it changes (a corrupt recording stays corrupt);
        one left 'processing' by a crash is retried.
        """
        return self.watched_file_status(path, size, mtime) in ("done", "failed")

    def mark_watched_file(
        self,
        path: Path | str,
        size: int,
        mtime: float,
        status: str,
        result: Path | str | None = None,
        detail: str | None = None,
    ) -> None:
        """Record a watched file's state: 'processing' before, 'done' or 'failed' after.

        Args:
            result: what processing produced: the result CSV's path when 'done', the reason
                when 'failed' (stored as the detail).
            detail: a note kept with the row (e.g. the error when 'failed').
        """
        if status == "done":
            result_csv, note = result, detail
        else:
            result_csv, note = None, detail or (str(result) if result is not None else None)
        args = (path, size, mtime, status, result_csv, note)
        self._write(f"recording watched file {path}", watched.mark_watched_file, *args)

    def save_watched_file_results(
        self, path: Path | str, size: int, mtime: float, results: Sequence[Detection], result_csv: Path | str
    ) -> list[str]:
        """Store a watched file's detections (closed, each with its outbox message) and mark
        the file 'done', all in ONE transaction; return the queued message ids.

        A crash before the commit leaves none of it (the file is still 'processing' and is
        analysed again from scratch); a crash after leaves all of it. So a file's detections
        are stored, and synced, exactly once. Write the result CSV before calling this.

        Raises:
            StoreError: the write failed and was rolled back (nothing of the file is stored).
            ValueError: a detection the row or payload cannot hold (rolled back likewise).
        """

        def save(db: sqlite_utils.Database) -> list[str]:
            message_ids = [detections.save_detection(db, det, True) for det in results]
            watched.mark_watched_file(db, path, size, mtime, "done", result_csv)
            return message_ids

        return self._write(f"storing the results of watched file {path}", save)

    def watched_file(self, path: Path | str) -> watched.WatchedFile | None:
        return self._read("reading watched files", watched.watched_file, path)
