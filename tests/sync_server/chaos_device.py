"""One simulated device for the chaos test: a real device store (detections closed with their
outbox messages, as the pipeline's writer does) drained by the real sync worker.

    python -m tests.sync_server.chaos_device DB DEVICE_ID HOST PORT TOTAL

Closes detections in bursts until the store holds TOTAL (a restart after kill -9 goes on from
what the store already holds: nothing is made twice), with the sync worker running all along;
then waits until every outbox message is confirmed by a receipt, prints `confirmed N` and exits
0. The worker's settings are the shipped ones but for a short receipt timeout and back-off, so
the test's faults heal in seconds rather than the minutes a trail can wait.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

BURST = 10
"""Detections closed per burst (a burst every BURST_EVERY_S: ~200 a second, so the test's
faults land while detections are still on their way)."""
BURST_EVERY_S = 0.05
RECEIPT_TIMEOUT_S = 4.0
"""A PUBACKed message no receipt confirmed within this long is sent again."""
GIVE_UP_S = 600.0


def main() -> None:
    database, device_id, host, port, total = sys.argv[1:6]
    total = int(total)
    from device.config import SyncSettings
    from device.store import Store
    from device.sync.worker import SyncWorker
    from tests.device.sync.conftest import queue_detections

    settings = SyncSettings(enabled=True, host=host, port=int(port), interval_s=1.0,
                            receipt_timeout_s=RECEIPT_TIMEOUT_S, status_interval_s=30.0)
    store = Store.open(Path(database))
    worker = SyncWorker(Path(database), settings, device_id, backoff_first_s=0.2, backoff_max_s=2.0).start()
    try:
        made = store.db.execute("SELECT count(*) FROM detection").fetchone()[0]
        while made < total:
            queue_detections(store, min(BURST, total - made), device_id=device_id, start=made)
            made = store.db.execute("SELECT count(*) FROM detection").fetchone()[0]
            worker.wake()
            time.sleep(BURST_EVERY_S)
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            counts = store.outbox_counts()
            if counts.confirmed == made and not counts.pending and not counts.unconfirmed:
                print(f"confirmed {counts.confirmed}", flush=True)
                return
            worker.wake()
            time.sleep(0.2)
        raise SystemExit(f"{device_id}: not every message confirmed within {GIVE_UP_S:.0f} s: {store.outbox_counts()}")
    finally:
        worker.stop()
        store.close()


if __name__ == "__main__":
    main()
