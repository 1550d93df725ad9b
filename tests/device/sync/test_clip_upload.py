"""Clip upload end to end: the device's real sync worker (and `explorer sync`) against a real
Mosquitto and the REAL server ingest (sync_server.ingest.Ingestor on a SQLite ServerStore with a
clips folder), on real FLAC clips the device's own store cut from a real recording.

What the broker saw is read with a test subscriber on explorer/<device>/#: each chunk's offset,
how often it went, and the order of chunks and detections."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import soundfile as sf

from device.config import ConfigError, Settings, load_settings
from device.contracts.clip import parse_chunk
from device.domain import Detection, utc_now
from device.home import ExplorerHome
from device.store import Store
from device.store.uploads import utc_day
from device.sync.worker import SyncWorker
from sync_server.db import ServerStore
from tests.device.sync.conftest import DEVICE, LABELS, T0, outbox_states, queue_detections, settings_for
from tests.helpers import run_explorer, wait_until
from tests.mqtt import Subscriber
from tests.sync_server.test_ingest import start_ingest

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis, 38 s, 32 kHz


@pytest.fixture(scope="module")
def frog(shared_data):
    return sf.read(shared_data / FROG, dtype="float32")


@pytest.fixture
def server(tmp_path):
    opened = ServerStore.open(str(tmp_path / "server" / "aggregate.db"))
    yield opened
    opened.close()


@pytest.fixture
def wire(broker):
    """Everything the broker handed on under this device's branch, in order."""
    subscriber = Subscriber(broker, f"explorer/{DEVICE}/#")
    yield subscriber
    subscriber.close()


def serve(server, broker, tmp_path, **options):
    """The real ingest, keeping clips under tmp_path/server-clips (a stable session id)."""
    return start_ingest(server, broker, client_id="clip-ingest", clips_dir=tmp_path / "server-clips", **options)


def make_clips(store: Store, frog, folder: Path, count: int, seconds: float = 1.5, confidence: float = 0.9,
               start: int = 0, verdict: str | None = "confirm") -> list:
    """`count` closed detections, each with a real clip (the store's own FLAC writer) of its own
    stretch of the frog recording, judged with `verdict` (None: unjudged); their Clip rows."""
    samples, rate = frog
    clips = []
    for n in range(start, start + count):
        started = T0 + timedelta(minutes=n)
        det = Detection(label=LABELS[n % len(LABELS)], started_on=started, ended_on=started + timedelta(seconds=5),
                        confidence=confidence, branch_scores={"birdnet": confidence}, bundle_name="elsilencio-default",
                        bundle_version="1.0.0", bundle_sha256="a" * 64, device_id=DEVICE,
                        source="/recordings/H02_20230420_074000.ogg", start_s=5.0 * n, end_s=5.0 * n + 5)
        store.save_detection(det, final=True)
        at = int((n * 2.3) % 30 * rate)
        store.save_clip(folder, det, samples[at:at + int(seconds * rate)], rate)
        if verdict:
            store.add_feedback(det.detection_id, verdict)
        clips.extend(store.list_clips(det.detection_id))
    return clips


def chunks_seen(wire) -> list[tuple[str, int, int]]:
    """(clip id, offset, payload bytes) of every chunk the broker handed on, in order."""
    seen = []
    for topic, body in list(wire.messages):
        if topic.endswith("/clip"):
            chunk = parse_chunk(body)
            seen.append((chunk.clip_id, chunk.offset, len(body)))
    return seen


def state_of(store: Store, clip) -> str | None:
    upload = store.clip_upload(clip.clip_id)
    return upload.state if upload else None


def held_bytes(server, clip) -> bytes:
    return Path(server.clips_held(DEVICE)[clip.clip_id]["path"]).read_bytes()


def offsets(size: int, chunk: int) -> list[int]:
    return list(range(0, size, chunk))


