"""Power cuts and full disks: real SIGKILLs and real limits, no mocks.

A writer runs in a child process, prints each detection id only after its commit
returned (flushed), and is killed with SIGKILL mid-stream, or runs into a file-size limit.
The parent then reopens the database and checks it is intact and holds everything the
child reported as committed, with the outbox and the detections in agreement.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from device.contracts.detection import parse_payload
from device.store import Store, StoreError

REPO = Path(__file__).resolve().parents[3]

_WRITER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timedelta, timezone
    from device.domain import Detection
    from device.store import Store, StoreError

    db, source_chars = sys.argv[1], int(sys.argv[2])
    store = Store.open(db)
    tour = store.active_tour() or store.start_tour(name="crash test")
    labels = ["littin1", "21211", "65448", "555086"]
    i = 0
    try:
        while True:
            start = datetime(2026, 4, 20, 7, 40, tzinfo=timezone.utc) + timedelta(seconds=5 * i)
            det = Detection(
                label=labels[i % 4], started_on=start, ended_on=start + timedelta(seconds=3), confidence=0.7,
                branch_scores={"perch": 0.7, "birdnet": float("nan")}, bundle_name="b", bundle_version="1",
                bundle_sha256="a" * 64, device_id="pi-h02", tour_id=tour.tour_id,
                source="/rec/" + "x" * source_chars, start_s=5.0 * i, end_s=5.0 * i + 3,
            )
            print("TRY", det.detection_id, flush=True)
            store.save_detection(det)
            print("OPEN", det.detection_id, flush=True)
            for _ in range(2):
                det.ended_on += timedelta(seconds=3)
                det.end_s += 3
                det.window_count += 1
                store.save_detection(det)
            store.save_detection(det, final=True)
            print("CLOSED", det.detection_id, flush=True)
            i += 1
    except StoreError as exc:
        print("ERROR", exc, flush=True)
        store.close()
    """
)


def _spawn(db: Path, source_chars: int = 40, preexec=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), str(source_chars)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=preexec,
    )  # fmt: skip


def _reported(lines: list[str]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {"TRY": set(), "OPEN": set(), "CLOSED": set()}
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind in seen and line.endswith("\n"):  # a torn last line was never fully reported
            seen[kind].add(rest.strip())
    return seen


def _check_consistent(db: Path, reported: dict[str, set[str]]) -> dict[str, str]:
    """Integrity, every reported commit present, and outbox <-> detections agreement."""
    with Store.open(db) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
        status = {r["detection_id"]: r["status"] for r in store.db.query("SELECT detection_id, status FROM detection")}
        assert reported["OPEN"] <= set(status), "a detection reported committed is missing"
        assert all(status[i] == "closed" for i in reported["CLOSED"])
        assert set(status) <= reported["TRY"], "a detection appeared that was never attempted"
        messages: dict[str, int] = {}
        for row in store.db.query("SELECT detection_id, payload FROM outbox_message"):
            messages[row["detection_id"]] = messages.get(row["detection_id"], 0) + 1
            assert parse_payload(row["payload"])["detection_id"] == row["detection_id"]
        closed = {i for i, s in status.items() if s == "closed"}
        assert set(messages) == closed, "outbox and detections disagree"
        assert set(messages.values()) <= {1}
        return status


@pytest.mark.parametrize("closed_before_kill", [1, 7, 25])
def test_sigkill_mid_stream_leaves_every_committed_detection_and_a_matching_outbox(tmp_path, closed_before_kill):
    db = tmp_path / "explorer.db"
    child = _spawn(db)
    lines = []
    try:
        for line in child.stdout:
            lines.append(line)
            if line.startswith("CLOSED") and sum(x.startswith("CLOSED") for x in lines) >= closed_before_kill:
                break
        os.kill(child.pid, signal.SIGKILL)  # the child keeps writing until this lands: any moment
        lines.extend(child.stdout.readlines())
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    reported = _reported(lines)
    assert len(reported["CLOSED"]) >= closed_before_kill
    status = _check_consistent(db, reported)

    with Store.open(db) as store:  # start-up after the power cut
        left_open = [i for i, s in status.items() if s == "open"]
        assert store.recover_open_detections() == len(left_open)
        assert {m.detection_id for m in store.pending_messages(limit=1000)} == set(status)
        assert all(store.detection_status(i) == "closed" for i in status)
        assert store.active_tour() is not None  # the tour survived too


def _limit_file_size(limit_bytes: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_write_refused_for_size_is_a_clear_error_and_keeps_earlier_commits(tmp_path):
    db = tmp_path / "explorer.db"
    with Store.open(db) as store:  # some history from before the card filled up
        store.start_tour(name="before")
    child = _spawn(db, source_chars=900, preexec=_limit_file_size(400_000))
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    lines = out.splitlines(keepends=True)
    assert lines[-1].startswith("ERROR"), out[-2000:]
    assert str(db) in lines[-1] and "none of it was saved" in lines[-1] and "everything saved before is intact" in lines[-1]
    reported = _reported(lines)
    assert len(reported["CLOSED"]) >= 3
    status = _check_consistent(db, reported)
    assert len(status) >= len(reported["OPEN"])


def test_sqlite_full_names_the_file_and_the_store_works_once_space_returns(store, make_detection):
    """SQLITE_FULL ('database or disk is full') from a real page limit on the database."""
    saved = [make_detection("littin1", at_s=i) for i in range(3)]
    for det in saved:
        store.save_detection(det, final=True)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StoreError) as caught:
        for i in range(500):
            store.save_detection(make_detection("21211", at_s=100 + i, source="/rec/" + "y" * 900), final=True)
    message = str(caught.value)
    assert str(store.path) in message and "the disk is full" in message
    assert "database or disk is full" in str(caught.value.__cause__)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {d.detection_id for d in saved} <= {d.detection_id for d in store.detections()}
    closed = {d.detection_id for d in store.detections()}
    assert {m.detection_id for m in store.pending_messages(limit=1000)} == closed
    store.db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    late = make_detection("65448", at_s=9999)
    store.save_detection(late, final=True)
    assert store.detection_status(late.detection_id) == "closed"
