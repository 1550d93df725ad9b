"""Clip upload, the server's half, against a real Mosquitto on both engines: chunks of a real
FLAC clip become the same file on disk, sha256 checked; resends, gaps, corrupt bytes and a
restarted ingest lose nothing and keep nothing wrong; low-confidence detections are asked for."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import pytest
import soundfile as sf

from device.contracts.clip import ClipChunk, clip_topic, encode_chunk, parse_ack, parse_request
from device.contracts.detection import detection_topic
from sync_server.db import ServerStore
from tests.device.sync.conftest import queue_detections
from tests.helpers import wait_until
from tests.mqtt import Subscriber
from tests.sync_server.test_ingest import DEVICE, outbox_items, publish_raw, start_ingest

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis, 32 kHz


@pytest.fixture
def server(server_target):
    opened = ServerStore.open(server_target)
    yield opened
    opened.close()


@pytest.fixture
def flac(shared_data) -> bytes:
    """5 s of a real frog call as 16-bit FLAC, as a device keeps a clip."""
    audio, rate = sf.read(shared_data / FROG, dtype="float32", frames=5 * 32000)
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def chunks(data: bytes, detection_id: str, size: int = 20_000, clip_id: str | None = None, sha: str | None = None):
    clip_id = clip_id or str(uuid.uuid4())
    sha = sha or hashlib.sha256(data).hexdigest()
    return [ClipChunk(DEVICE, clip_id, detection_id, sha, len(data), offset, data[offset:offset + size], 32000, 5.0,
                      10.0) for offset in range(0, len(data), size)]


def send(broker, pieces) -> None:
    publish_raw(broker, [(clip_topic(p.device_id), encode_chunk(p)) for p in pieces])


def acks_for(subscriber, clip_id: str):
    return [ack for ack in (parse_ack(body) for _, body in list(subscriber.messages)) if ack.clip_id == clip_id]


def test_a_clip_in_chunks_is_kept_whole_and_checked(broker, server, store, flac, tmp_path):
    (detection_id,) = queue_detections(store, 1)
    pieces = chunks(flac, detection_id)
    assert len(pieces) >= 3
    acks = Subscriber(broker, f"explorer/{DEVICE}/clip-ack")
    ingest = start_ingest(server, broker, clips_dir=tmp_path / "clips")
    try:
        send(broker, pieces)
        assert wait_until(lambda: any(a.state == "complete" for a in acks_for(acks, pieces[0].clip_id)), 30)
    finally:
        ingest.stop()
        acks.close()
    kept = tmp_path / "clips" / DEVICE / f"{pieces[0].clip_id}.flac"
    assert kept.read_bytes() == flac
    audio, rate = sf.read(kept)
    assert rate == 32000 and len(audio) == 5 * 32000  # a real FLAC a reader opens
    row = server.clips_held(DEVICE)[pieces[0].clip_id]
    assert (row["detection_id"], row["sha256"], row["size_bytes"]) == (detection_id, pieces[0].sha256, len(flac))
    assert [a.received_bytes for a in acks_for(acks, pieces[0].clip_id)][-1] == len(flac)


def test_resends_gaps_and_a_restarted_ingest_resume_where_the_disk_says(broker, server, store, flac, tmp_path):
    (detection_id,) = queue_detections(store, 1)
    pieces = chunks(flac, detection_id)
    clip_id = pieces[0].clip_id
    acks = Subscriber(broker, f"explorer/{DEVICE}/clip-ack")
    ingest = start_ingest(server, broker, clips_dir=tmp_path / "clips", client_id="clips-resume")
    try:
        send(broker, [pieces[0], pieces[0], pieces[2]])  # a resend, then a gap
        assert wait_until(lambda: len(acks_for(acks, clip_id)) >= 1 and acks_for(acks, clip_id)[-1].received_bytes
                          == len(pieces[0].data), 30)
    finally:
        ingest.stop()  # the server goes away mid-clip
    part = tmp_path / "clips" / DEVICE / f"{clip_id}.part"
    assert part.read_bytes() == pieces[0].data  # nothing of the gap, nothing twice
    back = start_ingest(server, broker, clips_dir=tmp_path / "clips", client_id="clips-resume")
    try:
        send(broker, pieces[1:])  # the device resumes from the ack's offset
        assert wait_until(lambda: any(a.state == "complete" for a in acks_for(acks, clip_id)), 30)
    finally:
        back.stop()
        acks.close()
    assert (tmp_path / "clips" / DEVICE / f"{clip_id}.flac").read_bytes() == flac and not part.exists()


def test_bytes_that_do_not_hash_to_the_announced_sha256_are_refused_and_the_clip_starts_again(
        broker, server, store, flac, tmp_path):
    (detection_id,) = queue_detections(store, 1)
    corrupt = bytearray(flac)
    corrupt[len(flac) // 2] ^= 0xFF  # one flipped byte on a bad link or a failing card
    bad = chunks(bytes(corrupt), detection_id, sha=hashlib.sha256(flac).hexdigest())
    clip_id = bad[0].clip_id
    good = chunks(flac, detection_id, clip_id=clip_id)
    acks = Subscriber(broker, f"explorer/{DEVICE}/clip-ack")
    ingest = start_ingest(server, broker, clips_dir=tmp_path / "clips")
    try:
        send(broker, bad)
        assert wait_until(lambda: any(a.state == "refused" for a in acks_for(acks, clip_id)), 30)
        refused = next(a for a in acks_for(acks, clip_id) if a.state == "refused")
        assert refused.received_bytes == 0 and refused.reason.startswith("sha256 mismatch")
        assert server.clips_held() == {}
        send(broker, good)
        assert wait_until(lambda: any(a.state == "complete" for a in acks_for(acks, clip_id)), 30)
    finally:
        ingest.stop()
        acks.close()
    assert (tmp_path / "clips" / DEVICE / f"{clip_id}.flac").read_bytes() == flac


def test_the_server_asks_for_the_clips_of_low_confidence_detections_and_stops_asking_once_it_has_them(
        broker, server, store, flac, tmp_path):
    ids = queue_detections(store, 3)  # confidence 0.9 each
    unsure_id = str(uuid.uuid4())
    unsure = dict(json.loads(outbox_items(store)[0][1]), detection_id=unsure_id, confidence=0.42)
    requests = Subscriber(broker, f"explorer/{DEVICE}/clip-request")
    ingest = start_ingest(server, broker, clips_dir=tmp_path / "clips", clip_requests_below=0.6)
    try:
        publish_raw(broker, outbox_items(store) + [(detection_topic(DEVICE), json.dumps(unsure).encode())])
        assert wait_until(lambda: any(parse_request(b).detection_ids == (unsure_id,) for _, b in requests.messages), 30)
        send(broker, chunks(flac, unsure_id))
        assert wait_until(lambda: parse_request(requests.messages[-1][1]).detection_ids == (), 30)
    finally:
        ingest.stop()
        requests.close()
    late = Subscriber(broker, f"explorer/{DEVICE}/clip-request")  # retained: a device coming online reads it
    try:
        assert wait_until(lambda: len(late.messages) == 1, 10)
        assert parse_request(late.messages[0][1]).detection_ids == ()
    finally:
        late.close()
    assert set(ids) <= server.detection_ids()


def test_without_a_clips_folder_chunks_are_refused_by_name(broker, server, store, flac):
    (detection_id,) = queue_detections(store, 1)
    ingest = start_ingest(server, broker)
    try:
        send(broker, chunks(flac, detection_id)[:1])
        assert wait_until(lambda: server.counts().rejected == 1, 30)
    finally:
        ingest.stop()
    assert "this server keeps no clips" in server.recent_rejections(1)[0].reason
