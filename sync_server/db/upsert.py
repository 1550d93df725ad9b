"""Upserting records that devices send again and again: detections, the guides' verdicts, tours.

One algorithm for every such table (`Keyed` describes a table), safe with several ingest worker
processes writing the same ids at the same moment, inside the caller's transaction:

1. Read the stored rows for the batch's ids with `FOR UPDATE`, sorted by id (so two workers
   take their locks in the same order and cannot deadlock each other). From here to the
   commit nobody else can change them. (SQLite leaves FOR UPDATE out: BEGIN IMMEDIATE already
   gave the transaction the only write lock on the file.)
2. Insert the ids not found with `ON CONFLICT (<key>) DO NOTHING`, sorted too. If another
   transaction inserts one of them meanwhile, PostgreSQL makes ours wait for it to commit
   (ours then does nothing) or roll back (ours then inserts): never a duplicate, never an
   aborting unique violation. The statement's row count (summed over the batch) says whether
   every new id was ours; if not, `LostRace` is raised, the store rolls the transaction back
   and runs it again, and step 1 now finds the other writer's row. Each retry moves at least
   one id from "new" to "stored", so retries are few and always end.
3. Walk the batch in order, comparing each record with the row it meets (the same id twice in
   one batch meets the state the first left): 'unchanged' (a resend), 'updated' (a newer state
   of the same record) or 'foreign' (the stored device_id is another device's: the row is not
   touched; the caller records the claim). Then one UPDATE per touched id: `deliveries =
   deliveries + n` applied by the database, the new content only where it changed.

Why not `INSERT ... ON CONFLICT DO UPDATE ... RETURNING`: RETURNING shows only the new row, so
it cannot tell a resend from an update; and psycopg parses a multi-row statement's placeholders
anew every time (its cache stops at 50 parameters), which made a 500-detection RETURNING insert
about twice as slow as the pipelined executemany used here (86 ms against 33-40 ms on
PostgreSQL 15, loopback).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

OUTCOMES = ("inserted", "updated", "unchanged", "foreign")
IDS_PER_SELECT = 500
"""Ids per `IN (...)`: well under SQLite's bound-parameter limit, however large a batch."""
_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
SEQUENCE_LOCK_KEY = 0x45585053
"""PostgreSQL advisory lock that orders the numbering of new rows ("EXPS"; see next_sequence)."""


class LostRace(Exception):
    """Another writer committed one of the batch's new ids between our read and our insert
    (PostgreSQL only: SQLite has one writer at a time). Started again, the read finds it."""


@dataclass(frozen=True)
class Keyed:
    """A table of records keyed by a device-made UUID, as the upsert needs to know it."""

    table: Table
    key: str
    """The primary key column (the record's UUID)."""
    columns: tuple[str, ...]
    """The columns a record fills (key and device_id among them): a resend is 'unchanged'
    when all of these equal the stored row."""
    row: Callable[[Mapping[str, Any]], dict[str, Any]]
    """Builds those columns from a checked payload."""
    sequence: str | None = None
    """A column numbered at first insert in commit order (`next_sequence`), or None."""
    merge: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    """(stored row, incoming row) -> the row to compare and keep, for records whose states have
    an order that arrival may not follow (a tour's end outranks its start); None: the incoming
    row as it is."""

    @property
    def changeable(self) -> tuple[str, ...]:
        return tuple(name for name in self.columns if name not in (self.key, "device_id"))


