"""The sync worker and `explorer sync`: detections from real runs reach a real broker."""

from __future__ import annotations

import time

from device.contracts.detection import parse_payload
from device.sync.worker import SyncWorker
from tests.device.sync.conftest import DEVICE, queue_detections, settings_for
from tests.helpers import query, run_explorer, wait_until
from tests.mqtt import Broker, Subscriber, free_port

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis (21211), 38 s, 32 kHz


def test_the_worker_backs_off_while_the_broker_is_down_and_delivers_when_it_returns(tmp_path, store):
    ids = queue_detections(store, 12)
    broker = Broker(tmp_path / "broker", port=free_port())  # not started yet: the trail has no network
    worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0), DEVICE, backoff_first_s=0.2).start()
    try:
        assert wait_until(lambda: worker.state.last_error is not None, 10)
        assert f"127.0.0.1:{broker.port}: cannot connect" in worker.state.last_error
        assert store.pending_count() == 12 and not worker.state.connected

        broker.start()
        subscriber = Subscriber(broker, "explorer/#")
        try:
            assert wait_until(lambda: store.pending_count() == 0, 20)
            received = subscriber.wait_for(12)
        finally:
            subscriber.close()
        assert sorted(parse_payload(body)["detection_id"] for _, body in received) == sorted(ids)
        state = worker.state
        assert state.connected and state.sent == 12 and state.last_error is None and state.last_ok_on is not None

        more = queue_detections(store, 3)  # new detections while connected go on the next wake
        worker.wake()
        assert wait_until(lambda: store.pending_count() == 0, 10)
        assert worker.state.sent == 15 and len(more) == 3
    finally:
        worker.stop()
        broker.stop()
    assert not worker.state.connected


def test_a_run_with_sync_enabled_delivers_every_detection_it_closed(device_home, shared_data, broker):
    device_home.config_file.write_text(
        f'[device]\nid = "{DEVICE}"\n\n[sync]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\ninterval_s = 1.0\n'
    )
    subscriber = Subscriber(broker, f"explorer/{DEVICE}/detection")
    try:
        result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)
        assert result.returncode == 0, result.stderr
        closed = sorted(row[0] for row in query(device_home.database, "SELECT detection_id FROM detection"))
        received = subscriber.wait_for(len(closed))
    finally:
        subscriber.close()
    assert closed, "the frog recording gave no detection"
    payloads = [parse_payload(body) for _, body in received]
    assert sorted(p["detection_id"] for p in payloads) == closed
    assert {p["label"] for p in payloads} >= {"21211"} and {p["device_id"] for p in payloads} == {DEVICE}
    pending = query(device_home.database, """SELECT count(*) FROM outbox_message m WHERE NOT EXISTS (
        SELECT 1 FROM outbox_attempt a WHERE a.message_id = m.message_id AND a.result = 'SUCCESS')""")
    assert pending == [(0,)]  # the last drain at exit sent what the final flush closed


def test_explorer_sync_names_an_unreachable_broker_then_sends_when_it_is_up(device_home, shared_data, tmp_path):
    run = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)
    assert run.returncode == 0, run.stderr
    queued = query(device_home.database, "SELECT count(*) FROM outbox_message")[0][0]
    assert queued > 0
    broker = Broker(tmp_path / "broker", port=free_port())

    down = run_explorer("sync", "--host", broker.host, "--port", str(broker.port), home=device_home)
    assert down.returncode == 1
    assert f"127.0.0.1:{broker.port}: cannot connect" in down.stderr
    assert f"{queued} detection message(s) stay pending" in down.stderr

    broker.start()
    try:
        status = run_explorer("sync", "--status", "--host", broker.host, "--port", str(broker.port), home=device_home)
        assert status.stdout.strip() == f"{queued} pending for mqtt://127.0.0.1:{broker.port}"
        up = run_explorer("sync", "--host", broker.host, "--port", str(broker.port), home=device_home)
        assert up.returncode == 0, up.stderr
        assert f"sent {queued} of {queued}" in up.stdout and "0 pending" in up.stdout
    finally:
        broker.stop()


