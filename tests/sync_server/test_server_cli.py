"""`explorer-server ingest` as a process: runs until SIGTERM, and `status` reports what it holds."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from device.sync.publisher import drain_once
from sync_server.database import ServerStore
from tests.device.sync.conftest import queue_detections, settings_for
from tests.helpers import REPO
from tests.mqtt import Broker, free_port


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sync_server.cli", *args]


def test_the_ingest_process_stores_what_devices_send_and_stops_cleanly_on_sigterm(tmp_path, store):
    broker = Broker(tmp_path / "broker").start()
    db = tmp_path / "aggregate.db"
    process = subprocess.Popen(
        server_command("ingest", "--db", str(db), "--host", broker.host, "--port", str(broker.port),
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
        while time.monotonic() < deadline:
            server = ServerStore(db)
            try:
                held = server.counts().detections
            finally:
                server.close()
            if held == 6:
                break
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
    report = subprocess.run(server_command("status", "--db", str(db)), cwd=REPO, capture_output=True, text=True)
    assert report.returncode == 0 and report.stdout.startswith("6 detections from 1 devices; 0 messages refused")
    server = ServerStore(db)
    try:
        assert sorted(r["detection_id"] for r in server.db.query("SELECT detection_id FROM detection")) == sorted(ids)
    finally:
        server.close()


def test_an_unreachable_broker_is_named(tmp_path):
    port = free_port()
    result = subprocess.run(
        server_command("ingest", "--db", str(tmp_path / "a.db"), "--host", "127.0.0.1", "--port", str(port), "--no-tls"),
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert f"MQTT broker 127.0.0.1:{port}: cannot connect" in result.stderr
