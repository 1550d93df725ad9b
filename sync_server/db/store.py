"""ServerStore: the aggregate database on SQLite (default) or PostgreSQL, one code path for both.

Every statement is SQLAlchemy Core built from one MetaData (`sync_server.db.schema`), so both
engines get the same tables and the same SQL. What differs between them is confined to three
places, none of which branches the logic of a batch:

- how a connection is set up (`sync_server.db.engine`): SQLite's pragmas and BEGIN IMMEDIATE,
  PostgreSQL's lock_timeout and pool_pre_ping;
- the dialect's `insert` construct, for `ON CONFLICT (detection_id) DO NOTHING` (both engines
  speak that clause; SQLAlchemy spells it per dialect, with the same signature);
- `SELECT ... FOR UPDATE`, which SQLAlchemy renders on PostgreSQL and leaves out on SQLite,
  where BEGIN IMMEDIATE already gives the transaction the only write lock on the file.

How one batch is written (`store_batch`, one transaction), and why it is safe with several
ingest worker processes writing the same detection ids at the same moment:

1. Read the stored rows for the batch's ids with `FOR UPDATE`, sorted by id (so two workers
   take their locks in the same order and cannot deadlock each other). From here to the
   commit nobody else can change them.
2. Insert the ids not found with `ON CONFLICT (detection_id) DO NOTHING`, sorted too. If
   another transaction inserts one of them meanwhile, PostgreSQL makes ours wait for it to
   commit (ours then does nothing) or roll back (ours then inserts): never a duplicate, never
   an aborting unique violation. The statement's row count (summed over the batch) says
   whether every new id was ours; if not, the transaction is rolled back and run again, and
   its read in step 1 now finds the other writer's row. Each retry moves at least one id from
   "new" to "stored", so retries are few and always end.
3. Walk the batch in order in Python, comparing each payload with the row it meets (the same
   id twice in one batch meets the state the first one left): 'unchanged' (a resend),
   'updated' (a newer state of the same detection) or 'foreign' (the stored device_id is
   another device's: the row is not touched, and the claim is recorded in rejected_message
   naming both devices). Then one UPDATE per touched id: `deliveries = deliveries + n`
   applied by the database, the new content only where it changed.
4. Insert the refused messages, and commit. Any failure rolls all of it back.

A deadlock or serialization failure that PostgreSQL reports anyway is retried too (a fresh
transaction, outcomes recomputed); every other failure raises ServerStoreError with nothing of
the batch written.

Why not `INSERT ... ON CONFLICT DO UPDATE ... WHERE detection.device_id = excluded.device_id
RETURNING`: it is as safe, but RETURNING shows only the new row, so it cannot tell a resend
from an update; and psycopg parses a multi-row statement's placeholders anew every time (its
cache stops at 50 parameters), which made a 500-detection RETURNING insert about twice as slow
as the pipelined executemany used here (86 ms against 33-40 ms on PostgreSQL 15, loopback).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from device.domain import iso_utc, parse_iso_utc, utc_now
from sync_server.db.engine import READ_ONLY, Target, open_engine, parse_target
from sync_server.db.errors import ServerStoreError, failures_named
from sync_server.db.records import Counts, Rejected, RejectedRecord, detection_row, foreign_rejection, rejected_row
from sync_server.db.schema import DETECTION_COLUMNS, create_schema, detection, rejected_message

OUTCOMES = ("inserted", "updated", "unchanged", "foreign")
RETRIED_SQLSTATES = {"40P01", "40001"}
"""PostgreSQL's deadlock_detected and serialization_failure: the transaction was sound, only
unlucky; the ordered locking makes them unexpected, the retry makes them harmless."""
ATTEMPTS = 8
"""Transactions tried per batch: a lost race (step 2) or a deadlock costs one more. Two workers
taking the same fresh ids in lockstep lose a race now and then; eight lost in a row would mean
something else is wrong."""
IDS_PER_SELECT = 500
"""Ids per `IN (...)`: well under SQLite's bound-parameter limit, however large a batch."""
_KEEP = ("detection_id", "device_id")
_CHANGED = tuple(name for name in DETECTION_COLUMNS if name not in _KEEP)
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class _LostRace(Exception):
    """Another writer committed one of the batch's new ids between our read and our insert
    (PostgreSQL only: SQLite has one writer at a time). Started again, the read finds it."""


