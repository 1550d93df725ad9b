"""Sustained ingest: detections committed with receipts per second, on SQLite and on PostgreSQL,
beside bare QoS 1 publishing of the same payloads in the same run.

    python -m bench.ingest_cost                       # 20,000 detections from 10 devices, 3 rounds
    python -m bench.ingest_cost --messages 50000 --rounds 5 --engines postgresql

Starts Mosquitto (apt `mosquitto`, queueing without limit and logging as deploy/broker/ ships
it) and, for the PostgreSQL rows, a durable PostgreSQL server (fsync on; apt `postgresql`) on
loopback. Each round's workers' sessions are ended after it, so no round pays for the last
one's. Each round:

- baseline: one paho client publishes the N payloads with QoS 1 and waits for every PUBACK,
  with nobody subscribed (the floor any MQTT client pays on this machine);
- receive floor: the same, while a paho MQTT 5 subscriber in its own process (manual
  acknowledgement and the ingest's Receive Maximum, as the ingest's client is) acknowledges each
  message as it comes and stores nothing: about the most a paho-based ingest worker could
  reach on this machine, whatever its database;
- ingest: `explorer-server ingest` runs as its own process on a fresh database; the same client
  publishes the same N payloads while a second client counts the ids the receipts name. The
  clock runs from the first publish to the last id receipted: every detection committed (the
  receipt is published only after the commit) and the device told so.

Prints medians over rounds (detections per second), each row's ratio to the baseline, and the
CPU each ingest worker process spent per detection (its user + system time over the round,
start-up included): one worker's Python runs on one core at a time, so 1,000,000 over that
number is what one worker could reach with a core to itself. The target for the ingest rows is
at least 5,000 detections/s committed with receipts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_PER_S = 5_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def payloads(count: int, devices: int) -> list[tuple[str, bytes, str]]:
    """(topic, body, detection id) for `count` real-shaped detections spread over `devices`."""
    from device.contracts.detection import detection_to_payload, detection_topic, payload_to_json
    from device.domain import Detection

    start = datetime(2026, 4, 20, 5, 0, tzinfo=timezone.utc)
    items = []
    for n in range(count):
        device_id = f"pi-{n % devices:03d}"
        began = start + timedelta(seconds=5 * (n // devices))
        detection = Detection(
            label="21211", started_on=began, ended_on=began + timedelta(seconds=5), confidence=0.91,
            branch_scores={"birdnet": 0.12, "frog_head": 0.91}, bundle_name="elsilencio-default",
            bundle_version="1.0.0", bundle_sha256="ab" * 32, device_id=device_id, tour_id=None,
            source="mic:USB Audio Device", start_s=5.0 * (n // devices), end_s=5.0 * (n // devices) + 5,
            detection_id=str(uuid.uuid4()),
        )
        items.append((detection_topic(device_id), payload_to_json(detection_to_payload(detection)).encode(),
                      detection.detection_id))
    return items


def publish_all(broker, items) -> float:
    """Seconds to publish every item with QoS 1 and have every PUBACK."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        started = time.perf_counter()
        infos = [client.publish(topic, body, qos=1) for topic, body, _ in items]
        for info in infos:
            info.wait_for_publish(120)
        return time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()


