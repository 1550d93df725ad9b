"""What delivering the outbox costs, beside bare QoS 1 publishing of the same payloads.

    python -m bench.sync_cost                 # 2000 detections, 5 rounds, a local Mosquitto
    python -m bench.sync_cost --messages 500 --rounds 9

Starts Mosquitto (apt `mosquitto`) on a free loopback port. Each round queues N real-shaped
detection messages in a scratch device database (as the pipeline's writer does), then times:

- baseline: paho publishing the same N payloads with QoS 1 and waiting for every PUBACK,
  with no database at all (the floor any MQTT client pays);
- outbox drain: `OutboxPublisher.drain()`: read pending, publish, wait for PUBACKs, append one
  attempt row per message (SQLite, WAL, synchronous=FULL).

Both against a broker configured as we deploy it (`set_tcp_nodelay true`); a third row drains
to a stock broker, where each batch's last PUBACK waits ~40 ms (Nagle's algorithm meeting the
client's delayed ACK). Prints medians over rounds (messages per second, ms per message) and
each row's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import paho.mqtt.client as mqtt

    from device.store import Store
    from device.sync.publisher import OutboxPublisher
    from tests.device.sync.conftest import DEVICE, queue_detections, settings_for
    from tests.mqtt import Broker

    with tempfile.TemporaryDirectory() as scratch:
        broker = Broker(Path(scratch) / "broker").start()
        stock = Broker(Path(scratch) / "stock", tcp_nodelay=False).start()
        settings = settings_for(broker)
        baseline_s, drain_s, stock_s = [], [], []
        try:
            for round_no in range(args.rounds):
                store = Store.open(Path(scratch) / f"round{round_no}.db")
                queue_detections(store, args.messages)
                messages = store.pending_messages(args.messages)

                client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
                client.connect(broker.host, broker.port)
                client.loop_start()
                started = time.perf_counter()
                infos = [client.publish(m.topic, m.payload.encode(), qos=1) for m in messages]
                for info in infos:
                    info.wait_for_publish(30)
                baseline_s.append(time.perf_counter() - started)
                client.disconnect()
                client.loop_stop()

                with OutboxPublisher(store, settings, DEVICE) as publisher:
                    started = time.perf_counter()
                    report = publisher.drain()
                    drain_s.append(time.perf_counter() - started)
                assert report.ok == args.messages, report
                store.close()

                store = Store.open(Path(scratch) / f"stock{round_no}.db")
                queue_detections(store, args.messages)
                with OutboxPublisher(store, settings_for(stock), DEVICE) as publisher:
                    started = time.perf_counter()
                    report = publisher.drain()
                    stock_s.append(time.perf_counter() - started)
                assert report.ok == args.messages, report
                store.close()
        finally:
            broker.stop()
            stock.stop()

    n = args.messages
    base = statistics.median(baseline_s)
    print(f"{n} messages per round, {args.rounds} rounds, Mosquitto on loopback; medians\n")
    print(f"{'path':<44} {'msg/s':>9} {'ms/msg':>8} {'× baseline':>11}")
    for name, times in (("baseline: paho QoS 1, no store", baseline_s),
                        ("outbox drain (store + PUBACK)", drain_s),
                        ("outbox drain, broker without set_tcp_nodelay", stock_s)):
        took = statistics.median(times)
        print(f"{name:<44} {n / took:9.0f} {1000 * took / n:8.3f} {took / base:11.2f}")


if __name__ == "__main__":
    main()
