"""One aggregate database for every export test, filled the way production fills it: detections
(payload schema 2, with the device's site and coordinates), verdicts and a tour that a device's
store queued in its real outbox, published through a real Mosquitto to the real ingest; clips of
real recordings sent in chunks as a device sends them (as tests/sync_server/test_clips.py does).

Built once per session (about two seconds) and only read by the tests (the API test adds a
token), so each test can assert on exact contents. What it holds (`SCENE`):

- device pi-h02, tour "dawn walk": three Allobates femoralis detections in the BirdCLEF frog
  recording 3.ogg (one confirmed, one rejected, one unreviewed; all with clips), a Little Tinamou
  in Cryp.soui.wav (confirmed, 9 kHz clip), a cicada (family Cicadidae, no clip), a secondary
  Tungara frog, and a detection of a label the bundle has no facts for (no scientific name);
- device pi-h03: one Allobates femoralis in the same 3.ogg (so Raven gets a table per device).
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import soundfile as sf
from sqlalchemy import select

from device.config import DeviceSettings
from device.contracts.clip import ClipChunk, clip_topic, encode_chunk
from device.domain import Detection
from device.store import Store
from sync_server.db import ServerStore
from sync_server.db.schema import tour as tour_table
from tests.helpers import wait_until
from tests.mqtt import Broker
from tests.sync_server.test_ingest import outbox_items, publish_raw, start_ingest

T0 = datetime(2026, 4, 20, 6, 30, 0, tzinfo=timezone.utc)
BUNDLE = ("elsilencio-default", "1.2.0", "b" * 64)
TAXONOMY_LABELS = ("21211", "littin1", "50186", "65448")
"""Labels whose facts the device's bundle record carries (from the shared taxonomy.csv)."""
UNNAMED_LABEL = "unknown1"
"""A label the bundle recorded no facts for: its detection has no scientific name."""
SITE = ("H02", 5.7331, -74.6219, 12.0)
"""pi-h02's `[device]` place: site, latitude, longitude, uncertainty in metres (illustrative
coordinates, not a surveyed point). pi-h03 has none configured."""
CLIP_S = 5.0


@dataclass(frozen=True)
class Planned:
    """One detection of the scene and what the tests expect of it."""

    key: str
    device_id: str
    label: str
    source: str
    start_s: float
    end_s: float
    confidence: float
    verdict: str | None = None
    clip: bool = False
    secondary: bool = False
    branch_scores: tuple[tuple[str, float | None], ...] = (("birdnet", 0.9), ("frog_head", None))


SCENE = (
    Planned("frog_confirmed", "pi-h02", "21211", "audio/birdclef_train_audio/3.ogg", 0.0, 10.0, 0.93, "confirm", True,
            branch_scores=(("birdnet", None), ("frog_head", 0.93))),
    Planned("frog_rejected", "pi-h02", "21211", "audio/birdclef_train_audio/3.ogg", 15.0, 20.0, 0.55, "reject", True,
            branch_scores=(("birdnet", None), ("frog_head", 0.55))),
    Planned("frog_unreviewed", "pi-h02", "21211", "audio/birdclef_train_audio/3.ogg", 25.0, 30.0, 0.71, None, True),
    Planned("tinamou", "pi-h02", "littin1", "audio/birds/Cryp.soui.wav", 1.0, 6.0, 0.87, "confirm", True,
            branch_scores=(("birdnet", 0.87), ("frog_head", 0.02))),
    Planned("cicada", "pi-h02", "50186", "audio/insects/minetest_sounds_cicada_01.ogg", 0.0, 5.0, 0.66),
    Planned("tungara", "pi-h02", "65448", "audio/colombian_frogs/Engystomops_pustulosus.wav", 2.0, 7.0, 0.61,
            secondary=True),
    Planned("unnamed", "pi-h02", UNNAMED_LABEL, "audio/birdclef_train_audio/3.ogg", 30.0, 35.0, 0.52),
    Planned("frog_other_device", "pi-h03", "21211", "audio/birdclef_train_audio/3.ogg", 5.0, 10.0, 0.8, None, True),
)


@dataclass
class Filled:
    """The filled aggregate database and what went into it."""

    server: ServerStore
    ids: dict[str, str]
    """SCENE key -> detection_id."""
    clips_dir: Path
    shared_data: Path
    tour_id: str

    def key_of(self, detection_id: str) -> str:
        return next(key for key, value in self.ids.items() if value == detection_id)

    def planned(self, key: str) -> Planned:
        return next(p for p in SCENE if p.key == key)