def test_a_confirmed_detections_clip_reaches_the_server_byte_for_byte_and_an_unjudged_one_is_not_sent(
        broker, wire, server, store, frog, tmp_path):
    confirmed = make_clips(store, frog, tmp_path / "clips", 1)[0]
    unjudged = make_clips(store, frog, tmp_path / "clips", 1, start=1, verdict=None)[0]
    ingest = serve(server, broker, tmp_path)
    worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0, clip_chunk_kb=16), DEVICE).start()
    try:
        assert wait_until(lambda: state_of(store, confirmed) == "complete", 60)
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 3, 30)  # 2 detections, 1 verdict
    finally:
        worker.stop()
        ingest.stop()
    local = Path(confirmed.path).read_bytes()
    assert held_bytes(server, confirmed) == local
    assert server.clips_held(DEVICE)[confirmed.clip_id]["sha256"] == hashlib.sha256(local).hexdigest()
    assert set(server.clips_held(DEVICE)) == {confirmed.clip_id}
    sent = chunks_seen(wire)
    assert [offset for _, offset, _ in sent] == offsets(len(local), 16 * 1024)  # each chunk once, in order
    assert {clip_id for clip_id, _, _ in sent} == {confirmed.clip_id}
    assert store.clip_upload(unjudged.clip_id) is None
    assert worker.state.clip_bytes == sum(size for _, _, size in sent) == store.clip_bytes_sent_on(utc_day(utc_now()))


def test_a_clip_the_server_asks_for_goes_without_a_verdict_and_the_request_empties(
        broker, wire, server, store, frog, tmp_path):
    unsure = make_clips(store, frog, tmp_path / "clips", 1, confidence=0.42, verdict=None)[0]
    sure = make_clips(store, frog, tmp_path / "clips", 1, confidence=0.97, start=1, verdict=None)[0]
    ingest = serve(server, broker, tmp_path, clip_requests_below=0.6)
    worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0), DEVICE).start()
    try:
        assert wait_until(lambda: state_of(store, unsure) == "complete", 60)
        # Once it holds the clip the server asks for nothing more, and the device stores that.
        assert wait_until(lambda: store.requested_clip_ids() == set(), 30)
    finally:
        worker.stop()
        ingest.stop()
    assert set(server.clips_held(DEVICE)) == {unsure.clip_id}
    assert held_bytes(server, unsure) == Path(unsure.path).read_bytes()
    assert store.clip_upload(sure.clip_id) is None
    assert {clip_id for clip_id, _, _ in chunks_seen(wire)} == {unsure.clip_id}


def test_an_upload_stopped_between_chunks_resumes_where_the_server_is_and_sends_no_byte_twice(
        broker, wire, server, store, frog, tmp_path):
    (clip,) = make_clips(store, frog, tmp_path / "clips", 1, seconds=5.0)  # ~180 KB: 90 chunks of 2 KiB
    size = Path(clip.path).stat().st_size
    third = threading.Event()
    seen = []

    def count(chunk):
        seen.append(chunk)
        if len(seen) == 3:
            third.set()

    settings = settings_for(broker, interval_s=1.0, clip_chunk_kb=2)
    ingest = serve(server, broker, tmp_path)
    try:
        first = SyncWorker(store.path, settings, DEVICE, on_clip_sent=count).start()
        try:
            assert third.wait(60)
        finally:
            first.stop()
        upload = store.clip_upload(clip.clip_id)
        assert upload.state == "sending" and 0 < upload.acked_bytes < size  # stopped mid-clip
        again = SyncWorker(store.path, settings, DEVICE).start()  # a restart on the same database
        try:
            assert wait_until(lambda: state_of(store, clip) == "complete", 90)
        finally:
            again.stop()
    finally:
        ingest.stop()
    assert held_bytes(server, clip) == Path(clip.path).read_bytes()
    sent = chunks_seen(wire)
    # The acks that came while the device was stopped waited in its session: nothing went twice.
    assert [offset for _, offset, _ in sent] == offsets(size, 2048)
    assert store.clip_bytes_sent_on(utc_day(utc_now())) == sum(length for _, _, length in sent)


