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
about twice as slow as a pipelined executemany (86 ms against 33-40 ms on PostgreSQL 15, loopback).

How the rows of steps 1 and 2 travel (`insert_new`, `_lock_existing`): the ingest's one Python
thread is its bottleneck, so both steps keep the per-row work out of Python where the engine
allows. On PostgreSQL the new rows are COPYed into a temporary staging table and moved by one
`INSERT ... SELECT ... ON CONFLICT DO NOTHING` (its row count is the same race check), and the
stored rows are read with one `= ANY(array)`; on SQLite the insert is one sqlite3 executemany of
plain tuples. Same statements, same order, same outcomes: only the transport differs.
(Client CPU per detection, 1,000-detection batches, 2-core test box: the insert went from
68 to ~10 us on PostgreSQL, from 53 to ~19 us on SQLite, most of that SQLite's own work; the
read of stored rows from 28 to ~5 us on PostgreSQL, whose server also spends half the CPU it
did. The executemany through SQLAlchemy spent its time building each row's parameters.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import ARRAY, Connection, Table, Text, any_, bindparam, func, select, text, update
from sqlalchemy.exc import DBAPIError

OUTCOMES = ("inserted", "updated", "unchanged", "foreign")
IDS_PER_SELECT = 500
"""Ids per `IN (...)` on SQLite: well under its bound-parameter limit, however large a batch.
(PostgreSQL takes them all as one array parameter: one statement, planned once.)"""
BOOKKEEPING = ("first_received_on", "last_received_on", "deliveries")
"""The columns the server fills on a row's first insert, after the record's own."""
STAGING_PREFIX = "incoming_"
"""PostgreSQL: `incoming_<table>` is the session's temporary staging table for `<table>`'s new
rows (ON COMMIT DELETE ROWS: empty at every transaction's start, whatever the last one did)."""
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
        number = next_sequence(connection, keyed.table, keyed.sequence) if keyed.sequence is not None else None
        inserted = insert_new(connection, keyed, new, now, number)
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


def insert_new(connection: Connection, keyed: Keyed, rows: Sequence[Mapping[str, Any]], now: str,
               number: int | None = None) -> int:
    """Step 2: insert `rows` (new ids, in id order) with ON CONFLICT (key) DO NOTHING, stamped
    first/last received `now` with one delivery, and numbered from `number` on in
    `keyed.sequence` (when given); return how many rows were inserted (fewer: another writer
    took an id meanwhile).

    PostgreSQL: COPY into the session's staging table, then one INSERT ... SELECT in id order;
    SQLite: one executemany of tuples. The staging table's rows vanish with the transaction,
    committed or rolled back, so a retried batch never meets its own leftovers.
    """
    table = keyed.table
    columns = keyed.columns + BOOKKEEPING + ((keyed.sequence,) if number is not None else ())
    fields, stamp = itemgetter(*keyed.columns), (now, now, 1)
    if number is None:
        values = [fields(row) + stamp for row in rows]
    else:
        values = [fields(row) + stamp + (number + n,) for n, row in enumerate(rows)]
    quote = connection.dialect.identifier_preparer.quote
    names = ", ".join(quote(name) for name in columns)
    target, key = quote(table.name), quote(keyed.key)
    if connection.dialect.name == "postgresql":
        staging = f"pg_temp.{quote(STAGING_PREFIX + table.name)}"
        connection.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(STAGING_PREFIX + table.name)} "
                                   f"(LIKE {target}) ON COMMIT DELETE ROWS")
        statement = f"COPY {staging} ({names}) FROM STDIN"
        try:
            with connection.connection.cursor() as cursor, cursor.copy(statement) as copy:
                for value in values:
                    copy.write_row(value)
        except connection.dialect.loaded_dbapi.Error as exc:  # raw driver call: wrap it as SQLAlchemy would
            raise DBAPIError.instance(statement, None, exc, connection.dialect.loaded_dbapi.Error,
                                      dialect=connection.dialect) from exc
        sql = (f"INSERT INTO {target} ({names}) SELECT {names} FROM {staging} ORDER BY {key} "
               f"ON CONFLICT ({key}) DO NOTHING")
        inserted = connection.exec_driver_sql(sql).rowcount
    else:
        marks = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {target} ({names}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"
        inserted = connection.exec_driver_sql(sql, values, execution_options={"preserve_rowcount": True}).rowcount
    if inserted < 0:  # psycopg and sqlite3 give it; a driver that does not cannot race safely
        raise RuntimeError("the database driver reports no row count for a batch insert")
    return inserted


def _lock_existing(connection: Connection, keyed: Keyed, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Step 1: the stored rows for `ids`, locked until the commit, in id order."""
    found: dict[str, dict[str, Any]] = {}
    table = keyed.table
    columns = [table.c[name] for name in keyed.columns]
    if connection.dialect.name == "postgresql":
        match, chunks = table.c[keyed.key] == any_(bindparam("ids", type_=ARRAY(Text))), [ids]
    else:
        match = table.c[keyed.key].in_(bindparam("ids", expanding=True))
        chunks = [ids[start:start + IDS_PER_SELECT] for start in range(0, len(ids), IDS_PER_SELECT)]
    query = select(*columns).where(match).order_by(table.c[keyed.key]).with_for_update()
    for chunk in chunks:
        found.update((row[keyed.key], dict(row)) for row in connection.execute(query, {"ids": chunk}).mappings())
    return found
