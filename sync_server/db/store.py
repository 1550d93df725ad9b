"""ServerStore: the aggregate database on SQLite (default) or PostgreSQL, one code path for both.

Every statement is built from one MetaData (`sync_server.db.schema`), so both engines get the
same tables and the same SQL. What differs between them is confined to four places, none of
which branches the logic of a batch:

- how a connection is set up (`sync_server.db.engine`): SQLite's pragmas and BEGIN IMMEDIATE,
  PostgreSQL's lock_timeout and pool_pre_ping;
- the dialect's `insert` construct, for `ON CONFLICT (...) DO NOTHING` (both engines speak that
  clause; SQLAlchemy spells it per dialect, with the same signature);
- `SELECT ... FOR UPDATE`, which SQLAlchemy renders on PostgreSQL and leaves out on SQLite,
  where BEGIN IMMEDIATE already gives the transaction the only write lock on the file;
- how the upsert's rows travel (`sync_server.db.upsert.insert_new`): new rows by COPY and one
  INSERT ... SELECT on PostgreSQL, one executemany on SQLite; the same insert, the same row
  count checked.

How one batch is written (`store_ingest`, one transaction): detections, verdicts and tours through
the one upsert of `sync_server.db.upsert` (read and lock what is stored, insert the new with
ON CONFLICT DO NOTHING, compare the rest: safe with several ingest workers writing the same
ids at once; read its docstring), the newest status per device where it is newer than the one
stored, then the refused messages, and commit. A lost race, a deadlock or a serialization
failure that PostgreSQL reports anyway is retried (a fresh transaction, outcomes recomputed);
every other failure raises ServerStoreError with nothing of the batch written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from device.domain import iso_utc, parse_iso_utc, utc_now
from sync_server.db.engine import READ_ONLY, Target, open_engine, parse_target
from sync_server.db.errors import ServerStoreError, failures_named
from device.domain import Status
from sync_server.db.records import (
    TOUR_COLUMNS, Counts, IngestResult, Rejected, RejectedRecord, detection_row, feedback_row, foreign_rejection,
    later_tour_state, rejected_row, status_row, tour_row,
)
from sync_server.db.schema import (
    DETECTION_COLUMNS, FEEDBACK_COLUMNS, clip, create_schema, detection, device_status, feedback, rejected_message,
    tour,
)
from sync_server.db.upsert import Keyed, LostRace, upsert

RETRIED_SQLSTATES = {"40P01", "40001"}
"""PostgreSQL's deadlock_detected and serialization_failure: the transaction was sound, only
unlucky; the ordered locking makes them unexpected, the retry makes them harmless."""
ATTEMPTS = 8
"""Transactions tried per batch: a lost race or a deadlock costs one more. Two workers taking
the same fresh ids in lockstep lose a race now and then; eight lost in a row would mean
something else is wrong."""
DETECTIONS = Keyed(detection, "detection_id", DETECTION_COLUMNS, detection_row, sequence="seq")
VERDICTS = Keyed(feedback, "feedback_id", FEEDBACK_COLUMNS, feedback_row)
TOURS = Keyed(tour, "tour_id", TOUR_COLUMNS, tour_row, merge=later_tour_state)
"""A tour's start and end are two states of one row: the end outranks the start, whichever
arrives last (`later_tour_state`)."""
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class ServerStore:
    """The aggregate database: every detection every device delivered, once, and what was refused.

    Open with `ServerStore.open(target)`; safe to share between threads (each call checks a
    connection out of the engine's pool) and between processes (see the module docstring).
    """

    def __init__(self, engine: Engine, target: Target):
        self._engine = engine
        self._target = target
        self.retries = 0
        """Batch transactions run again after a lost race or a deadlock (for metrics: a number
        that keeps growing means workers contend for the same ids all the time)."""

    @classmethod
    def open(cls, target: str | Path, *, must_exist: bool = False) -> "ServerStore":
        """Open (and create, if absent) the aggregate database at `target`.

        Args:
            target: a path or `sqlite:///path` (SQLite; parent folders are created), or
                `postgresql://user@host:port/database` (also `postgresql+psycopg://`).
            must_exist: refuse a SQLite file that does not exist yet, so a read-only look
                (`explorer-server status`) never leaves an empty database behind.

        Raises:
            ServerStoreError: naming the target and why (unknown scheme, bad URL, server
                unreachable, not a database file, no such file).
        """
        parsed = parse_target(target)
        if parsed.sqlite_path is not None:
            if must_exist and not parsed.sqlite_path.is_file():
                raise ServerStoreError(f"aggregate database {parsed.label}: no such file")
            with failures_named(parsed.label, "cannot create its folder"):
                parsed.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = open_engine(parsed)
        try:
            with failures_named(parsed.label, "cannot open it"), engine.begin() as connection:
                create_schema(connection)
        except ServerStoreError:
            engine.dispose()
            raise
        return cls(engine, parsed)

    @property
    def label(self) -> str:
        """The database as messages name it: its path, or its URL without the password."""
        return self._target.label

    @property
    def sqlite_path(self) -> Path | None:
        """The database file, for SQLite; None for PostgreSQL."""
        return self._target.sqlite_path

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._engine.dialect.name

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for read-only queries (tests, later the API); writes go
        through this class."""
        return self._engine

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> "ServerStore":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerStore({self.label!r})"

    def store_batch(self, detections: Sequence[dict[str, Any]], rejected: Sequence[Rejected] = ()) -> list[str]:
        """`store_ingest` with detections and refused messages only; the detections' outcomes."""
        return self.store_ingest(detections, (), (), rejected).detections

    def store_ingest(self, detections: Sequence[dict[str, Any]], verdicts: Sequence[dict[str, Any]],
                     statuses: Sequence[Status], rejected: Sequence[Rejected], clips: Sequence[Any] = (),
                     tours: Sequence[dict[str, Any]] = ()) -> IngestResult:
        """Store one ingest batch in one transaction.

        Args:
            detections: payloads `device.contracts.detection.parse_payload` has checked.
            verdicts: payloads `device.contracts.feedback.parse_feedback` has checked.
            statuses: checked statuses; each is kept only if newer than the device's stored one.
            rejected: messages refused before reaching here, kept with their reasons.
            clips: `sync_server.clips.ClipRecord`s of clips now whole on disk (kept once:
                a record seen again changes nothing).
            tours: payloads `device.contracts.tour.parse_tour` has checked (a tour's end is
                kept over its start, whatever order they come in).

        Returns:
            An outcome per detection, per verdict and per tour message, in order: 'inserted'; 'updated' (a newer
            state of a stored record); 'unchanged' (a resend: deliveries + 1, last_received_on
            now); 'foreign' (the id is stored for another device: left as it is, and the
            claim is recorded in rejected_message naming both devices).

        Raises:
            ServerStoreError: the database failed (disk full, server gone, locked past the
                timeout); nothing of the batch was written.
            KeyError: a payload lacks a field (it was not checked); raised before writing.
        """
        doing = (f"could not store a batch of {len(detections)} detections, {len(verdicts)} verdicts, "
                 f"{len(tours)} tour messages, {len(statuses)} statuses and {len(rejected)} refused messages")
        with failures_named(self.label, doing):
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    with self._engine.begin() as connection:
                        return self._write(connection, detections, verdicts, tours, statuses, rejected, clips,
                                           iso_utc(utc_now()))
                except (DBAPIError, LostRace) as exc:
                    if not _worth_retrying(exc):
                        raise
                    if attempt == ATTEMPTS:
                        raise ServerStoreError(f"aggregate database {self.label}: {doing}: still conflicting "
                                               f"with other writers after {ATTEMPTS} attempts ({exc})") from exc
                    self.retries += 1
        raise AssertionError("unreachable")

    def _write(self, connection: Connection, detections, verdicts, tours, statuses, rejected, clips,
               now: str) -> IngestResult:
        refused = list(rejected)
        outcomes = {}
        for kind, keyed, payloads in (("detection", DETECTIONS, detections), ("feedback", VERDICTS, verdicts),
                                      ("tour", TOURS, tours)):
            outcomes[kind] = upsert(connection, keyed, payloads, now)
            foreign = [p for p, outcome in zip(payloads, outcomes[kind]) if outcome == "foreign"]
            if foreign:
                owners = _owners(connection, keyed, [p[keyed.key] for p in foreign])
                refused.extend(foreign_rejection(kind, p, owners[p[keyed.key]]) for p in foreign)
        for status in statuses:
            self._keep_newest_status(connection, status, now)
        if clips:
            rows = [dict(record.__dict__, received_on=now) for record in clips]
            statement = (_INSERTS[connection.dialect.name](clip)
                         .on_conflict_do_nothing(index_elements=[clip.c.clip_id]))
            connection.execute(statement, rows)
        if refused:
            connection.execute(insert(rejected_message), [rejected_row(item, now) for item in refused])
        return IngestResult(outcomes["detection"], outcomes["feedback"], outcomes["tour"])

    def _keep_newest_status(self, connection: Connection, status: Status, now: str) -> None:
        """Upsert a device's status unless the stored one outranks it: ordered by connection
        (`connected_on`), then offline over online (a will outranks its own connection's online
        statuses, though its published_on is the connect time), then published_on. A retained
        status redelivered after a newer one never wins."""
        row = status_row(status, now)
        statement = _INSERTS[connection.dialect.name](device_status).values(row)
        stored, new = device_status.c, statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=[device_status.c.device_id],
            set_={name: statement.excluded[name] for name in row if name != "device_id"},
            where=tuple_(stored.connected_on, 1 - stored.online, stored.published_on)
            <= tuple_(new.connected_on, 1 - new.online, new.published_on),
        )
        connection.execute(statement)

    def counts(self) -> Counts:
        """How many detections, devices with detections, and refused messages are stored."""
        with self._reading("could not count what it holds") as connection:
            return Counts(
                detections=connection.scalar(select(func.count()).select_from(detection)),
                devices=connection.scalar(select(func.count(detection.c.device_id.distinct()))),
                rejected=connection.scalar(select(func.count()).select_from(rejected_message)),
            )

    def recent_rejections(self, limit: int = 5) -> list[RejectedRecord]:
        """The last `limit` refused messages, newest first."""
        query = select(rejected_message).order_by(rejected_message.c.rejected_id.desc()).limit(limit)
        with self._reading("could not read the refused messages") as connection:
            return [RejectedRecord(**row) for row in connection.execute(query).mappings()]

    def detection_ids(self, device_id: str | None = None) -> set[str]:
        """The ids of every stored detection (of one device, if given)."""
        query = select(detection.c.detection_id)
        if device_id is not None:
            query = query.where(detection.c.device_id == device_id)
        with self._reading("could not read the detection ids") as connection:
            return set(connection.execute(query).scalars())

    def feedback_ids(self, device_id: str | None = None) -> set[str]:
        """The ids of every stored verdict (of one device, if given)."""
        query = select(feedback.c.feedback_id)
        if device_id is not None:
            query = query.where(feedback.c.device_id == device_id)
        with self._reading("could not read the feedback ids") as connection:
            return set(connection.execute(query).scalars())

    def verdicts_on(self, detection_id: str) -> list[dict[str, Any]]:
        """The verdicts stored against one detection, oldest first (the last one counts)."""
        query = (select(*[feedback.c[name] for name in FEEDBACK_COLUMNS], feedback.c.deliveries)
                 .where(feedback.c.detection_id == detection_id).order_by(feedback.c.given_on, feedback.c.feedback_id))
        with self._reading("could not read the verdicts") as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def statuses(self) -> dict[str, tuple[Status, datetime]]:
        """Each device's newest status, with when the server received it."""
        from device.contracts.status import parse_status

        query = select(device_status.c.device_id, device_status.c.status_json, device_status.c.received_on)
        with self._reading("could not read the device statuses") as connection:
            rows = connection.execute(query).all()
        return {device_id: (parse_status(text), parse_iso_utc(received)) for device_id, text, received in rows}

    def tours_held(self, device_id: str | None = None) -> dict[str, dict[str, Any]]:
        """tour id -> its row, for every tour devices reported (of one device, if given)."""
        query = select(tour)
        if device_id is not None:
            query = query.where(tour.c.device_id == device_id)
        with self._reading("could not read the tours") as connection:
            return {row["tour_id"]: dict(row) for row in connection.execute(query).mappings()}

    def clips_held(self, device_id: str | None = None) -> dict[str, dict[str, Any]]:
        """clip id -> its row, for every clip the server holds whole (of one device, if given)."""
        query = select(clip)
        if device_id is not None:
            query = query.where(clip.c.device_id == device_id)
        with self._reading("could not read the clips") as connection:
            return {row["clip_id"]: dict(row) for row in connection.execute(query).mappings()}

    def wanted_clips(self, device_id: str, below: float, limit: int = 500) -> list[str]:
        """The device's detections under `below` confidence whose clip the server lacks, oldest
        first (what a clip request asks for); never one whose clip the device withheld (a person
        was heard: it kept no audio, so none will come)."""
        held = select(clip.c.detection_id).where(clip.c.device_id == device_id)
        query = (select(detection.c.detection_id)
                 .where(detection.c.device_id == device_id, detection.c.confidence < below,
                        detection.c.clip_withheld.is_(None), detection.c.detection_id.not_in(held))
                 .order_by(detection.c.started_on, detection.c.detection_id).limit(limit))
        with self._reading("could not read the clips wanted") as connection:
            return list(connection.execute(query).scalars())

    def newest_detection_by_device(self) -> dict[str, datetime]:
        """Each device's newest stored detection start (its lag is now minus this): one
        indexed lookup per device."""
        query = select(detection.c.device_id, func.max(detection.c.started_on)).group_by(detection.c.device_id)
        with self._reading("could not read the newest detections") as connection:
            return {device_id: parse_iso_utc(newest) for device_id, newest in connection.execute(query).all()}

    def newest_detection_on(self, device_id: str) -> datetime | None:
        """When the device's newest stored detection started (None: it has none).

        The start, not the end: (device_id, started_on) is indexed, so this stays one index
        lookup however many detections a device has sent; a device's lag read from it is at most
        one detection's length longer than from its end.
        """
        query = select(func.max(detection.c.started_on)).where(detection.c.device_id == device_id)
        with self._reading("could not read the newest detection") as connection:
            newest = connection.scalar(query)
        return None if newest is None else parse_iso_utc(newest)

    @contextmanager
    def _reading(self, doing: str) -> Iterator[Connection]:
        with failures_named(self.label, doing), self._engine.connect() as connection:
            connection.execution_options(**{READ_ONLY: True})
            with connection.begin():
                yield connection


def _owners(connection: Connection, keyed: Keyed, ids: list[str]) -> dict[str, str]:
    """Which device holds each of these ids (for naming both devices in a refusal)."""
    table = keyed.table
    query = select(table.c[keyed.key], table.c.device_id).where(table.c[keyed.key].in_(sorted(set(ids))))
    return dict(connection.execute(query).all())


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, LostRace):
        return True
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in RETRIED_SQLSTATES