class ReceiptCounter:
    """Counts the distinct detection ids named by receipts, and when the last expected one came."""

    def __init__(self, broker, expected: set[str]):
        import paho.mqtt.client as mqtt

        self.expected = set(expected)
        self.seen: set[str] = set()
        self.done = threading.Event()
        self.finished_at = 0.0
        self._subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-receipts-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("explorer/+/receipt", qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        if not self._subscribed.wait(20):
            raise RuntimeError("receipt counter: no SUBACK")
        self.client = client

    def _on_message(self, client, userdata, message) -> None:
        from device.contracts.receipt import parse_receipt

        self.seen.update(parse_receipt(message.payload).stored.get("detection", ()))
        if not self.done.is_set() and self.expected <= self.seen:
            self.finished_at = time.perf_counter()
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def acking_subscriber(host: str, port: int, count: int) -> None:
    """The receive floor's subscriber (run as `python -m bench.ingest_cost --acking-subscriber
    HOST PORT COUNT`): prints 'subscribed', then 'done' once `count` detections are acknowledged.
    Its session is not kept past the round (the ingest's is; keeping one costs nothing while
    connected)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from device.contracts.topics import subscription
    from sync_server.ingest import RECEIVE_MAXIMUM

    received = 0
    done = threading.Event()

    def on_message(client, userdata, message) -> None:
        nonlocal received
        client.ack(message.mid, message.qos)
        received += 1
        if received == count:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-floor-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5, manual_ack=True)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(subscription("detection"), qos=1)
    client.on_subscribe = lambda c, u, mid, rcs, p: print("subscribed", flush=True)
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # no session expiry: the session ends with the round
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    client.connect(host, port, clean_start=True, properties=properties)
    client.loop_start()
    done.wait(600)
    print("done" if done.is_set() else f"only {received}", flush=True)
    client.disconnect()
    client.loop_stop()


def receive_floor_round(broker, items) -> float:
    """Detections per second published and acknowledged by a subscriber that stores nothing."""
    process = subprocess.Popen([sys.executable, "-m", "bench.ingest_cost", "--acking-subscriber", broker.host,
                                str(broker.port), str(len(items))], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "subscribed":
            raise RuntimeError("the receive floor's subscriber did not subscribe")
        started = time.perf_counter()
        publish_all(broker, items)
        line = process.stdout.readline().strip()
        finished = time.perf_counter()
        if line != "done":
            raise RuntimeError(f"the receive floor's subscriber: {line or 'exited'}")
        return len(items) / (finished - started)
    finally:
        process.wait(30)


def ingest_round(broker, target: str, items, workers: int = 1) -> tuple[float, float]:
    """Detections per second committed with receipts through real `explorer-server ingest`
    processes (several: a shared subscription), and the CPU seconds per detection the workers
    spent between them."""
    group = f"bench-{uuid.uuid4().hex[:6]}"
    processes, logs = [], []
    for n in range(workers):
        command = [sys.executable, "-m", "sync_server.cli", "ingest", "--db", target, "--host", broker.host,
                   "--port", str(broker.port), "--no-tls", "--username", "", "--client-id", f"{group}-{n}"]
        if workers > 1:
            command += ["--share-group", group]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda p=process, out=lines: out.extend(iter(p.stderr.readline, "")),
                         daemon=True).start()
        processes.append(process)
        logs.append(lines)
    counter = None
    try:
        deadline = time.monotonic() + 60
        while not all(any("subscribed to" in line for line in lines) for lines in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("an ingest worker did not subscribe:\n" + "".join(sum(logs, [])))
            time.sleep(0.05)
        counter = ReceiptCounter(broker, {i for _, _, i in items})
        started = time.perf_counter()
        publish_all(broker, items)
        if not counter.done.wait(600):
            raise RuntimeError(f"only {len(counter.seen)} of {len(items)} receipted within 600 s")
        cpu = sum(cpu_seconds(p.pid) for p in processes)
        return len(items) / (counter.finished_at - started), cpu / len(items)
    finally:
        if counter is not None:
            counter.close()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        forget_sessions(broker, [f"{group}-{n}" for n in range(workers)])


def forget_sessions(broker, client_ids) -> None:
    """End the persistent sessions a round's workers left: otherwise the broker keeps queueing
    every later round's detections for them, and each round would cost Mosquitto more."""
    import paho.mqtt.client as mqtt

    for client_id in client_ids:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: connected.set()
        client.connect(broker.host, broker.port, clean_start=True)  # no expiry: gone at disconnect
        client.loop_start()
        connected.wait(10)
        client.disconnect()
        client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="Ingest worker processes per row (more than one: a shared subscription).")
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--acking-subscriber", nargs=3, metavar=("HOST", "PORT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.acking_subscriber:
        host, port, count = args.acking_subscriber
        acking_subscriber(host, int(port), int(count))
        return

    from tests.mqtt import Broker
    from tests.postgres import Postgres

    class UnboundedBroker(Broker):
        def config(self) -> Path:
            # As shipped: a persistent session queues without a 1,000 cap, and the log has
            # Mosquitto's default types (the tests' `log_type all` writes lines per message).
            conf = super().config()
            lines = [line for line in conf.read_text().splitlines() if line != "log_type all"]
            conf.write_text("\n".join(lines + ["max_queued_messages 0", "max_inflight_messages 100"]) + "\n")
            return conf

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        broker = UnboundedBroker(scratch / "broker").start()
        postgres = Postgres(durable=True).start() if "postgresql" in args.engines else None
        rows: dict[str, list[float]] = {"baseline": [], "floor": []}
        cpu: dict[tuple[str, int], list[float]] = {}
        try:
            for round_no in range(args.rounds):
                items = payloads(args.messages, args.devices)
                rows["baseline"].append(len(items) / publish_all(broker, items))
                rows["floor"].append(receive_floor_round(broker, payloads(args.messages, args.devices)))
                for engine in args.engines:
                    for workers in args.workers:
                        items = payloads(args.messages, args.devices)
                        if engine == "sqlite":
                            target = str(scratch / f"round{round_no}-{workers}.db")
                        else:
                            target = postgres.url(postgres.create_database())
                        rate, seconds = ingest_round(broker, target, items, workers)
                        rows.setdefault((engine, workers), []).append(rate)
                        cpu.setdefault((engine, workers), []).append(seconds)
        finally:
            broker.stop()
            if postgres is not None:
                postgres.remove()

    base, floor = statistics.median(rows.pop("baseline")), statistics.median(rows.pop("floor"))
    print(f"{args.messages} detections from {args.devices} devices per round, {args.rounds} rounds, "
          f"Mosquitto and the ingest on loopback, {os.cpu_count()} CPUs; medians\n")
    print(f"{'path':<72}{'det/s':>9}{'× baseline':>12}{'worker CPU µs/det':>19}")
    print(f"{'baseline: paho QoS 1 publish, PUBACKs, no ingest':<72}{base:>9.0f}{1.0:>12.2f}")
    print(f"{'receive floor: + a paho subscriber acking each message, no database':<72}{floor:>9.0f}"
          f"{floor / base:>12.2f}")
    for (engine, workers), rates in rows.items():
        rate, spent = statistics.median(rates), statistics.median(cpu[engine, workers]) * 1e6
        name = {"sqlite": "SQLite (WAL, sync FULL)", "postgresql": "PostgreSQL 15 (fsync on)"}[engine]
        label = f"ingest, committed + receipted: {name}, {workers} worker{'s' if workers > 1 else ''}"
        verdict = "meets" if rate >= TARGET_PER_S else "misses"
        print(f"{label:<72}{rate:>9.0f}{rate / base:>12.2f}{spent:>19.0f}   ({verdict} the {TARGET_PER_S:,}/s target)")


if __name__ == "__main__":
    main()