class ServerStore:
    """The aggregate database: every detection every device delivered, once, and what was refused.

    Open with `ServerStore.open(target)`; safe to share between threads (each call checks a
    connection out of the engine's pool) and between processes (see the module docstring).
    """

    def __init__(self, engine: Engine, target: Target):
        self._engine = engine
        self._target = target
        self._insert_new = (_INSERTS[engine.dialect.name](detection)
                            .on_conflict_do_nothing(index_elements=[detection.c.detection_id])
                            .execution_options(preserve_rowcount=True))
        """Insert unless stored. Its rowcount, the rows really inserted summed over the batch,
        tells whether another writer won the race for one of them."""
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
        """Store checked detection payloads and refused messages in one transaction.

        Args:
            detections: payloads `device.contracts.detection.parse_payload` has checked.
            rejected: messages refused before reaching here, kept with their reasons.

        Returns:
            One outcome per detection, in order: 'inserted'; 'updated' (a newer state of a
            stored detection); 'unchanged' (a resend: deliveries + 1, last_received_on now);
            'foreign' (the id is stored for another device: left as it is, and the claim is
            recorded in rejected_message naming both devices).

        Raises:
            ServerStoreError: the database failed (disk full, server gone, locked past the
                timeout); nothing of the batch was written.
            KeyError: a payload lacks a field (it was not checked); raised before writing.
        """
        rows = [detection_row(payload) for payload in detections]
        doing = f"could not store a batch of {len(rows)} detections and {len(rejected)} refused messages"
        with failures_named(self.label, doing):
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    with self._engine.begin() as connection:
                        return self._write(connection, detections, rows, rejected, iso_utc(utc_now()))
                except (DBAPIError, _LostRace) as exc:
                    if not _worth_retrying(exc):
                        raise
                    if attempt == ATTEMPTS:
                        raise ServerStoreError(f"aggregate database {self.label}: {doing}: still conflicting "
                                               f"with other writers after {ATTEMPTS} attempts ({exc})") from exc
                    self.retries += 1
        raise AssertionError("unreachable")

    def _write(self, connection: Connection, payloads: Sequence[dict[str, Any]], rows: list[dict[str, Any]],
               rejected: Sequence[Rejected], now: str) -> list[str]:
        first: dict[str, dict[str, Any]] = {}
        for row in rows:
            first.setdefault(row["detection_id"], row)
        ids = sorted(first)
        state = _lock_existing(connection, ids)
        new = [first[key] for key in ids if key not in state]
        if new:
            stamped = [dict(row, first_received_on=now, last_received_on=now, deliveries=1) for row in new]
            inserted = connection.execute(self._insert_new, stamped).rowcount
            if inserted < 0:  # psycopg >= 3.1 and sqlite3 sum it; a driver that does not cannot race safely
                raise ServerStoreError(f"aggregate database {self.label}: its driver reports no row count for "
                                       "a batch insert")
            if inserted != len(new):
                raise _LostRace(f"{len(new) - inserted} of {len(new)} new detection ids were stored by another "
                                "writer meanwhile")
            state.update((row["detection_id"], row) for row in new)

        outcomes: list[str] = []
        refused = list(rejected)
        fresh = {row["detection_id"] for row in new}
        resent: dict[str, int] = {}  # deliveries to add per id: every occurrence but its insert
        rewritten: set[str] = set()  # ids whose stored content this batch changes
        for payload, row in zip(payloads, rows):
            key = row["detection_id"]
            if key in fresh:
                fresh.discard(key)  # its first occurrence; a repeat later is compared below
                outcomes.append("inserted")
                continue
            stored = state[key]
            if stored["device_id"] != row["device_id"]:
                outcomes.append("foreign")
                refused.append(foreign_rejection(payload, stored["device_id"]))
                continue
            if all(stored[name] == row[name] for name in DETECTION_COLUMNS):
                outcomes.append("unchanged")
            else:
                outcomes.append("updated")
                state[key] = row
                rewritten.add(key)
            resent[key] = resent.get(key, 0) + 1

        if rewritten:
            connection.execute(_REWRITE, [
                {"b_id": key, "b_now": now, "b_more": resent[key],
                 **{f"v_{name}": state[key][name] for name in _CHANGED}}
                for key in sorted(rewritten)])
        if len(resent) > len(rewritten):
            connection.execute(_COUNT_RESEND, [{"b_id": key, "b_now": now, "b_more": more}
                                               for key, more in sorted(resent.items()) if key not in rewritten])
        if refused:
            connection.execute(insert(rejected_message), [rejected_row(item, now) for item in refused])
        return outcomes

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


_REWRITE = (
    update(detection)
    .where(detection.c.detection_id == bindparam("b_id"))
    .values({**{name: bindparam(f"v_{name}") for name in _CHANGED},
             "last_received_on": bindparam("b_now"), "deliveries": detection.c.deliveries + bindparam("b_more")})
)
"""A newer state of a stored detection (its device_id never changes), with its deliveries."""
_COUNT_RESEND = (
    update(detection)
    .where(detection.c.detection_id == bindparam("b_id"))
    .values(last_received_on=bindparam("b_now"), deliveries=detection.c.deliveries + bindparam("b_more"))
)
"""A resend: only when it came, and how many times."""


def _lock_existing(connection: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Step 2: the stored rows for `ids`, locked until the commit, in id order."""
    found: dict[str, dict[str, Any]] = {}
    columns = [detection.c[name] for name in DETECTION_COLUMNS]
    for start in range(0, len(ids), IDS_PER_SELECT):
        chunk = ids[start:start + IDS_PER_SELECT]
        query = (select(*columns).where(detection.c.detection_id.in_(chunk))
                 .order_by(detection.c.detection_id).with_for_update())
        found.update((row["detection_id"], dict(row)) for row in connection.execute(query).mappings())
    return found


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, _LostRace):
        return True
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in RETRIED_SQLSTATES
