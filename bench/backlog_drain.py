"""A week offline, then coverage: how long one device takes to get a 50,000-detection backlog
confirmed by the server, beside bare QoS 1 publishing of the same payloads in the same run.

    python -m bench.backlog_drain                    # 50,000 detections, 3 rounds, SQLite
    python -m bench.backlog_drain --detections 20000 --engine postgresql

Starts Mosquitto (as deploy/broker/ ships it: queueing without the default 1,000 cap) and a real
`explorer-server ingest` process on a fresh database. Each round builds a device store holding
the backlog (real detection rows with their outbox messages, as the pipeline's writer leaves
them), then times:

- baseline: one paho client publishing the same payloads with QoS 1 and waiting for every
  PUBACK (no store, no receipts);
- backlog: `explorer sync` by hand (`device.sync.by_hand.sync_by_hand`): the real outbox drain
  over the device's persistent session, until every message is confirmed by a server receipt.

Prints medians (seconds, detections per second) and the ratio to the baseline; the target is the
whole backlog confirmed in under 30 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 30.0
DEVICE = "pi-week"


def build_backlog(path: Path, count: int) -> list[tuple[str, bytes]]:
    """A device store with `count` closed detections over a week (one transaction: setting up
    is not what is measured); returns the queued (topic, payload) pairs."""
    from device.domain import Detection
    from device.store import Store
    from device.store import detections as rows
    from device.store.database import transaction

    start = datetime(2026, 4, 13, 5, 0, tzinfo=timezone.utc)
    every = timedelta(days=7) / count
    store = Store.open(path)
    try:
        with transaction(store.db):
            for n in range(count):
                began = start + n * every
                rows.save_detection(store.db, Detection(
                    label="21211", started_on=began, ended_on=began + timedelta(seconds=5), confidence=0.9,
                    branch_scores={"birdnet": 0.1, "frog_head": 0.9}, bundle_name="elsilencio-default",
                    bundle_version="1.0.0", bundle_sha256="ab" * 32, device_id=DEVICE, source="mic:USB Audio",
                    start_s=0.0, end_s=5.0), True)
        return [(topic, payload.encode()) for topic, payload in
                store.db.execute("SELECT topic, payload FROM outbox_message")]
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", default="sqlite", choices=["sqlite", "postgresql"])
    args = parser.parse_args()

    from bench.ingest_cost import publish_all
    from device.config import SyncSettings
    from device.store import Store
    from device.sync.by_hand import sync_by_hand
    from tests.mqtt import Broker
    from tests.postgres import Postgres

    class ShippedQueues(Broker):
        def config(self) -> Path:
            conf = super().config()
            conf.write_text(conf.read_text() + "max_queued_messages 0\nmax_inflight_messages 1000\n")
            return conf

    baseline_s, drain_s = [], []
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        broker = ShippedQueues(scratch / "broker").start()
        postgres = Postgres(durable=True).start() if args.engine == "postgresql" else None
        try:
            for round_no in range(args.rounds):
                items = build_backlog(scratch / f"baseline{round_no}.db", args.detections)
                baseline_s.append(publish_all(broker, [(t, b, None) for t, b in items]))

                target = postgres.url(postgres.create_database()) if postgres else str(scratch / f"agg{round_no}.db")
                ingest = subprocess.Popen(
                    [sys.executable, "-m", "sync_server.cli", "ingest", "--db", target, "--host", broker.host,
                     "--port", str(broker.port), "--no-tls", "--username", "", "--client-id", f"week-{round_no}"],
                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                lines: list[str] = []
                threading.Thread(target=lambda: lines.extend(iter(ingest.stderr.readline, "")), daemon=True).start()
                try:
                    deadline = time.monotonic() + 60
                    while not any("subscribed to" in line for line in lines):
                        if time.monotonic() > deadline or ingest.poll() is not None:
                            raise RuntimeError("the ingest did not subscribe:\n" + "".join(lines))
                        time.sleep(0.05)
                    path = scratch / f"device{round_no}.db"
                    build_backlog(path, args.detections)
                    store = Store.open(path)
                    settings = SyncSettings(enabled=True, host=broker.host, port=broker.port)
                    started = time.perf_counter()
                    report = sync_by_hand(store, settings, DEVICE, wait_s=600)
                    drain_s.append(time.perf_counter() - started)
                    counts = store.outbox_counts()
                    store.close()
                    if counts.confirmed != args.detections:
                        raise RuntimeError(f"only {counts.confirmed} of {args.detections} confirmed: {report}")
                finally:
                    ingest.terminate()
                    try:
                        ingest.wait(30)
                    except subprocess.TimeoutExpired:
                        ingest.kill()
        finally:
            broker.stop()
            if postgres is not None:
                postgres.remove()

    base, drain = statistics.median(baseline_s), statistics.median(drain_s)
    n = args.detections
    print(f"a one-week backlog of {n} detections from one device, {args.rounds} rounds, {args.engine}, "
          "Mosquitto and the ingest on loopback; medians\n")
    print(f"{'path':<58}{'s':>8}{'det/s':>9}{'× baseline':>12}")
    print(f"{'baseline: paho QoS 1 publish, PUBACKs only':<58}{base:>8.1f}{n / base:>9.0f}{1.0:>12.2f}")
    print(f"{'explorer sync: drained and every one receipted':<58}{drain:>8.1f}{n / drain:>9.0f}{drain / base:>12.2f}")
    print(f"\n{'meets' if drain < TARGET_S else 'misses'} the {TARGET_S:.0f} s target")


if __name__ == "__main__":
    main()
