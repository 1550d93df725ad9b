"""The device's retained status over a real Mosquitto: on connect, on change, periodically, a
goodbye at a clean stop, and the last will when the device process is killed."""

from __future__ import annotations

import dataclasses
import subprocess

from device.contracts.status import parse_status
from device.domain import Status, utc_now
from device.sync.status import release
from device.sync.worker import SyncWorker
from tests.device.sync.conftest import DEVICE, queue_detections, settings_for
from tests.helpers import explorer_command, wait_until
from tests.mqtt import Client5

STATUS = f"explorer/{DEVICE}/status"
FROG = "audio/birdclef_train_audio/3.ogg"  # 38 s: long enough, paced in real time, to kill mid-run


def statuses(client: Client5) -> list[tuple[Status, bool]]:
    return [(parse_status(body), retained) for _, body, retained in client.received(STATUS)]


def late_status(broker) -> tuple[Status, bool]:
    """What a subscriber arriving now is handed: the retained status."""
    late = Client5(broker)
    try:
        assert late.subscribe(STATUS) == ["Granted QoS 1"]
        assert late.wait_for(lambda c: c.received(STATUS), 20), "no retained status"
        return statuses(late)[0]
    finally:
        late.close()


def test_the_retained_status_is_there_for_a_late_subscriber_and_a_clean_stop_says_offline(broker, store):
    queue_detections(store, 2)  # no server answers: they stay unconfirmed
    worker = SyncWorker(store.path, settings_for(broker, interval_s=3600.0), DEVICE, final_receipt_wait_s=0.5).start()
    try:
        assert wait_until(lambda: worker.state.sent == 2 and worker.state.statuses >= 2, 20)
        status, retained = late_status(broker)
        assert retained and status.online and status.device_id == DEVICE and status.release == release()
        # Pending crossed to zero and unconfirmed from zero: the change went out at once.
        assert (status.outbox_pending, status.outbox_unconfirmed) == (0, 2)
        assert status.last_detection_on is not None and status.rtf is None  # no run: what the outbox knows
    finally:
        worker.stop()
    status, retained = late_status(broker)
    assert retained and not status.online and status.outbox_unconfirmed == 2


def test_a_change_a_person_would_act_on_is_published_at_once_and_the_rest_periodically(broker, store):
    facts = {"dropped": 0}

    def source() -> Status:
        return Status(DEVICE, True, utc_now(), release(), bundle_name="elsilencio-default", bundle_version="1.0.0",
                      rtf=0.02, windows_dropped=facts["dropped"], battery_percent=80)

    watcher = Client5(broker)
    assert watcher.subscribe(STATUS) == ["Granted QoS 1"]
    settings = settings_for(broker, interval_s=3600.0, status_interval_s=3600.0)
    worker = SyncWorker(store.path, settings, DEVICE, status_source=source, final_receipt_wait_s=0.5).start()
    try:
        assert watcher.wait_for(lambda c: len(c.received(STATUS)) >= 1, 20)  # on connect
        first, _ = statuses(watcher)[0]
        assert (first.bundle_name, first.windows_dropped, first.battery_percent, first.rtf) == (
            "elsilencio-default", 0, 80, 0.02)
        facts["dropped"] = 3  # windows dropped: published on the next wake, not an hour later
        worker.wake()
        assert watcher.wait_for(lambda c: statuses(c)[-1][0].windows_dropped == 3, 20)
        seen = len(watcher.received(STATUS))
        drains = worker.state.drains
        worker.wake()  # nothing changed: no new status
        assert wait_until(lambda: worker.state.drains > drains, 20)
        facts["dropped"] = 4  # a change again; statuses arrive in order, so one sent meanwhile shows first
        worker.wake()
        assert watcher.wait_for(lambda c: statuses(c)[-1][0].windows_dropped == 4, 20)
        assert len(watcher.received(STATUS)) == seen + 1
    finally:
        worker.stop()
    periodic = SyncWorker(store.path, dataclasses.replace(settings, status_interval_s=1.0), DEVICE,
                          status_source=source, final_receipt_wait_s=0.5).start()
    try:  # every status_interval_s even when nothing changes
        before = len(watcher.received(STATUS))
        assert watcher.wait_for(lambda c: len(c.received(STATUS)) >= before + 3, 30)
    finally:
        periodic.stop()
        watcher.close()
    published = [s.published_on for s, _ in statuses(watcher)]
    assert published == sorted(published)


def test_killing_the_device_process_makes_the_broker_publish_its_will(device_home, shared_data, broker):
    device_home.config_file.write_text(
        f'[device]\nid = "{DEVICE}"\n\n[sync]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\n')
    watcher = Client5(broker)
    assert watcher.subscribe(STATUS) == ["Granted QoS 1"]
    run = subprocess.Popen(explorer_command("run", "--source", str(shared_data / FROG), "--realtime", "--headless"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(device_home.root.parent))
    try:
        assert watcher.wait_for(lambda c: any(s.online for s, _ in statuses(c)), 120), "the run never said online"
        online = [s for s, _ in statuses(watcher) if s.online][0]
        # The run's own facts, from the status source device/session.py wires in.
        assert online.bundle_name and online.bundle_version and online.clip_disk_free_bytes is not None
        assert run.poll() is None, "the run ended before it could be killed"
        run.kill()  # kill -9: no goodbye, only the broker's last will
        run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
    assert watcher.wait_for(lambda c: not statuses(c)[-1][0].online, 60), "no last will after kill -9"
    will, _ = statuses(watcher)[-1]
    assert (will.device_id, will.bundle_name) == (DEVICE, online.bundle_name)
    watcher.close()
    status, retained = late_status(broker)
    assert retained and not status.online
