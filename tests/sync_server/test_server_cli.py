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


def run_ingest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(server_command("ingest", *args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_a_refused_login_exits_1_naming_the_cause(tmp_path):
    broker = Broker(tmp_path / "broker").with_password("sync-server", "right").start()
    try:
        result = run_ingest("--db", str(tmp_path / "a.db"), "--host", broker.host, "--port", str(broker.port),
                            "--no-tls", "--username", "sync-server", "--password", "wrong")
    finally:
        broker.stop()
    assert result.returncode == 1, result.stderr
    assert (f"MQTT broker 127.0.0.1:{broker.port} refused the ingest's login as 'sync-server': "
            "Bad user name or password") in result.stderr or "Not authorized" in result.stderr


def test_a_tls_failure_exits_1_naming_the_cause(tmp_path):
    from tests.mqtt import make_test_ca

    ca, cert, key = make_test_ca(tmp_path / "ca")
    other_ca, _, _ = make_test_ca(tmp_path / "other", name="other-ca")
    broker = Broker(tmp_path / "broker").with_tls(ca, cert, key).start()
    try:
        wrong = run_ingest("--db", str(tmp_path / "a.db"), "--host", broker.host, "--port", str(broker.port),
                           "--username", "", "--ca-file", str(other_ca))
        missing = run_ingest("--db", str(tmp_path / "a.db"), "--host", broker.host, "--port", str(broker.port),
                             "--username", "", "--ca-file", str(tmp_path / "nowhere.crt"))
    finally:
        broker.stop()
    assert wrong.returncode == 1 and f"MQTT broker 127.0.0.1:{broker.port}: TLS handshake failed" in wrong.stderr
    assert "certificate verify failed" in wrong.stderr
    assert missing.returncode == 1 and "cannot set up TLS with CA file" in missing.stderr


def test_a_full_disk_under_the_servers_sqlite_loses_nothing(tmp_path, store):
    """The disk fills under a running ingest: it keeps its session and its messages
    unacknowledged, says why, and stores and receipts every one once there is room again."""
    import resource

    from device.contracts.receipt import parse_receipt
    from tests.mqtt import Subscriber

    db = tmp_path / "server" / "aggregate.db"
    ServerStore.open(db).close()  # the schema, before the limit
    limit = db.stat().st_size + 64 * 1024

    def full_disk() -> None:
        # Writes past the limit fail with EFBIG, as a full disk fails them with ENOSPC; the hard
        # limit stays unlimited so the test can lift it: the operator freed space.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    broker = Broker(tmp_path / "broker").start()
    receipts = Subscriber(broker, "explorer/pi-h02/receipt")
    process = subprocess.Popen(
        server_command("ingest", "--db", str(db), "--host", broker.host, "--port", str(broker.port), "--no-tls",
                       "--username", "", "--retry-max-s", "0.5"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=full_disk)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        assert _wait(lambda: any("subscribed to" in line for line in lines), 30), "".join(lines)
        ids = queue_detections(store, 600)
        assert drain_once(store, settings_for(broker), "pi-h02").ok == 600  # PUBACKed by the broker
        assert _wait(lambda: any("could not store a batch" in line for line in lines), 60), "".join(lines)
        assert any("the disk refused a write" in line or "the disk is full" in line for line in lines)
        assert process.poll() is None  # still running, still holding its session
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert _wait(lambda: len(held(str(db))) == 600, 60)
        confirmed = lambda: {i for _, body in list(receipts.messages) for i in parse_receipt(body).stored.get("detection", ())}  # noqa: E731
        assert _wait(lambda: confirmed() == set(ids), 30)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        receipts.close()
        broker.stop()
    assert process.returncode == 0, "".join(lines)
    assert held(str(db)) == set(ids)


def _wait(condition, timeout_s: float) -> bool:
    from tests.helpers import wait_until

    return wait_until(condition, timeout_s, every_s=0.1)


def test_metrics_and_health_tell_prometheus_what_the_ingest_did(tmp_path, store):
    import json as jsonlib
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    broker = Broker(tmp_path / "broker").start()
    db = tmp_path / "server" / "aggregate.db"
    process = subprocess.Popen(
        server_command("ingest", "--db", str(db), "--host", broker.host, "--port", str(broker.port), "--no-tls",
                       "--username", "", "--metrics-port", "0"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()

    def scrape() -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def health() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
                return response.status, jsonlib.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, jsonlib.loads(error.read())

    try:
        assert _wait(lambda: any("subscribed to" in line for line in lines), 30), "".join(lines)
        base = next(line.split("metrics at ")[1].split("/metrics")[0] for line in lines if "metrics at " in line)
        assert health() == (200, {"status": "ok", "broker": "connected", "database": "ok", "queued": 0,
                                  "fatal": None})
        queue_detections(store, 8)
        assert drain_once(store, settings_for(broker), "pi-h02").ok == 8
        from tests.sync_server.test_ingest import publish_raw

        publish_raw(broker, [("explorer/pi-h02/detection", b"{not json"), ("explorer/pi-h02/detection", b"\xff")])
        assert _wait(lambda: scrape().get(("explorer_ingest_refused_total", (("reason", "payload"),))) == 2, 30)
        samples = scrape()
        assert samples[("explorer_ingest_messages_total", (("kind", "detection"),))] == 10
        assert samples[("explorer_ingest_stored_total", (("kind", "detection"),))] == 8
        assert samples[("explorer_ingest_resends_total", (("kind", "detection"),))] == 0
        assert samples[("explorer_ingest_receipts_total", ())] >= 1
        every = sum(value for (name, _), value in samples.items() if name == "explorer_ingest_messages_total")
        assert samples[("explorer_ingest_latency_seconds_count", ())] == every  # one observation a message
        lag = samples[("explorer_device_lag_seconds", (("device", "pi-h02"),))]
        assert lag > 0  # the detections are from a morning in 2026-04: the lag is months
        broker.kill()
        assert _wait(lambda: health()[0] == 503, 30)
        code, details = health()
        assert details["broker"] == "disconnected" and details["status"] == "failing"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
            broker.stop()