def test_the_daily_budget_is_never_exceeded_and_a_clip_that_does_not_fit_waits_for_the_next_day(
        broker, wire, server, store, frog, tmp_path):
    clips = make_clips(store, frog, tmp_path / "clips", 3, seconds=1.0)
    sizes = [Path(c.path).stat().st_size for c in clips]
    budget = sizes[0] + sizes[1] + 4_000  # two clips and their chunk headers, not the third
    assert budget < sum(sizes)
    clock = [utc_now()]
    settings = settings_for(broker, interval_s=1.0, clip_chunk_kb=16, clip_budget_mb_per_day=budget / 1e6)
    ingest = serve(server, broker, tmp_path)
    worker = SyncWorker(store.path, settings, DEVICE, clock=lambda: clock[0]).start()
    try:
        assert wait_until(lambda: [state_of(store, c) for c in clips[:2]] == ["complete"] * 2, 60)
        drains = worker.state.drains
        worker.wake()
        assert wait_until(lambda: worker.state.drains >= drains + 2, 20)  # passes ran after: the third waits
        today = utc_day(clock[0])
        assert store.clip_upload(clips[2].clip_id).acked_bytes == 0
        assert clips[2].clip_id not in {clip_id for clip_id, _, _ in chunks_seen(wire)}
        day_one = store.clip_bytes_sent_on(today)
        assert day_one <= budget and day_one == sum(length for _, _, length in chunks_seen(wire))

        clock[0] += timedelta(days=1)  # past midnight UTC: a new day's budget
        worker.wake()
        assert wait_until(lambda: state_of(store, clips[2]) == "complete", 60)
    finally:
        worker.stop()
        ingest.stop()
    assert set(server.clips_held(DEVICE)) == {c.clip_id for c in clips}
    third = [length for clip_id, _, length in chunks_seen(wire) if clip_id == clips[2].clip_id]
    assert store.clip_bytes_sent_on(utc_day(clock[0])) == sum(third) <= budget
    assert store.clip_bytes_sent_on(today) == day_one


def test_detections_go_before_any_clip_chunk_and_those_queued_mid_clip_before_the_next_chunk(
        broker, wire, server, store, frog, tmp_path):
    clips = make_clips(store, frog, tmp_path / "clips", 2)
    backlog = queue_detections(store, 50, start=10)
    sent: list = []
    late: list[str] = []
    holder: dict = {}

    def on_sent(chunk):  # on the worker's thread, between two chunks: detections close meanwhile
        sent.append(chunk)
        if len(sent) == 3:
            with Store.open(store.path) as writer:  # as the pipeline's writer thread would
                late.extend(queue_detections(writer, 20, start=100))
            holder["worker"].wake()

    ingest = serve(server, broker, tmp_path)
    holder["worker"] = worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0, clip_chunk_kb=4),
                                           DEVICE, on_clip_sent=on_sent)
    worker.start()
    try:
        assert wait_until(lambda: all(state_of(store, c) == "complete" for c in clips), 90)
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 2 * 2 + 50 + 20, 30)
    finally:
        worker.stop()
        ingest.stop()
    order = []
    for topic, body in list(wire.messages):
        if topic.endswith("/clip"):
            chunk = parse_chunk(body)
            order.append(("clip", (chunk.clip_id, chunk.offset)))
        elif topic.endswith("/detection"):
            order.append(("detection", json.loads(body)["detection_id"]))
    where = {item: n for n, item in reversed(list(enumerate(order)))}  # first time each was seen
    first_chunk = min(n for n, (kind, _) in enumerate(order) if kind == "clip")
    assert max(where[("detection", d)] for d in backlog) < first_chunk  # the backlog went first
    third, after = (sent[2].clip_id, sent[2].offset), [(c.clip_id, c.offset) for c in sent[3:]]
    assert after, "the clips were done by the third chunk"
    late_at = [where[("detection", d)] for d in late]
    assert where[("clip", third)] < min(late_at) and max(late_at) < min(where[("clip", c)] for c in after)


