"""A bounded hand-off between threads that never blocks the producer and counts every loss.

Between the sound card and the analysis a slow consumer must not stall capture: a stalled
capture thread overflows the sound card's buffer and loses audio with nobody counting. So a
live producer `put`s without waiting, and on overflow the OLDEST item is dropped (the newest
audio is the most useful to a listener in the field) and counted. Files, where waiting costs
nothing, use `put_blocking` for backpressure instead. After birdnet-go's audio router:
every drop is a species that was heard and never recorded, so drops are never silent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

LOG_EVERY_DROPS = 100
"""Log the first drop and then every this many, so a long overload is visible without
flooding the log from the capture thread."""


@dataclass(frozen=True)
class QueueSnapshot:
    """Counters of a `DropOldestQueue` at one moment; a collector polls and diffs them."""

    name: str
    maxsize: int
    depth: int
    """Items waiting now."""
    max_depth: int
    """Most items ever waiting at once."""
    puts: int
    """Items offered (accepted or not)."""
    drops: int
    """Items discarded to make room, never analysed."""


class DropOldestQueue(Generic[T]):
    """A thread-safe FIFO of at most `maxsize` items whose `put` never blocks."""

    def __init__(self, maxsize: int, name: str, drop_note: str = "every drop is audio heard and never analysed") -> None:
        """
        Args:
            maxsize: Items held at most; past it `put` discards the oldest.
            name: Names the queue in logs and snapshots (e.g. `mic:USB Audio`).
            drop_note: What a drop costs, for the log line (a display queue loses only a redraw).
        """
        if maxsize < 1:
            raise ValueError(f"queue {name!r}: maxsize must be at least 1, got {maxsize}")
        self.name = name
        self.drop_note = drop_note
        self.maxsize = int(maxsize)
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._puts = 0
        self._drops = 0
        self._max_depth = 0

    def put(self, item: T) -> None:
        """Append `item` now; if the queue is full, discard the oldest item and count it."""
        dropped = 0
        with self._lock:
            self._puts += 1
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self._drops += 1
                dropped = self._drops
            self._append(item)
        if dropped == 1 or (dropped and dropped % LOG_EVERY_DROPS == 0):
            log.warning(
                "queue %s full (%d): dropped its oldest item, %d dropped so far; %s",
                self.name, self.maxsize, dropped, self.drop_note,
            )

    def put_blocking(self, item: T, timeout: float | None = None) -> None:
        """Append `item`, waiting up to `timeout` seconds for room (backpressure, no drops).

        Raises:
            queue.Full: Still no room after `timeout` seconds.
        """
        with self._not_full:
            self._puts += 1
            if not self._not_full.wait_for(lambda: len(self._items) < self.maxsize, timeout):
                raise queue.Full(f"queue {self.name} still full after {timeout} s")
            self._append(item)

    def _append(self, item: T) -> None:
        self._items.append(item)
        self._max_depth = max(self._max_depth, len(self._items))
        self._not_empty.notify()

    def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting up to `timeout` seconds (None: forever).

        Raises:
            queue.Empty: Nothing arrived within `timeout`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._not_empty:
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise queue.Empty(f"queue {self.name} empty after {timeout} s")
                self._not_empty.wait(remaining)
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def snapshot(self) -> QueueSnapshot:
        """The counters now (a copy; safe to read from any thread)."""
        with self._lock:
            return QueueSnapshot(
                name=self.name,
                maxsize=self.maxsize,
                depth=len(self._items),
                max_depth=self._max_depth,
                puts=self._puts,
                drops=self._drops,
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
