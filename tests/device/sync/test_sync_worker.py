"""The sync worker and `explorer sync`: detections from real runs reach a real broker, and the
server's receipts (a fake ingest on the same broker) confirm them."""

from __future__ import annotations

import time

from device.sync.worker import SyncWorker
from tests.device.sync.conftest import DEVICE, outbox_states, queue_detections, settings_for
from tests.helpers import query, run_explorer, wait_until
from tests.mqtt import Broker, FakeIngest, free_port

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis (21211), 38 s, 32 kHz

CONFIRMED = "SELECT count(*) FROM outbox_message WHERE confirmed_on IS NOT NULL"


def test_the_worker_backs_off_while_the_broker_is_down_and_delivers_when_it_returns(tmp_path, store):
    ids = queue_detections(store, 12)
    # Not started yet: the trail has no network. It knows only the ingest's login at first, so
    # the (fake) ingest has subscribed before the device can log in: this broker has no
    # persistent ingest session to queue for, as the deployed one has (without the gate, a
    # device connecting in the instant between the broker's start and the ingest's subscription
    # would publish to nobody, and wait a receipt timeout to resend).
    broker = Broker(tmp_path / "broker", port=free_port()).with_password("ingest", "ingest-pw")
    settings = settings_for(broker, interval_s=1.0, username=DEVICE, password="device-pw")
    worker = SyncWorker(store.path, settings, DEVICE, backoff_first_s=0.2).start()
    ingest = None
    try:
        assert wait_until(lambda: worker.state.last_error is not None, 10)
        assert f"127.0.0.1:{broker.port}: cannot connect" in worker.state.last_error
        assert store.pending_count() == 12 and not worker.state.connected

        broker.start()
        ingest = FakeIngest(broker, "ingest", "ingest-pw")
        broker.add_password(DEVICE, "device-pw").reload()
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 12, 30)
        assert sorted(ingest.taken("detection")) == sorted(ids)
        state = worker.state
        assert state.connected and state.sent == 12 and state.last_error is None and state.last_ok_on is not None
        assert state.confirmed == 12 and state.receipts >= 1

        more = queue_detections(store, 3)  # new detections while connected go on the next wake
        worker.wake()
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 15, 20)
        assert worker.state.sent == 15 and sorted(ingest.taken()) == sorted(ids + more)  # none sent twice
    finally:
        worker.stop()
        if ingest is not None:
            ingest.close()
        broker.stop()
    assert not worker.state.connected


def test_a_run_with_sync_enabled_delivers_and_has_confirmed_every_detection_at_exit(device_home, shared_data,
                                                                                    broker, ingest):
    device_home.config_file.write_text(
        f'[device]\nid = "{DEVICE}"\n\n[sync]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\ninterval_s = 1.0\n'
    )
    result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)
    assert result.returncode == 0, result.stderr
    closed = sorted(row[0] for row in query(device_home.database, "SELECT detection_id FROM detection"))
    assert closed, "the frog recording gave no detection"
    assert sorted(set(ingest.taken("detection"))) == closed
    # The last drain at exit sent what the final flush closed and the run's tour's end, and waited
    # for their receipts: the detections and the tour's two states, all confirmed.
    assert len(set(ingest.taken("tour"))) == 2
    assert query(device_home.database, CONFIRMED) == [(len(closed) + 2,)]


def test_explorer_sync_names_an_unreachable_broker_then_sends_and_waits_for_receipts(device_home, shared_data,
                                                                                    tmp_path):
    run = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)
    assert run.returncode == 0, run.stderr
    queued = query(device_home.database, "SELECT count(*) FROM outbox_message")[0][0]
    assert queued > 0
    broker = Broker(tmp_path / "broker", port=free_port())
    where = ("--host", broker.host, "--port", str(broker.port))

    down = run_explorer("sync", *where, home=device_home)
    assert down.returncode == 1
    assert f"127.0.0.1:{broker.port}: cannot connect" in down.stderr
    assert f"{queued} message(s) the server has not confirmed stay in the outbox ({queued} pending)" in down.stderr

    broker.start()
    try:
        status = run_explorer("sync", "--status", *where, home=device_home)
        assert status.stdout.splitlines()[:4] == [
            f"{queued} pending for mqtt://127.0.0.1:{broker.port} (never acknowledged, or no receipt within 600 s)",
            "0 sent-unconfirmed (acknowledged by the broker, waiting for the server's receipt)",
            "0 confirmed by the server", "0 refused by the server"]

        # No server answering: sent, acknowledged, and said to be still unconfirmed after the wait.
        silent = run_explorer("sync", "--wait", "0.5", *where, home=device_home)
        assert silent.returncode == 0, silent.stderr
        assert f"sent {queued} of {queued}" in silent.stdout
        assert f"0 confirmed, {queued} still unconfirmed, 0 pending, 0 refused" in silent.stdout
        status = run_explorer("sync", "--status", *where, home=device_home)
        assert status.stdout.splitlines()[1].startswith(f"{queued} sent-unconfirmed")

        # The server answers: by hand, the unconfirmed go again at once (no waiting out the
        # 600 s timeout) and the receipts confirm them within the wait.
        ingest = FakeIngest(broker)
        try:
            up = run_explorer("sync", "--wait", "30", *where, home=device_home)
        finally:
            ingest.close()
        assert up.returncode == 0, up.stderr
        assert f"sent {queued} of {queued}" in up.stdout
        assert f"{queued} confirmed, 0 still unconfirmed, 0 pending, 0 refused" in up.stdout
        status = run_explorer("sync", "--status", *where, home=device_home)
        assert status.stdout.splitlines()[2] == f"{queued} confirmed by the server"
        again = run_explorer("sync", "--wait", "0", *where, home=device_home)  # confirmed: never sent again
        assert "sent 0 of 0" in again.stdout
    finally:
        broker.stop()


