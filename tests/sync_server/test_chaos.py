"""Chaos: 10,000 detections from three devices (real device stores, the real sync worker) reach
the server exactly once while the broker, the server and a device are each killed with -9.

On SQLite and on PostgreSQL, with the broker configured as deploy/broker/ ships it in the way
that matters here (`persistence true`, saved only every `autosave_interval`, 30 min by default:
a broker killed with -9 loses what it held since its last save, including what it had queued
for an ingest that was down). The sequence, each step triggered by what the server holds:

1. the ingest is killed with -9 while it commits, and restarted;
2. the ingest is stopped; the devices go on sending (the broker PUBACKs and queues for the
   ingest's session); the broker is killed with -9 and restarted, losing that queue; the ingest
   comes back;
3. a device is killed with -9 mid-drain and restarted on its own store.

Afterwards every device's outbox is confirmed by receipts, and the server holds exactly the
detections the devices committed: none lost, none twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sync_server.db import ServerStore
from tests.helpers import REPO
from tests.mqtt import Broker

TOTAL = 10_000
DEVICES = ("pi-h01", "pi-h02", "pi-h03")
SHARE = [TOTAL - 2 * (TOTAL // 3), TOTAL // 3, TOTAL // 3]


class PersistentBroker(Broker):
    """The test broker with the shipped persistence: saved only every autosave_interval."""

    def config(self) -> Path:
        conf = super().config()
        text = conf.read_text().replace("persistence false\n", "")
        store = self.folder / "store"
        store.mkdir(exist_ok=True)
        conf.write_text(text + f"persistence true\npersistence_location {store}/\nautosave_interval 1800\n"
                        "max_queued_messages 0\n")
        return conf


class Process:
    """A child process whose stderr is collected on a thread (so it never blocks on a full pipe)."""

    def __init__(self, *command: str):
        self.command = command
        self.lines: list[str] = []
        self.popen = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
        threading.Thread(target=lambda: self.lines.extend(iter(self.popen.stdout.readline, "")), daemon=True).start()

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return "".join(self.lines[-60:])


def wait_for(condition, timeout_s: float, what: str, *processes: Process) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    logs = "\n".join(f"--- {' '.join(p.command[2:4])}\n{p.output()}" for p in processes)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{logs}")


def held(target: str) -> set[str]:
    with ServerStore.open(target) as server:
        return server.detection_ids()


def device_ids(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [row[0] for row in db.execute("SELECT detection_id FROM detection")]


def acknowledged_twice(database: Path) -> int:
    """Messages a broker PUBACKed more than once: sent again after no receipt came."""
    with sqlite3.connect(database) as db:
        return db.execute("SELECT count(*) FROM (SELECT message_id FROM outbox_attempt WHERE result = 'SUCCESS' "
                          "GROUP BY message_id HAVING count(*) > 1)").fetchone()[0]


@pytest.mark.slow
def test_every_detection_reaches_the_server_exactly_once_whatever_is_killed(tmp_path, server_target):
    broker = PersistentBroker(tmp_path / "broker").start()

    def ingest() -> Process:
        process = Process(sys.executable, "-m", "sync_server.cli", "ingest", "--db", server_target, "--host",
                          broker.host, "--port", str(broker.port), "--no-tls", "--username", "", "--client-id",
                          "chaos-ingest", "--retry-max-s", "1")
        wait_for(lambda: process.saw("subscribed to"), 60, "the ingest to subscribe", process)
        return process

    def device(n: int) -> Process:
        return Process(sys.executable, "-m", "tests.sync_server.chaos_device", str(tmp_path / f"{DEVICES[n]}.db"),
                       DEVICES[n], broker.host, str(broker.port), str(SHARE[n]))

    server = ingest()
    devices = [device(n) for n in range(3)]
    everyone = [server, *devices]
    try:
        # 1. The server dies with -9 while it commits, and comes back.
        wait_for(lambda: len(held(server_target)) >= 1_500, 180, "1,500 detections on the server", *everyone)
        server.kill()
        server = ingest()

        # 2. With the ingest down, the broker takes (and PUBACKs) what devices send, then dies with
        #    -9 before its next save: that queue is gone.
        wait_for(lambda: len(held(server_target)) >= 4_000, 180, "4,000 detections on the server", server, *devices)
        server.stop()
        before = len(held(server_target))
        queued_at = sum(len(device_ids(tmp_path / f"{d}.db")) for d in DEVICES)
        wait_for(lambda: sum(len(device_ids(tmp_path / f"{d}.db")) for d in DEVICES) >= queued_at + 300, 120,
                 "the devices to close 300 more detections while the ingest is down", *devices)
        broker.kill()
        broker.start()
        server = ingest()

        # 3. A device dies with -9 mid-drain and is started again on its own store.
        wait_for(lambda: len(held(server_target)) >= 7_000, 240, "7,000 detections on the server", server, *devices)
        devices[2].kill()
        devices[2] = device(2)

        for n, process in enumerate(devices):
            wait_for(lambda p=process: p.popen.poll() is not None, 600, f"{DEVICES[n]} to see everything confirmed",
                     server, process)
            assert process.popen.returncode == 0, process.output()
    finally:
        for process in [server, *devices]:
            process.stop()
        broker.stop()

    committed = {d: device_ids(tmp_path / f"{d}.db") for d in DEVICES}
    assert [len(committed[d]) for d in DEVICES] == SHARE
    every = [i for ids in committed.values() for i in ids]
    assert len(set(every)) == TOTAL  # the devices made each detection once, the restarted one too
    with ServerStore.open(server_target) as store:
        assert store.detection_ids() == set(every)  # none lost, none foreign, none extra
        assert store.counts().detections == TOTAL and store.counts().rejected == 0
        for device_id in DEVICES:
            assert store.detection_ids(device_id) == set(committed[device_id])
    # The faults bit: what the broker acknowledged and then lost (it died unsaved with the
    # ingest down) was sent again, because no receipt ever named it.
    resent = sum(acknowledged_twice(tmp_path / f"{d}.db") for d in DEVICES)
    assert resent >= 300, f"only {resent} messages were PUBACKed more than once: the broker's loss did not bite"
    assert before < TOTAL