def taxonomy_facts(shared_data: Path) -> list[dict[str, str]]:
    import csv

    with open(shared_data / "taxonomy.csv", newline="", encoding="utf-8") as handle:
        rows = {row["primary_label"]: row for row in csv.DictReader(handle)}
    return [{key: rows[label][key] for key in ("primary_label", "scientific_name", "common_name", "class_name")}
            for label in TAXONOMY_LABELS]


def clip_flac(shared_data: Path, source: str, start_s: float) -> tuple[bytes, int, float]:
    """CLIP_S seconds of the real recording from start_s, as the 16-bit FLAC a device keeps."""
    info = sf.info(str(shared_data / source))
    first = int(start_s * info.samplerate)
    audio, rate = sf.read(shared_data / source, dtype="float32", start=first,
                          frames=int(CLIP_S * info.samplerate), always_2d=True)
    buffer = io.BytesIO()
    sf.write(buffer, audio[:, 0], rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), rate, len(audio) / rate


def _chunks(device_id: str, detection_id: str, data: bytes, rate: int, duration: float, start_s: float,
            size: int = 40_000) -> list[ClipChunk]:
    clip_id, sha = str(uuid.uuid4()), hashlib.sha256(data).hexdigest()
    return [ClipChunk(device_id, clip_id, detection_id, sha, len(data), offset, data[offset:offset + size], rate,
                      duration, start_s) for offset in range(0, len(data), size)]


def fill(folder: Path, shared_data: Path) -> Filled:
    """Run the scene through a device store, Mosquitto and the ingest into a fresh SQLite database."""
    device = Store.open(folder / "explorer.db", device=DeviceSettings(
        id="pi-h02", site=SITE[0], latitude=SITE[1], longitude=SITE[2], coordinate_uncertainty_m=SITE[3]))
    server = ServerStore.open(folder / "server" / "aggregate.db")
    broker = Broker(folder / "broker").start()
    try:
        device.record_bundle(*BUNDLE, labels=taxonomy_facts(shared_data))
        tour = device.start_tour(name="dawn walk", guide="Ana")
        ids = {}
        for n, planned in enumerate(SCENE):
            started = T0 + timedelta(seconds=planned.start_s + 60 * n)
            found = Detection(
                label=planned.label, started_on=started, ended_on=started + timedelta(seconds=planned.end_s - planned.start_s),
                confidence=planned.confidence, branch_scores=dict(planned.branch_scores), bundle_name=BUNDLE[0],
                bundle_version=BUNDLE[1], bundle_sha256=BUNDLE[2], device_id=planned.device_id,
                tour_id=tour.tour_id if planned.device_id == "pi-h02" else None, source=planned.source,
                start_s=planned.start_s, end_s=planned.end_s, window_count=int((planned.end_s - planned.start_s) // 5),
                secondary=planned.secondary, peak_start_s=planned.start_s,
                **(dict(zip(("site", "latitude", "longitude", "coordinate_uncertainty_m"), SITE))
                   if planned.device_id == "pi-h02" else {}))  # as the pipeline stamps [device]: pi-h03 has none
            device.save_detection(found, final=True)
            ids[planned.key] = found.detection_id
        for planned in SCENE:
            if planned.verdict:
                device.add_feedback(ids[planned.key], planned.verdict)
        device.stop_tour(tour.tour_id)
        pieces = []
        for planned in SCENE:
            if planned.clip:
                data, rate, duration = clip_flac(shared_data, planned.source, planned.start_s)
                pieces += _chunks(planned.device_id, ids[planned.key], data, rate, duration, planned.start_s)
        clips_dir = folder / "server" / "clips"
        ingest = start_ingest(server, broker, client_id="export-tests", clips_dir=clips_dir)
        try:
            publish_raw(broker, outbox_items(device) + [(clip_topic(p.device_id), encode_chunk(p)) for p in pieces])
            wanted = sum(1 for p in SCENE if p.clip)
            assert wait_until(lambda: server.counts().detections == len(SCENE) and len(server.clips_held()) == wanted
                              and len(server.feedback_ids()) == sum(1 for p in SCENE if p.verdict)
                              and tour_names(server) == {tour.tour_id: "dawn walk"}, 30)
        finally:
            ingest.stop()
    finally:
        broker.stop()
        device.close()
    return Filled(server, ids, clips_dir, shared_data, tour.tour_id)


def tour_names(server: ServerStore) -> dict[str, str]:
    with server.engine.connect() as connection:
        return dict(connection.execute(select(tour_table.c.tour_id, tour_table.c.name)).all())


@pytest.fixture(scope="session")
def filled(tmp_path_factory, shared_data) -> Filled:
    done = fill(tmp_path_factory.mktemp("export-scene"), shared_data)
    yield done
    done.server.close()
