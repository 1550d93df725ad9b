"""One Store per thread: the pipeline writes on one, the TUI reads on another, neither blocks."""

from __future__ import annotations

import threading

import pytest

from device.store import Store, StoreError
from device.store import detections
from device.store.database import transaction


def _in_thread(fn):
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    return result


def test_a_store_refuses_use_from_another_thread(store):
    result = _in_thread(store.active_tour)
    assert isinstance(result.get("error"), StoreError)
    assert "thread" in str(result["error"])


def test_a_reader_on_its_own_connection_reads_while_the_writer_holds_a_transaction(db_path, make_detection):
    """Crash-window style: hold the writer's transaction open and look at what is on disk."""
    writer = Store.open(db_path)
    committed = make_detection("littin1")
    writer.save_detection(committed, final=True)
    in_flight = make_detection("21211", at_s=30)
    holding, release = threading.Event(), threading.Event()

    def write_and_hold():
        with transaction(writer.db):
            detections.save_detection(writer.db, in_flight, final=True)
            holding.set()
            release.wait(timeout=30)

    # The writer runs on this thread (its Store's thread); the reader on another, with its own Store.
    def read():
        assert holding.wait(timeout=30)
        with Store.open(db_path) as reader:  # opening is cheap and takes no write lock
            seen = [d.detection_id for d in reader.detections()]
            pending = [m.detection_id for m in reader.pending_messages()]
        release.set()
        return seen, pending

    reader_result: dict = {}
    reader_thread = threading.Thread(target=lambda: reader_result.update(value=read()))
    reader_thread.start()
    write_and_hold()
    reader_thread.join(timeout=30)
    seen, pending = reader_result["value"]
    assert seen == [committed.detection_id] and pending == [committed.detection_id]
    assert {d.detection_id for d in writer.detections()} == {committed.detection_id, in_flight.detection_id}
    writer.close()


def test_a_second_writer_waits_for_the_lock_instead_of_failing(db_path, make_detection):
    first = Store.open(db_path)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with Store.open(db_path) as other:
            with transaction(other.db):
                detections.save_detection(other.db, make_detection("littin1"))
                holding.set()
                release.wait(timeout=30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(timeout=30)
    threading.Timer(0.2, release.set).start()  # the lock is released while the next write waits
    tour = first.start_tour(name="waited")  # blocks on busy_timeout, then succeeds
    thread.join(timeout=30)
    assert first.tour(tour.tour_id).name == "waited"
    assert len(first.detections()) == 1
    first.close()


def test_nested_store_transactions_are_refused(store):
    with transaction(store.db):
        with pytest.raises(StoreError, match="already open"):
            with transaction(store.db):
                pass


def _open_at_once(path, barrier, results) -> None:
    barrier.wait()
    try:
        Store.open(path).close()
        results.put("ok")
    except StoreError as exc:
        results.put(str(exc))


def test_several_processes_opening_a_brand_new_file_at_once_all_succeed(tmp_path):
    """A watch-folder run and its sync worker open a fresh explorer.db together: switching a new
    file to WAL used to fail at once with "database is locked" for the loser (seen in CI)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(12):
        path = tmp_path / f"fresh-{trial}.db"
        barrier, results = context.Barrier(4), context.Queue()
        openers = [context.Process(target=_open_at_once, args=(path, barrier, results)) for _ in range(4)]
        for process in openers:
            process.start()
        for process in openers:
            process.join(60)
        assert [results.get(timeout=10) for _ in openers] == ["ok"] * 4, f"trial {trial}"
        with Store.open(path) as store:
            assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
