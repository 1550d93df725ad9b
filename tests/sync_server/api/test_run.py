"""`explorer-server run` as an operator runs it: with a broker of its own (Mosquitto as a child
process; else our in-process MQTT 5 broker), and on PostgreSQL with a broker it is given. Each time a device's
real `explorer sync` reaches the API through it, and SIGTERM stops everything it started.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.device.sync.conftest import queue_detections
from tests.helpers import REPO
from tests.sync_server.api.conftest import device_store, server_command, start_server


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def command_of(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def takes_a_devices_detections(server, tmp_path) -> None:
    """A device's real `explorer sync` of 12 detections reaches the server's database."""
    with device_store(tmp_path, "pi-h02", "H02") as store:
        sent = set(queue_detections(store, 12))
        server.sync(store, "pi-h02")
    assert {row["detection_id"] for row in server.all_detections()} == sent


def stopped_cleanly(server, code: int) -> None:
    """After SIGTERM: exit 0, the ingest's batch in hand stored."""
    assert code == 0, server.log()
    assert "ingest stopped: 12 stored" in server.log()


def test_run_starts_mosquitto_of_its_own_takes_a_devices_detections_and_stops_it(tmp_path):
    server = start_server(tmp_path / "server")
    try:
        assert "(mosquitto, started by run)" in server.log()
        brokers = [pid for pid in child_pids(server.process.pid) if "mosquitto" in command_of(pid)]
        assert len(brokers) == 1
        conf = tmp_path / "server" / "broker" / "mosquitto.conf"
        assert conf.is_file() and f"listener {server.broker_port} 127.0.0.1" in conf.read_text()
        takes_a_devices_detections(server, tmp_path)
    finally:
        code = server.stop()
    stopped_cleanly(server, code)
    assert not Path(f"/proc/{brokers[0]}").exists() or "mosquitto" not in command_of(brokers[0])


def test_run_without_mosquitto_serves_devices_through_its_in_process_mqtt_5_broker(tmp_path):
    """Without Mosquitto (here: told not to use it), `run` starts our own broker in its process
    (sync_server/broker/), and a device's real `explorer sync` reaches the API through it; its
    sessions are saved beside the database at a clean stop."""
    server = start_server(tmp_path / "server", None, None, "--own-broker", "in-process")
    try:
        assert "(in-process, started by run)" in server.log()
        assert not [pid for pid in child_pids(server.process.pid) if "mosquitto" in command_of(pid)]
        takes_a_devices_detections(server, tmp_path)
    finally:
        code = server.stop()
    stopped_cleanly(server, code)
    assert (tmp_path / "server" / "broker" / "own-broker-state.sqlite").is_file()


def test_run_names_the_in_process_brokers_port_when_it_is_taken(tmp_path, running_server):
    answer = subprocess.run(server_command("run", "--db", str(tmp_path / "a.db"), "--http-port", "0",
                                           "--own-broker", "in-process", "--mqtt-port", str(running_server.broker_port)),
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 1, answer.stderr
    assert f"cannot listen on 127.0.0.1:{running_server.broker_port}" in answer.stderr.strip().splitlines()[-1]
    assert "Traceback" not in answer.stderr


def test_run_on_postgresql_with_a_broker_it_is_given(tmp_path, postgres_server, mosquitto):
    name = postgres_server.create_database()
    server = start_server(tmp_path / "server", postgres_server.url(name), mosquitto)
    try:
        assert "started by run" not in server.log()
        with device_store(tmp_path, "pi-h02", "H02") as store:
            sent = set(queue_detections(store, 8))
            server.sync(store, "pi-h02")
        rows = server.all_detections()
        assert {row["detection_id"] for row in rows} == sent
        assert all(row["device_id"] == "pi-h02" and row["bundle_version"] == "1.0.0" for row in rows)
        assert server.get("/api/v1/devices").json()["devices"][0]["detection_count"] == 8
        assert server.get("/api/v1/detections", token="exp_wrong").status_code == 401
    finally:
        code = server.stop()
        postgres_server.drop_database(name)
    assert code == 0, server.log()


def test_run_names_a_port_it_cannot_take(tmp_path, running_server):
    taken = running_server.url.rsplit(":", 1)[1]
    answer = subprocess.run([sys.executable, "-m", "sync_server.cli", "run", "--db", str(tmp_path / "a.db"),
                             "--http-port", taken], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 1 and f"cannot serve the API on 127.0.0.1:{taken}" in answer.stderr
    assert "Traceback" not in answer.stderr
