"""A client paging through `GET /api/v1/detections` while the ingest commits more gets every
row exactly once: new rows land after its cursor, whatever their recording time.

Two devices sync by hand at the same time as the client pages (threads; real Mosquitto, real
`explorer-server run`): one sends the newest detections, the other a week-old backlog (its
recordings' times sort BEFORE everything already listed: a cursor on time would skip them).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from device.store import Store
from tests.device.sync.conftest import queue_detections
from tests.sync_server.api.conftest import T0, device_store

FIRST = 120
"""Detections on the server before the client starts."""
DURING = 200
"""Detections each of the two devices sends while it pages."""


def test_a_client_paging_while_the_ingest_runs_sees_every_row_once(running_server, tmp_path, monkeypatch):
    server = running_server
    early = device_store(tmp_path, "pi-h02", "H02")
    late = device_store(tmp_path, "pi-h07", "H07")
    backlog = device_store(tmp_path, "pi-h11", "H02")
    try:
        sent = set(queue_detections(early, FIRST, device_id="pi-h02"))
        server.sync(early, "pi-h02")
        sent |= set(queue_detections(late, DURING, device_id="pi-h07", start=10_000))
        with monkeypatch.context() as patch:  # a week-old backlog: recorded before everything above
            patch.setattr("tests.device.sync.conftest.T0", T0 - timedelta(days=7))
            sent |= set(queue_detections(backlog, DURING, device_id="pi-h11"))
        seen: list[str] = []
        page = server.get("/api/v1/detections", params={"limit": 50}).json()
        seen += [row["detection_id"] for row in page["detections"]]
        cursor = page["next_cursor"]
        assert cursor is not None  # the first page did not reach the end: the rest is read during the ingest

        failures: list[BaseException] = []

        def sync_from(path, device_id) -> None:  # a SQLite connection stays in the thread that made it
            try:
                with Store.open(path) as store:
                    server.sync(store, device_id)
            except BaseException as exc:  # noqa: BLE001 (reported below)
                failures.append(exc)

        for store in (late, backlog):
            store.close()
        syncing = [threading.Thread(target=sync_from, args=(tmp_path / f"{device_id}.db", device_id))
                   for device_id in ("pi-h07", "pi-h11")]
        for thread in syncing:
            thread.start()
        caught_up_after_sync = False
        while not caught_up_after_sync:
            finished = not any(thread.is_alive() for thread in syncing)  # before the page: no row can come after
            page = server.get("/api/v1/detections", params={"limit": 50, "cursor": cursor}).json()
            seen += [row["detection_id"] for row in page["detections"]]
            cursor = page["resume_cursor"]
            if page["next_cursor"] is None:
                caught_up_after_sync = finished
                time.sleep(0.02)
        for thread in syncing:
            thread.join()
        assert not failures, failures
    finally:
        for store in (early, late, backlog):
            store.close()
    assert len(seen) == len(set(seen)), "a row was listed twice"
    assert set(seen) == sent, f"{len(sent - set(seen))} rows never listed"