def test_a_clip_whose_file_retention_deleted_is_marked_gone_and_never_sent(
        broker, wire, server, store, frog, tmp_path):
    old, mid, fresh = make_clips(store, frog, tmp_path / "clips", 3)
    store.enforce_clip_budget(mid.size_bytes + fresh.size_bytes, keep_per_species=0)  # before any upload
    assert not Path(old.path).exists()

    def on_sent(chunk):  # retention runs again while mid's upload is under way
        if chunk.clip_id == mid.clip_id:
            with Store.open(store.path) as writer:
                writer.enforce_clip_budget(fresh.size_bytes, keep_per_species=0)

    ingest = serve(server, broker, tmp_path)
    worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0, clip_chunk_kb=8), DEVICE,
                        on_clip_sent=on_sent).start()
    try:
        assert wait_until(lambda: state_of(store, fresh) == "complete", 60)
        assert wait_until(lambda: state_of(store, mid) == "gone", 30)
    finally:
        worker.stop()
        ingest.stop()
    assert state_of(store, old) == "gone" and store.clip_upload(old.clip_id).reason == "retention deleted its file"
    sent = Counter((clip_id, offset) for clip_id, offset, _ in chunks_seen(wire))
    assert not any(clip_id == old.clip_id for clip_id, _ in sent)
    assert [key for key in sent if key[0] == mid.clip_id] == [(mid.clip_id, 0)]  # its first chunk, no more
    assert set(server.clips_held(DEVICE)) == {fresh.clip_id}
    assert store.clip_upload_counts(utc_now()).gone == 2


def test_a_clip_the_server_refuses_is_sent_again_from_byte_0_once_then_given_up(
        broker, wire, server, store, frog, tmp_path):
    bad, good = make_clips(store, frog, tmp_path / "clips", 2, seconds=1.0)
    size = Path(bad.path).stat().st_size

    def on_sent(chunk):  # the card corrupts the file after its sha256 was read
        if chunk.clip_id == bad.clip_id and chunk.offset == 0 and not getattr(on_sent, "done", False):
            on_sent.done = True
            fd = os.open(bad.path, os.O_RDWR)
            try:
                os.pwrite(fd, bytes([os.pread(fd, 1, size - 100)[0] ^ 0xFF]), size - 100)
            finally:
                os.close(fd)

    ingest = serve(server, broker, tmp_path)
    worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0, clip_chunk_kb=8), DEVICE,
                        on_clip_sent=on_sent).start()
    try:
        assert wait_until(lambda: state_of(store, bad) == "refused", 60)
        assert wait_until(lambda: state_of(store, good) == "complete", 60)
        drains = worker.state.drains
        worker.wake()
        assert wait_until(lambda: worker.state.drains >= drains + 2, 20)
    finally:
        worker.stop()
        ingest.stop()
    upload = store.clip_upload(bad.clip_id)
    assert (upload.refusals, upload.reason.startswith("sha256 mismatch")) == (2, True)
    sent = Counter(offset for clip_id, offset, _ in chunks_seen(wire) if clip_id == bad.clip_id)
    assert sent == {offset: 2 for offset in offsets(size, 8192)}  # the whole clip twice, then never again
    assert set(server.clips_held(DEVICE)) == {good.clip_id}


def test_a_chunk_whose_ack_never_comes_goes_again_after_the_timeout_and_the_server_keeps_it_once(
        broker, wire, server, store, frog, tmp_path):
    (clip,) = make_clips(store, frog, tmp_path / "clips", 1, seconds=1.0)
    serve(server, broker, tmp_path).stop()  # the ingest's session exists; the ingest is down
    settings = settings_for(broker, interval_s=1.0, clip_chunk_kb=8, receipt_timeout_s=1.0)
    worker = SyncWorker(store.path, settings, DEVICE).start()
    ingest = None
    try:
        assert wait_until(lambda: Counter(o for _, o, _ in chunks_seen(wire))[0] >= 2, 30)  # sent again
        ingest = serve(server, broker, tmp_path)
        assert wait_until(lambda: state_of(store, clip) == "complete", 60)
    finally:
        worker.stop()
        if ingest is not None:
            ingest.stop()
    assert held_bytes(server, clip) == Path(clip.path).read_bytes()
    assert store.clip_bytes_sent_on(utc_day(utc_now())) == sum(length for _, _, length in chunks_seen(wire))


