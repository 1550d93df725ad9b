"""`GET /api/v1/detections` and `/api/v1/clips` on a running `explorer-server run`, with what two
devices' real sync code sent through a real Mosquitto: every field, every filter, the cursor,
a clip and its spectrogram, and a 422 naming each bad parameter.

What each filter should select is worked out here from what the devices made (FIELD), never
from the API.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from datetime import timedelta

import numpy as np
import pytest
from scipy.signal import spectrogram as scipy_spectrogram

from device.domain import iso_utc
from tests.sync_server.api.conftest import BUNDLE, CLIP_OF, SITES, T0, TAXA


def ids(rows) -> set[str]:
    return {row["detection_id"] for row in rows}


def made_ids(field, keep) -> set[str]:
    return {det.detection_id for device, det, plan in field.detections() if keep(device, det, plan)}


def verdict_status(plan) -> str:
    return {"confirm": "confirmed", "reject": "rejected", None: "unreviewed"}[plan.verdict]


def test_every_detection_arrives_with_every_field_the_device_gave_it(field):
    rows = {row["detection_id"]: row for row in field.server.all_detections()}
    assert set(rows) == made_ids(field, lambda *_: True)
    tour_names = {tour_id: name for name, tour_id in field.tours.items()}
    for device, det, plan in field.detections():
        row = rows[det.detection_id]
        scientific, common, klass = TAXA[det.label]
        site = {"pi-h02": "H02", "pi-h07": "H07"}[device]
        assert row["device_id"] == device and row["label"] == det.label
        assert (row["scientific_name"], row["common_name"], row["class_name"]) == (scientific, common, klass)
        assert row["started_on"] == iso_utc(det.started_on) and row["ended_on"] == iso_utc(det.ended_on)
        assert (row["start_s"], row["end_s"]) == (det.start_s, det.end_s)
        assert row["confidence"] == det.confidence
        assert row["branch_scores"] == {"birdnet": det.confidence, "frog_head": None}
        assert (row["bundle_name"], row["bundle_version"]) == (BUNDLE[0], plan.bundle_version)
        assert row["bundle_sha256"] == det.bundle_sha256
        assert row["tour_id"] == det.tour_id
        assert row["tour_name"] == (tour_names[det.tour_id] if det.tour_id else None)
        assert (row["site"], row["latitude"], row["longitude"]) == (site, *SITES[site])
        assert row["verdict"] == plan.verdict and row["verification_status"] == verdict_status(plan)
        assert row["source"] == det.source and row["secondary"] is False
    seqs = [row["seq"] for row in field.server.all_detections()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.parametrize("params, keep", [
    ({"start": iso_utc(T0 + timedelta(hours=14))}, lambda d, det, p: det.started_on >= T0 + timedelta(hours=14)),
    ({"end": iso_utc(T0 + timedelta(seconds=60))}, lambda d, det, p: det.started_on < T0 + timedelta(seconds=60)),
    ({"start": "2026-04-21", "end": "2026-04-21T12:00:00Z"},  # a bare date is its midnight UTC
     lambda d, det, p: T0.replace(day=21, hour=0, minute=0) <= det.started_on < T0.replace(day=21, hour=12, minute=0)),
    ({"species": "littin1"}, lambda d, det, p: det.label == "littin1"),
    ({"species": "allobates FEMORALIS"}, lambda d, det, p: det.label == "21211"),
    ({"species": ["littin1", "Boana boans"]}, lambda d, det, p: det.label in ("littin1", "555086")),
    ({"class_name": "Amphibia"}, lambda d, det, p: TAXA[det.label][2] == "Amphibia"),
    ({"device_id": "pi-h07"}, lambda d, det, p: d == "pi-h07"),
    ({"site": "H02"}, lambda d, det, p: d == "pi-h02"),
    ({"min_confidence": 0.8}, lambda d, det, p: det.confidence >= 0.8),
    ({"bundle_name": BUNDLE[0], "bundle_version": "1.1.0"}, lambda d, det, p: p.bundle_version == "1.1.0"),
    ({"bundle_name": "some-other-bundle"}, lambda d, det, p: False),
    ({"status": "confirmed"}, lambda d, det, p: p.verdict == "confirm"),
    ({"status": "rejected"}, lambda d, det, p: p.verdict == "reject"),
    ({"status": "unreviewed"}, lambda d, det, p: p.verdict is None),
    ({"device_id": "pi-h02", "class_name": "Amphibia", "status": "unreviewed"},
     lambda d, det, p: d == "pi-h02" and TAXA[det.label][2] == "Amphibia" and p.verdict is None),
])
def test_each_filter_selects_exactly_the_detections_it_names(field, params, keep):
    expected = made_ids(field, keep)
    assert ids(field.server.all_detections(**params)) == expected
    assert expected or params.get("bundle_name") == "some-other-bundle"  # the plan exercises every filter


def test_the_tour_filter_selects_the_tours_detections(field):
    for name, tour_id in field.tours.items():
        assert ids(field.server.all_detections(tour_id=tour_id)) == made_ids(
            field, lambda d, det, p, name=name: p.tour == name)


def test_pages_follow_the_cursor_in_commit_order_without_repeating(field):
    everything = field.server.all_detections()
    seen, cursor, pages = [], None, 0
    while True:
        page = field.server.get("/api/v1/detections", params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        body = page.json()
        assert len(body["detections"]) <= 3
        seen.extend(body["detections"])
        pages += 1
        if body["next_cursor"] is None:
            break
        assert body["next_cursor"] == body["resume_cursor"]
        cursor = body["next_cursor"]
    assert [row["detection_id"] for row in seen] == [row["detection_id"] for row in everything]
    assert pages == -(-len(everything) // 3)  # a full last page has no empty page after it
    last = field.server.get("/api/v1/detections", params={"cursor": body["resume_cursor"]}).json()
    assert last["detections"] == [] and last["next_cursor"] is None and last["resume_cursor"] == body["resume_cursor"]


def test_one_detection_and_an_unknown_one(field):
    device, det, plan = field.detections()[0]
    row = field.server.get(f"/api/v1/detections/{det.detection_id}")
    assert row.status_code == 200 and row.json()["detection_id"] == det.detection_id
    assert row.json() == next(r for r in field.server.all_detections() if r["detection_id"] == det.detection_id)
    missing = field.server.get("/api/v1/detections/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "not held" in missing.json()["detail"]


def test_the_clip_is_served_as_the_device_sent_it(field):
    det = field.made[CLIP_OF[0]][CLIP_OF[1]][0]
    row = field.server.get(f"/api/v1/detections/{det.detection_id}").json()
    clip = row["clip"]
    assert clip is not None and "path" not in clip and clip["url"] == f"/api/v1/clips/{clip['clip_id']}"
    assert clip["sample_rate_hz"] == field.clip_rate
    audio = field.server.get(clip["url"])
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/flac"
    assert hashlib.sha256(audio.content).hexdigest() == clip["sha256"] and len(audio.content) == clip["size_bytes"]
    assert all(r["clip"] is None for r in field.server.all_detections() if r["detection_id"] != det.detection_id)
    assert field.server.get("/api/v1/clips/no-such-clip").status_code == 404
    assert field.server.get("/api/v1/clips/no-such-clip/spectrogram.png").status_code == 404


def read_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB PNG as (height, width, 3), checking signature, chunk CRCs and filter bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, {}
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        chunks[kind] = chunks.get(kind, b"") + body
        offset += 12 + length
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, 3)


def test_the_spectrogram_draws_the_clips_energy_in_time_and_frequency(field):
    """Pixel for pixel, the PNG's brightness follows scipy's own spectrogram of the clip (in dB,
    low frequencies at the bottom): the call's band and its timing are where they are."""
    det = field.made[CLIP_OF[0]][CLIP_OF[1]][0]
    clip = field.server.get(f"/api/v1/detections/{det.detection_id}").json()["clip"]
    png = field.server.get(clip["url"] + "/spectrogram.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = read_png(png.content)
    brightness = image.astype(float).sum(axis=2)[::-1]  # row 0: the lowest frequency
    _, _, power = scipy_spectrogram(field.clip_samples, fs=field.clip_rate, window="hann", nperseg=512, noverlap=384)
    db = 10 * np.log10(np.maximum(power, 1e-20))
    db = np.clip(db - db.max(), -80, 0)
    assert brightness.shape == db.shape == (257, (len(field.clip_samples) - 512) // 128 + 1)
    assert np.corrcoef(brightness.ravel(), db.ravel())[0, 1] > 0.95
    tinamou_band = slice(int(1500 / field.clip_rate * 512), int(2300 / field.clip_rate * 512))  # its whistle
    quiet_band = slice(int(3500 / field.clip_rate * 512), 257)
    assert brightness[tinamou_band].mean() > brightness[quiet_band].mean()


@pytest.mark.parametrize("params, name", [
    ({"start": "yesterday"}, "start"),
    ({"end": "2026-13-01"}, "end"),
    ({"start": "2026-04-21T00:00:00Z", "end": "2026-04-20T00:00:00Z"}, "end"),
    ({"min_confidence": "high"}, "min_confidence"),
    ({"min_confidence": 1.5}, "min_confidence"),
    ({"status": "maybe"}, "status"),
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "LTE="}, "cursor"),  # base64 of "-1"
])
def test_a_bad_parameter_is_a_422_naming_it(field, params, name):
    answer = field.server.get("/api/v1/detections", params=params)
    assert answer.status_code == 422, answer.text
    assert ["query", name] in [error["loc"] for error in answer.json()["detail"]], answer.json()
