"""The in-process broker's state across a clean restart: one SQLite file in its folder.

At a clean stop `save` writes every session (its expiry, how long it has been offline, its
subscriptions, its queued and in-flight messages, in the order they are to be sent) and every
retained message to `STATE_FILE`, through a temporary file renamed into place, so a stop cut
short leaves the previous state or none, never half of one. At the next start `load` reads it
back and removes it: a crash after that start loses what memory held, as a broker without
persistence would; the devices send again whatever no receipt named, so nothing is lost for
good, only sent twice (the server upserts).

Time offline counts across the restart (the file records when it was written), so a session
asked to live a week still ends a week after its client left. Messages keep their packet ids,
and those sent once keep their DUP flag for the resend.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from sync_server.broker.packets import SubOptions
from sync_server.broker.sessions import Message, Outgoing, Sessions
from sync_server.broker.topics import SubscriptionTree
from sync_server.broker.wire import PUBLISH, PacketError, decode_properties, encode_properties

log = logging.getLogger(__name__)

STATE_FILE = "own-broker-state.sqlite"
SCHEMA = """
CREATE TABLE saved (saved_on REAL NOT NULL);
CREATE TABLE retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
                       properties BLOB NOT NULL, expires_in_s REAL);
CREATE TABLE session (client_id TEXT PRIMARY KEY, expiry_s INTEGER NOT NULL, offline_s REAL NOT NULL);
CREATE TABLE subscription (client_id TEXT NOT NULL REFERENCES session(client_id), filter TEXT NOT NULL,
                           qos INTEGER NOT NULL, no_local INTEGER NOT NULL, retain_as_published INTEGER NOT NULL,
                           retain_handling INTEGER NOT NULL);
CREATE TABLE queued (client_id TEXT NOT NULL REFERENCES session(client_id), position INTEGER NOT NULL,
                     topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
                     properties BLOB NOT NULL, expires_in_s REAL, packet_id INTEGER, sent INTEGER NOT NULL);
"""


def _expires_in(message: Message, now: float) -> float | None:
    return None if message.expires_at is None else message.expires_at - now


def save(folder: Path, sessions: Sessions) -> Path:
    """Write the state to `folder`/STATE_FILE (replacing any); its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target, temp = folder / STATE_FILE, folder / (STATE_FILE + ".tmp")
    temp.unlink(missing_ok=True)
    now = time.monotonic()
    db = sqlite3.connect(temp)
    try:
        with db:
            db.executescript(SCHEMA)
            db.execute("INSERT INTO saved VALUES (?)", (time.time(),))
            db.executemany("INSERT INTO retained VALUES (?, ?, ?, ?, ?)", (
                (m.topic, m.payload, m.qos, encode_properties(m.properties), _expires_in(m, now))
                for m in sessions.retained.values()))
            for session in sessions.by_id.values():
                offline = 0.0 if session.offline_since is None else now - session.offline_since
                db.execute("INSERT INTO session VALUES (?, ?, ?)", (session.client_id, session.expiry_s, offline))
                db.executemany("INSERT INTO subscription VALUES (?, ?, ?, ?, ?, ?)", (
                    (session.client_id, text, o.qos, o.no_local, o.retain_as_published, o.retain_handling)
                    for text, o in session.subscriptions.items()))
                queue = [*session.inflight.values(), *session.pending]  # in flight first: resent first
                db.executemany("INSERT INTO queued VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                    (session.client_id, n, out.message.topic, out.message.payload, out.qos, out.retain,
                     encode_properties(out.message.properties), _expires_in(out.message, now), out.packet_id, out.sent)
                    for n, out in enumerate(queue)))
    finally:
        db.close()
    os.replace(temp, target)
    log.info("broker: state saved to %s (%d session(s), %d retained message(s))", target, len(sessions.by_id),
             len(sessions.retained))
    return target


def load(folder: Path, sessions: Sessions) -> bool:
    """Read back a state `save` wrote into `sessions`, and remove its file. False when there
    was none, or it could not be read (logged, set aside as `.unreadable`: the broker starts
    empty rather than not at all)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return False
    try:
        _read(path, sessions)
    except (sqlite3.DatabaseError, PacketError, ValueError, TypeError) as exc:
        log.warning("broker: could not read the saved state %s (%s); starting empty", path, exc)
        sessions.by_id.clear()
        sessions.retained.clear()
        sessions.tree = SubscriptionTree()
        os.replace(path, path.with_name(path.name + ".unreadable"))
        return False
    path.unlink()
    return True


def _read(path: Path, sessions: Sessions) -> None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (saved_on,), = db.execute("SELECT saved_on FROM saved")
        down = max(0.0, time.time() - saved_on)
        now = time.monotonic()

        def expires(left: float | None) -> float | None:
            return None if left is None else now + left - down

        for topic, payload, qos, properties, left in db.execute("SELECT * FROM retained"):
            message = Message(topic, payload, qos, True, decode_properties(properties, 0, PUBLISH)[0], expires(left))
            if message.expires_at is None or message.expires_at > now:
                sessions.retained[topic] = message
        for client_id, expiry_s, offline_s in db.execute("SELECT * FROM session"):
            session, _ = sessions.open(client_id, False, expiry_s)
            session.offline_since = now - offline_s - down
            for text, qos, no_local, published, handling in db.execute(
                    "SELECT filter, qos, no_local, retain_as_published, retain_handling FROM subscription "
                    "WHERE client_id = ?", (client_id,)):
                sessions.subscribe(session, text, SubOptions(qos, bool(no_local), bool(published), handling))
            for topic, payload, qos, retain, properties, left, packet_id, sent in db.execute(
                    "SELECT topic, payload, qos, retain, properties, expires_in_s, packet_id, sent FROM queued "
                    "WHERE client_id = ? ORDER BY position", (client_id,)):
                message = Message(topic, payload, qos, bool(retain), decode_properties(properties, 0, PUBLISH)[0],
                                  expires(left))
                session.restore(Outgoing(message, qos, bool(retain), packet_id, bool(sent)))
        sessions.expire(now)
    finally:
        db.close()
    log.info("broker: state read back from %s (%d session(s), %d retained message(s))", path, len(sessions.by_id),
             len(sessions.retained))