def test_a_run_whose_broker_is_unreachable_keeps_everything_pending_and_says_why(device_home, shared_data):
    port = free_port()
    device_home.config_file.write_text(f'[sync]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n')
    result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)
    assert result.returncode == 0, result.stderr
    assert f"sync: MQTT broker 127.0.0.1:{port}: cannot connect" in result.stderr
    closed = query(device_home.database, "SELECT count(*) FROM detection WHERE status = 'closed'")[0][0]
    queued = query(device_home.database, "SELECT count(*) FROM outbox_message WHERE kind = 'detection'")[0][0]
    tours = query(device_home.database, "SELECT count(*) FROM outbox_message WHERE kind = 'tour'")[0][0]
    successes = query(device_home.database, "SELECT count(*) FROM outbox_attempt WHERE result = 'SUCCESS'")[0][0]
    assert closed > 0 and queued == closed and successes == 0
    assert tours == 2  # the run's own tour: its start and its end, queued like the rest


def test_a_worker_whose_messages_are_refused_backs_off_instead_of_looping(tmp_path, store):
    broker = (Broker(tmp_path / "acl").with_password("pi-h02", "frog-song")
              .with_acl("pattern write explorer/%u/#").start())
    queue_detections(store, 4, device_id="pi-h03")
    settings = settings_for(broker, username="pi-h02", password="frog-song", interval_s=1.0)
    started = time.monotonic()
    worker = SyncWorker(store.path, settings, DEVICE, backoff_first_s=0.2).start()
    try:
        assert wait_until(lambda: (worker.state.last_error or "").startswith("the broker refuses our messages"), 10)
        assert wait_until(lambda: worker.state.drains >= 3, 30)
    finally:
        worker.stop()  # its last drain is refused too, and counted
        broker.stop()
    elapsed = time.monotonic() - started
    drains = worker.state.drains
    # Back-off 0.2, 0.4, 0.8 s...: n drains (the stop's included) take at least 0.2 * (2**(n-2) - 1) s,
    # however loaded the machine; a loop would make hundreds in that time.
    assert drains >= 3 and 0.2 * (2 ** (drains - 2) - 1) <= elapsed
    failures = store.db.execute("SELECT count(*) FROM outbox_attempt WHERE result = 'FAILURE'").fetchone()[0]
    assert failures == 4 * drains and store.pending_count() == 4


def test_the_watch_folder_sends_each_files_detections(device_home, shared_data, broker, ingest, tmp_path):
    import shutil

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(shared_data / FROG, inbox / "frog.ogg")
    device_home.config_file.write_text(
        f'[device]\nid = "{DEVICE}"\n\n[sync]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n'
    )
    result = run_explorer("run", "--source", str(inbox), "--out", str(tmp_path / "out"), "--once", home=device_home)
    assert result.returncode == 0, result.stderr
    stored = sorted(row[0] for row in query(device_home.database, "SELECT detection_id FROM detection"))
    assert stored and sorted(set(ingest.taken("detection"))) == stored
    assert query(device_home.database, CONFIRMED) == [(len(stored),)]


def test_the_last_drain_at_stop_connects_when_the_worker_was_waiting_out_a_back_off(tmp_path, store):
    """The flaky watch-folder test's cause: a worker still in back-off at stop skipped its last
    drain. Now the last drain connects first (bounded), so a broker that came back is used, and
    it waits for the receipts before saying goodbye."""
    ids = queue_detections(store, 5)
    broker = Broker(tmp_path / "broker", port=free_port())  # down when the worker first tries
    worker = SyncWorker(store.path, settings_for(broker), DEVICE, backoff_first_s=3600.0).start()
    try:
        assert wait_until(lambda: worker.state.last_error is not None, 10)
        assert "cannot connect" in worker.state.last_error  # and now waiting an hour before retrying
        broker.start()
        ingest = FakeIngest(broker)
        try:
            worker.stop()
        finally:
            ingest.close()
    finally:
        worker.stop()
        broker.stop()
    assert sorted(ingest.taken("detection")) == sorted(ids)
    assert outbox_states(store) == {"pending": 0, "unconfirmed": 0, "confirmed": 5, "refused": 0}
    assert worker.state.sent == 5 and worker.state.confirmed == 5


def test_the_last_drain_at_stop_is_bounded_when_the_broker_stays_away(tmp_path, store):
    queue_detections(store, 2)
    broker = Broker(tmp_path / "broker", port=free_port())  # never started
    worker = SyncWorker(store.path, settings_for(broker), DEVICE, backoff_first_s=3600.0).start()
    assert wait_until(lambda: worker.state.last_error is not None, 10)
    worker.stop(timeout_s=30.0)
    assert not worker._thread.is_alive()  # it gave up on the last connect instead of hanging
    assert store.pending_count() == 2 and "cannot connect" in worker.state.last_error


def test_the_wait_for_receipts_at_stop_is_bounded_when_the_server_never_answers(broker, store):
    queue_detections(store, 3)
    worker = SyncWorker(store.path, settings_for(broker), DEVICE, final_receipt_wait_s=1.0).start()
    assert wait_until(lambda: worker.state.sent == 3, 20)
    worker.stop(timeout_s=30.0)
    assert not worker._thread.is_alive()  # gave up waiting instead of hanging on
    assert outbox_states(store) == {"pending": 0, "unconfirmed": 3, "confirmed": 0, "refused": 0}
