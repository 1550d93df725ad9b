"""DropOldestQueue with real threads: put never blocks, the oldest goes, every drop is counted."""

from __future__ import annotations

import logging
import queue
import threading
import time

import pytest

from device.audio.queue import LOG_EVERY_DROPS, DropOldestQueue


def test_put_never_blocks_and_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    q: DropOldestQueue[int] = DropOldestQueue(8, "capture")
    with caplog.at_level(logging.WARNING, logger="device.audio.queue"):
        done = threading.Event()
        producer = threading.Thread(target=lambda: ([q.put(i) for i in range(1000)], done.set()))
        producer.start()
        assert done.wait(10), "put() blocked with nobody consuming"
    snap = q.snapshot()
    assert (snap.puts, snap.drops, snap.depth, snap.max_depth) == (1000, 992, 8, 8)
    assert [q.get(timeout=0) for _ in range(8)] == list(range(992, 1000))  # the newest survive
    # The first drop and every 100th are logged, naming the queue.
    drops_logged = [r.getMessage() for r in caplog.records if "capture" in r.getMessage()]
    assert len(drops_logged) == 1 + 992 // LOG_EVERY_DROPS
    assert "heard and never analysed" in drops_logged[0]


def test_a_slow_consumer_loses_only_counted_items_in_order() -> None:
    q: DropOldestQueue[tuple[int, int]] = DropOldestQueue(16, "inference")
    received: list[tuple[int, int]] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set() or len(q):
            try:
                received.append(q.get(timeout=0.05))
            except queue.Empty:
                continue
            time.sleep(0.0002)  # slower than the producers

    def produce(who: int) -> None:
        for i in range(3000):
            q.put((who, i))

    consumer = threading.Thread(target=consume)
    producers = [threading.Thread(target=produce, args=(who,)) for who in range(4)]
    consumer.start()
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    stop.set()
    consumer.join(10)
    snap = q.snapshot()
    assert snap.puts == 12000
    assert len(received) + snap.drops == 12000  # nothing vanished uncounted
    assert snap.drops > 0 and snap.depth == 0 and snap.max_depth == 16
    for who in range(4):  # each producer's items arrive in the order put
        mine = [i for w, i in received if w == who]
        assert mine == sorted(mine)  # (a producer may lose all of its items to the others)


def test_put_blocking_applies_backpressure_instead_of_dropping() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(4, "file")
    received: list[int] = []

    def consume() -> None:
        for _ in range(500):
            received.append(q.get(timeout=5))
            if len(received) % 50 == 0:
                time.sleep(0.01)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(500):
        q.put_blocking(i, timeout=5)
    consumer.join(10)
    assert received == list(range(500))
    snap = q.snapshot()
    assert snap.drops == 0 and snap.max_depth <= 4 and snap.puts == 500


def test_timeouts_raise_the_standard_queue_errors() -> None:
    q: DropOldestQueue[str] = DropOldestQueue(1, "tiny")
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    q.put_blocking("a", timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_blocking("b", timeout=0.05)
    assert q.snapshot().drops == 0 and q.get() == "a"
    with pytest.raises(ValueError, match="tiny"):
        DropOldestQueue(0, "tiny")


def test_a_waiting_get_wakes_when_another_thread_puts() -> None:
    q: DropOldestQueue[str] = DropOldestQueue(2, "wake")
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    waiter.start()
    time.sleep(0.05)
    q.put("block")
    waiter.join(5)
    assert got == ["block"]