def upsert(connection: Connection, keyed: Keyed, payloads: Sequence[Mapping[str, Any]], now: str) -> list[str]:
    """Steps 1-3 for one table; returns an outcome per payload, in order.

    Raises:
        LostRace: another writer inserted one of the new ids meanwhile (roll back, run again).
        KeyError: a payload lacks a column (it was not checked); raised before writing.
    """
    if not payloads:
        return []
    rows = [keyed.row(payload) for payload in payloads]
    key = keyed.key
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row[key], row)
    ids = sorted(first)
    state = _lock_existing(connection, keyed, ids)
    new = [first[i] for i in ids if i not in state]
    if new:
        stamped = [dict(row, first_received_on=now, last_received_on=now, deliveries=1) for row in new]
        if keyed.sequence is not None:
            first = next_sequence(connection, keyed.table, keyed.sequence)
            stamped = [dict(row, **{keyed.sequence: first + n}) for n, row in enumerate(stamped)]
        statement = (_INSERTS[connection.dialect.name](keyed.table)
                     .on_conflict_do_nothing(index_elements=[keyed.table.c[key]])
                     .execution_options(preserve_rowcount=True))
        inserted = connection.execute(statement, stamped).rowcount
        if inserted < 0:  # psycopg >= 3.1 and sqlite3 sum it; a driver that does not cannot race safely
            raise RuntimeError("the database driver reports no row count for a batch insert")
        if inserted != len(new):
            raise LostRace(f"{len(new) - inserted} of {len(new)} new {keyed.table.name} ids were stored by "
                           "another writer meanwhile")
        state.update((row[key], row) for row in new)

    outcomes: list[str] = []
    fresh = {row[key] for row in new}
    resent: dict[str, int] = {}  # deliveries to add per id: every occurrence but its insert
    rewritten: set[str] = set()  # ids whose stored content this batch changes
    for row in rows:
        record_id = row[key]
        if record_id in fresh:
            fresh.discard(record_id)  # its first occurrence; a repeat later is compared below
            outcomes.append("inserted")
            continue
        stored = state[record_id]
        if stored["device_id"] != row["device_id"]:
            outcomes.append("foreign")
            continue
        if keyed.merge is not None:
            row = keyed.merge(stored, row)
        if all(stored[name] == row[name] for name in keyed.columns):
            outcomes.append("unchanged")
        else:
            outcomes.append("updated")
            state[record_id] = row
            rewritten.add(record_id)
        resent[record_id] = resent.get(record_id, 0) + 1

    table = keyed.table
    if rewritten:
        statement = (update(table).where(table.c[key] == bindparam("b_id"))
                     .values({**{name: bindparam(f"v_{name}") for name in keyed.changeable},
                              "last_received_on": bindparam("b_now"),
                              "deliveries": table.c.deliveries + bindparam("b_more")}))
        connection.execute(statement, [
            {"b_id": i, "b_now": now, "b_more": resent[i], **{f"v_{name}": state[i][name] for name in keyed.changeable}}
            for i in sorted(rewritten)])
    if len(resent) > len(rewritten):
        statement = (update(table).where(table.c[key] == bindparam("b_id"))
                     .values(last_received_on=bindparam("b_now"), deliveries=table.c.deliveries + bindparam("b_more")))
        connection.execute(statement, [{"b_id": i, "b_now": now, "b_more": more}
                                       for i, more in sorted(resent.items()) if i not in rewritten])
    return outcomes


def next_sequence(connection: Connection, table: Table, column: str) -> int:
    """The next number of `table.column`, held for this transaction until it commits.

    Numbers must be given in commit order, or a reader paging by them could pass a number whose
    row commits later and miss it. SQLite's BEGIN IMMEDIATE already makes writers take turns;
    on PostgreSQL an advisory transaction lock does, from here to the commit: the batches of
    several workers queue for it only over their inserts' last milliseconds.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEQUENCE_LOCK_KEY})
    return connection.scalar(select(func.coalesce(func.max(table.c[column]), 0))) + 1


def _lock_existing(connection: Connection, keyed: Keyed, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Step 1: the stored rows for `ids`, locked until the commit, in id order."""
    found: dict[str, dict[str, Any]] = {}
    table = keyed.table
    columns = [table.c[name] for name in keyed.columns]
    for start in range(0, len(ids), IDS_PER_SELECT):
        chunk = ids[start:start + IDS_PER_SELECT]
        query = (select(*columns).where(table.c[keyed.key].in_(chunk))
                 .order_by(table.c[keyed.key]).with_for_update())
        found.update((row[keyed.key], dict(row)) for row in connection.execute(query).mappings())
    return found