def test_a_run_whose_broker_is_unreachable_keeps_everything_pending_and_says_why(device_home, shared_data):
    port = free_port()
    device_home.config_file.write_text(f'[sync]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n')
    result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)
    assert result.returncode == 0, result.stderr
    assert f"sync: MQTT broker 127.0.0.1:{port}: cannot connect" in result.stderr
    closed = query(device_home.database, "SELECT count(*) FROM detection WHERE status = 'closed'")[0][0]
    queued = query(device_home.database, "SELECT count(*) FROM outbox_message")[0][0]
    successes = query(device_home.database, "SELECT count(*) FROM outbox_attempt WHERE result = 'SUCCESS'")[0][0]
    assert closed > 0 and queued == closed and successes == 0


def test_a_worker_whose_messages_are_refused_backs_off_instead_of_looping(tmp_path, store):
    broker = (Broker(tmp_path / "acl").with_password("pi-h02", "frog-song")
              .with_acl("pattern write explorer/%u/#").start())
    queue_detections(store, 4, device_id="pi-h03")
    settings = settings_for(broker, username="pi-h02", password="frog-song", interval_s=1.0)
    worker = SyncWorker(store.path, settings, DEVICE, backoff_first_s=0.2).start()
    try:
        assert wait_until(lambda: (worker.state.last_error or "").startswith("the broker refuses our messages"), 10)
        time.sleep(1.5)  # back-off 0.2, 0.4, 0.8 s: a handful of drains, where a loop would make hundreds
    finally:
        worker.stop()  # its last drain is refused too, and counted
        broker.stop()
    drains = worker.state.drains
    assert 2 <= drains <= 6
    failures = store.db.execute("SELECT count(*) FROM outbox_attempt WHERE result = 'FAILURE'").fetchone()[0]
    assert failures == 4 * drains and store.pending_count() == 4


def test_the_watch_folder_sends_each_files_detections(device_home, shared_data, broker, tmp_path):
    import shutil

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(shared_data / FROG, inbox / "frog.ogg")
    device_home.config_file.write_text(
        f'[device]\nid = "{DEVICE}"\n\n[sync]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
    )
    subscriber = Subscriber(broker, f"explorer/{DEVICE}/detection")
    try:
        result = run_explorer("run", "--source", str(inbox), "--out", str(tmp_path / "out"), "--once", home=device_home)
        assert result.returncode == 0, result.stderr
        stored = sorted(row[0] for row in query(device_home.database, "SELECT detection_id FROM detection"))
        received = subscriber.wait_for(len(stored))
    finally:
        subscriber.close()
    assert stored and sorted(parse_payload(body)["detection_id"] for _, body in received) == stored


def test_the_last_drain_at_stop_connects_when_the_worker_was_waiting_out_a_back_off(tmp_path, store):
    """The flaky watch-folder test's cause: a worker still in back-off at stop skipped its last
    drain. Now the last drain connects first (bounded), so a broker that came back is used."""
    ids = queue_detections(store, 5)
    broker = Broker(tmp_path / "broker", port=free_port())  # down when the worker first tries
    worker = SyncWorker(store.path, settings_for(broker), DEVICE, backoff_first_s=3600.0).start()
    try:
        assert wait_until(lambda: worker.state.last_error is not None, 10)
        assert "cannot connect" in worker.state.last_error  # and now waiting an hour before retrying
        broker.start()
        subscriber = Subscriber(broker, f"explorer/{DEVICE}/detection")
        try:
            worker.stop()
            received = subscriber.wait_for(5)
        finally:
            subscriber.close()
    finally:
        worker.stop()
        broker.stop()
    assert sorted(parse_payload(body)["detection_id"] for _, body in received) == sorted(ids)
    assert store.pending_count() == 0 and worker.state.sent == 5


def test_the_last_drain_at_stop_is_bounded_when_the_broker_stays_away(tmp_path, store):
    queue_detections(store, 2)
    broker = Broker(tmp_path / "broker", port=free_port())  # never started
    worker = SyncWorker(store.path, settings_for(broker), DEVICE, backoff_first_s=3600.0).start()
    assert wait_until(lambda: worker.state.last_error is not None, 10)
    worker.stop(timeout_s=30.0)
    assert not worker._thread.is_alive()  # it gave up on the last connect instead of hanging
    assert store.pending_count() == 2 and "cannot connect" in worker.state.last_error
