"""A fleet on loopback: 1,000 simulated devices, each with a retained status (and its last will)
and one detection every 5 s, through Mosquitto into one `explorer-server ingest`; the lag from a
detection's publish to its committed row, beside the bare QoS 1 round trip in the same run.

    python -m bench.fleet_lag                          # 1,000 devices for 60 s, SQLite
    python -m bench.fleet_lag --devices 300 --seconds 30 --engine postgresql

The devices are paho MQTT 5 clients driven from one thread through paho's external-loop API
(one selector over every socket: 1,000 threads would measure the scheduler, not the ingest).
Each connects with a retained offline will, publishes a retained online status, then one QoS 1
detection every 5 s, the devices' phases spread evenly over the 5 s. For every detection the
bench records when it was published and when its PUBACK came back; once the run ends and
everything is committed, the row's `first_received_on` (stamped in the committing transaction)
gives publish-to-commit lag. Prints p50, p99 and max of both, and the target: p99 of
publish-to-commit under 2 s.
"""

from __future__ import annotations

import argparse
import resource
import selectors
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PERIOD_S = 5.0
TARGET_P99_S = 2.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Fleet:
    """`count` device clients on one selector thread."""

    def __init__(self, broker, count: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from device.contracts.status import status_to_json, status_topic
        from device.domain import Status

        self.published: dict[str, float] = {}
        """detection id -> wall-clock publish time"""
        self.acked: dict[str, float] = {}
        self._mid_to_id: dict[tuple[int, int], str] = {}
        self.clients = []
        self.ids = [f"fleet-{n:04d}" for n in range(count)]
        for n, device_id in enumerate(self.ids):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
            will = Status(device_id, False, datetime.now(timezone.utc), "bench")
            client.will_set(status_topic(device_id), status_to_json(will), qos=1, retain=True)
            client.on_publish = lambda c, u, mid, rc, p, n=n: self._on_puback(n, mid)
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
            client.connect(broker.host, broker.port, keepalive=60, properties=properties)
            self.clients.append(client)
        self.selector = selectors.DefaultSelector()
        for n, client in enumerate(self.clients):
            self.selector.register(client.socket(), selectors.EVENT_READ, n)
        self._status = (status_to_json, status_topic, Status)

    def _on_puback(self, n: int, mid: int) -> None:
        detection_id = self._mid_to_id.pop((n, mid), None)
        if detection_id is not None:
            self.acked[detection_id] = time.time()

    def pump(self, seconds: float) -> None:
        """Serve every socket for `seconds` (reads, pending writes, keepalives)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in self.selector.select(min(left, 0.01)):
                self.clients[key.data].loop_read()
            for client in self.clients:
                if client.want_write():
                    client.loop_write()

    def announce(self) -> None:
        status_to_json, status_topic, Status = self._status
        for device_id, client in zip(self.ids, self.clients):
            status = Status(device_id, True, datetime.now(timezone.utc), "bench", "elsilencio-default", "1.0.0", 0, 0)
            client.publish(status_topic(device_id), status_to_json(status), qos=1, retain=True)

    def send_detection(self, n: int, payload_for) -> None:
        topic, body, detection_id = payload_for(self.ids[n])
        info = self.clients[n].publish(topic, body, qos=1)
        self.published[detection_id] = time.time()
        self._mid_to_id[(n, info.mid)] = detection_id

    def misc(self) -> None:
        for client in self.clients:
            client.loop_misc()

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_write()


def detection_payload(device_id: str) -> tuple[str, bytes, str]:
    from device.contracts.detection import detection_to_payload, detection_topic, payload_to_json
    from device.domain import Detection

    now = datetime.now(timezone.utc)
    detection = Detection(
        label="21211", started_on=now, ended_on=now, confidence=0.9, branch_scores={"birdnet": 0.9},
        bundle_name="elsilencio-default", bundle_version="1.0.0", bundle_sha256="ab" * 32, device_id=device_id,
        source="mic:USB Audio Device", detection_id=str(uuid.uuid4()),
    )
    return detection_topic(device_id), payload_to_json(detection_to_payload(detection)).encode(), detection.detection_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--engine", default="sqlite", choices=["sqlite", "postgresql"])
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.devices + 256)), hard))

    from sync_server.db import ServerStore
    from sync_server.db.schema import detection
    from sqlalchemy import select
    from tests.mqtt import Broker
    from tests.postgres import Postgres

    class FleetBroker(Broker):
        def config(self) -> Path:  # as shipped: no cap on a persistent session's queue
            conf = super().config()
            conf.write_text(conf.read_text() + "max_queued_messages 0\nmax_connections -1\n")
            return conf

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        broker = FleetBroker(scratch / "broker").start()
        postgres = Postgres(durable=True).start() if args.engine == "postgresql" else None
        target = postgres.url(postgres.create_database()) if postgres else str(scratch / "aggregate.db")
        ingest = subprocess.Popen(
            [sys.executable, "-m", "sync_server.cli", "ingest", "--db", target, "--host", broker.host,
             "--port", str(broker.port), "--no-tls", "--username", "", "--client-id", "fleet-ingest"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(ingest.stderr.readline, "")), daemon=True).start()
        fleet = None
        try:
            deadline = time.monotonic() + 60
            while not any("subscribed to" in line for line in lines):
                if time.monotonic() > deadline or ingest.poll() is not None:
                    raise RuntimeError("the ingest did not subscribe:\n" + "".join(lines))
                time.sleep(0.05)
            fleet = Fleet(broker, args.devices)
            fleet.pump(5.0)  # CONNACKs
            fleet.announce()
            started = time.monotonic()
            next_misc = started + 1.0
            slot = PERIOD_S / args.devices
            sent = 0
            while time.monotonic() - started < args.seconds:
                due = int((time.monotonic() - started) / slot)
                while sent <= due:  # device (sent % count) sends its detection now
                    fleet.send_detection(sent % args.devices, detection_payload)
                    sent += 1
                fleet.pump(slot / 2)
                if time.monotonic() >= next_misc:
                    fleet.misc()
                    next_misc += 1.0
            expected = set(fleet.published)
            with ServerStore.open(target) as store:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    fleet.pump(0.5)
                    if len(store.detection_ids()) >= len(expected):
                        break
                with store.engine.connect() as connection:
                    rows = connection.execute(select(detection.c.detection_id, detection.c.first_received_on)).all()
                statuses = store.statuses()
        finally:
            if fleet is not None:
                fleet.close()
            ingest.terminate()
            try:
                ingest.wait(30)
            except subprocess.TimeoutExpired:
                ingest.kill()
            broker.stop()
            if postgres is not None:
                postgres.remove()

    committed = {i: datetime.fromisoformat(on.replace("Z", "+00:00")).timestamp() for i, on in rows}
    lags = [committed[i] - fleet.published[i] for i in expected if i in committed]
    acks = [fleet.acked[i] - fleet.published[i] for i in expected if i in fleet.acked]
    missing = len(expected - set(committed))
    print(f"{args.devices} devices, one detection every {PERIOD_S:.0f} s each ({args.devices / PERIOD_S:.0f}/s), "
          f"{args.seconds:.0f} s, {len(expected)} detections, {args.engine}; {len(statuses)} statuses stored, "
          f"{missing} detections not committed\n")
    print(f"{'lag':<44}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, values in (("baseline: publish -> PUBACK (bare QoS 1)", acks), ("publish -> committed row", lags)):
        print(f"{name:<44}{statistics.median(values) * 1000:>9.1f}{percentile(values, 99) * 1000:>9.1f}"
              f"{max(values) * 1000:>9.1f}")
    p99 = percentile(lags, 99)
    print(f"\np99 publish -> committed: {p99:.3f} s ({'meets' if p99 < TARGET_P99_S else 'misses'} the "
          f"{TARGET_P99_S:.0f} s target); ratio to the bare round trip's p99: {p99 / percentile(acks, 99):.1f}x")


if __name__ == "__main__":
    main()