def test_a_budget_of_0_sends_no_clip_and_detections_still_go(broker, wire, server, store, frog, tmp_path):
    (clip,) = make_clips(store, frog, tmp_path / "clips", 1, seconds=1.0)
    ingest = serve(server, broker, tmp_path)
    worker = SyncWorker(store.path, settings_for(broker, interval_s=1.0, clip_budget_mb_per_day=0.0), DEVICE).start()
    try:
        assert wait_until(lambda: outbox_states(store)["confirmed"] == 2, 30)
        drains = worker.state.drains
        worker.wake()
        assert wait_until(lambda: worker.state.drains >= drains + 2, 20)
    finally:
        worker.stop()
        ingest.stop()
    assert chunks_seen(wire) == [] and store.clip_upload(clip.clip_id) is None


def test_explorer_sync_sends_judged_clips_after_the_outbox_and_its_status_has_a_clips_line(
        broker, server, frog, tmp_path):
    home = ExplorerHome.resolve(tmp_path / "home").ensure()  # run_explorer reads its .root
    (home.root / "config.toml").write_text(f'[device]\nid = "{DEVICE}"\n\n[sync]\nclip_chunk_kb = 16\n')
    with Store.open(home.database) as store:
        clips = make_clips(store, frog, home.clips, 2, seconds=1.0)
        make_clips(store, frog, home.clips, 1, start=2, verdict=None)
    size = sum(Path(c.path).stat().st_size for c in clips)
    where = ("--host", broker.host, "--port", str(broker.port))
    before = run_explorer("sync", "--status", *where, home=home)
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines()[-1] == (f"clips: 2 to send ({size / 1000:.0f} KB), 0 complete; "
                                              "budget 20 MB/day, 0 KB used today (UTC)")
    ingest = serve(server, broker, tmp_path)
    try:
        synced = run_explorer("sync", *where, "--wait", "30", home=home)
    finally:
        ingest.stop()
    assert synced.returncode == 0, synced.stderr
    assert "2 now complete on the server" in synced.stdout
    assert set(server.clips_held(DEVICE)) == {c.clip_id for c in clips}
    with Store.open(home.database) as store:
        used = store.clip_bytes_sent_on(utc_day(utc_now()))
    after = run_explorer("sync", "--status", *where, home=home)
    assert after.stdout.splitlines()[-1] == (f"clips: 0 to send (0 KB), 2 complete; budget 20 MB/day, "
                                             f"{used / 1000:.0f} KB used today (UTC)")


def test_the_clip_budget_and_chunk_size_have_their_defaults_and_bad_values_are_refused(tmp_path):
    assert (Settings().sync.clip_budget_mb_per_day, Settings().sync.clip_chunk_kb) == (20.0, 32)
    path = tmp_path / "config.toml"
    for text, expected in [("[sync]\nclip_budget_mb_per_day = -1\n", "[sync] clip_budget_mb_per_day: -1.0 is below"),
                           ("[sync]\nclip_chunk_kb = 65\n", "[sync] clip_chunk_kb: 65 is above the maximum 64"),
                           ("[sync]\nclip_chunk_kb = 0\n", "[sync] clip_chunk_kb: 0 is below the minimum 1"),
                           ('[sync]\nclip_chunk_kb = "32"\n', "[sync] clip_chunk_kb: expected int, got str")]:
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_settings(path)
        assert str(path) in str(error.value) and expected in str(error.value)
    path.write_text("[sync]\nclip_budget_mb_per_day = 0\nclip_chunk_kb = 64\n")
    assert (load_settings(path).sync.clip_budget_mb_per_day, load_settings(path).sync.clip_chunk_kb) == (0.0, 64)
