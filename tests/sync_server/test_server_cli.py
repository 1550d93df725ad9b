"""`explorer-server ingest` as a process: runs until SIGTERM, and `status` reports what it holds,
on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from device.sync.publisher import drain_once
from sync_server.db import Rejected, ServerStore
from tests.device.sync.conftest import queue_detections, settings_for
from tests.helpers import REPO
from tests.mqtt import Broker, free_port


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sync_server.cli", *args]


def held(target: str) -> set[str]:
    with ServerStore.open(target) as server:
        return server.detection_ids()


def test_the_ingest_process_stores_what_devices_send_and_stops_cleanly_on_sigterm(tmp_path, store, server_target):
    broker = Broker(tmp_path / "broker").start()
    process = subprocess.Popen(
        server_command("ingest", "--db", server_target, "--host", broker.host, "--port", str(broker.port),
                       "--no-tls", "--username", ""),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not any("subscribed to explorer/+/detection" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        ids = queue_detections(store, 6)
        assert drain_once(store, settings_for(broker), "pi-h02").ok == 6
        deadline = time.monotonic() + 15
        while len(held(server_target)) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        reader.join(5)
    finally:
        if process.poll() is None:
            process.kill()
        broker.stop()
    err = "".join(lines)
    assert process.returncode == 0, err
    assert "stopped: 6 stored, 0 resends, 0 refused" in err
    report = subprocess.run(server_command("status", "--db", server_target), cwd=REPO, capture_output=True, text=True)
    assert report.returncode == 0 and report.stdout.startswith("6 detections from 1 devices; 0 messages refused")
    assert held(server_target) == set(ids)


def test_status_lists_the_last_refused_messages_newest_first(server_db, server_target):
    server_db.store_batch([], [Rejected("explorer/pi-h02/detection", f"reason {n}", b"{") for n in range(7)])
    report = subprocess.run(server_command("status", "--db", server_target), cwd=REPO, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0] == "0 detections from 0 devices; 7 messages refused"
    assert [line.rsplit(": ", 1)[1] for line in lines[1:]] == [f"reason {n}" for n in (6, 5, 4, 3, 2)]
    assert all(" on explorer/pi-h02/detection: " in line for line in lines[1:])


def test_status_names_a_database_it_cannot_open_and_creates_none(tmp_path):
    missing = tmp_path / "missing.db"
    report = subprocess.run(server_command("status", "--db", str(missing)), cwd=REPO, capture_output=True, text=True)
    assert report.returncode == 1 and f"aggregate database {missing}: no such file" in report.stderr
    assert not missing.exists()
    port = free_port()
    report = subprocess.run(server_command("status", "--db", f"postgresql://explorer:s3cret@127.0.0.1:{port}/x"),
                            cwd=REPO, capture_output=True, text=True)
    assert report.returncode == 1 and "Traceback" not in report.stderr
    assert f"postgresql://explorer:***@127.0.0.1:{port}/x: cannot open it" in report.stderr
    assert "s3cret" not in report.stderr


def test_an_unreachable_broker_is_named(tmp_path):
    port = free_port()
    result = subprocess.run(
        server_command("ingest", "--db", str(tmp_path / "a.db"), "--host", "127.0.0.1", "--port", str(port), "--no-tls"),
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert f"MQTT broker 127.0.0.1:{port}: cannot connect" in result.stderr
