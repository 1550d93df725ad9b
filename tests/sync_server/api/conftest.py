"""Fixtures for the researchers' API: a real `explorer-server run` process with a token, fed by
a real Mosquitto from the device's real sync code.

- `start_server(folder, ...)` runs `python -m sync_server.cli run` (a subprocess, as an operator
  runs it) on a free HTTP port, against a broker of its own or a `tests.mqtt.Broker`, after
  creating a token in its database; it returns once /health answers. `RunningServer.get`
  calls the API with that token (httpx); `.sync(store, device_id)` sends a device store's
  outbox through `device.sync.by_hand.sync_by_hand` (the code `explorer sync` runs) and
  returns once every message is receipted, so what the API then shows is what was committed.
- `server_factory` (module scope) starts servers and stops every one at the end of the module.
- `mosquitto` (module scope): a real broker; `running_server` (module scope): a server
  ingesting from it, on SQLite, empty (each module fills it as it needs).
- `make_detections(store, plan)` closes detections on a device store as its pipeline would
  (queued outbox messages, tours started and stopped, a guide's verdicts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from device.config import SyncSettings
from device.domain import Detection
from device.store import Store
from tests.helpers import REPO
from tests.mqtt import Broker, free_port

SERVER_START_TIMEOUT_S = 60.0
"""Imports (FastAPI, SQLAlchemy, numpy) and a fresh database: a few seconds here; a loaded CI
machine gets far more."""
TOKEN_NAME = "api-tests"
BUNDLE = ("elsilencio-default", "1.2.0", "c" * 64)
TAXA = {  # ../shared/data/taxonomy.csv
    "21211": ("Allobates femoralis", "Spotted-thighed Poison Frog", "Amphibia"),
    "65448": ("Engystomops pustulosus", "Túngara Frog", "Amphibia"),
    "555086": ("Boana boans", "Rusty Tree Frog", "Amphibia"),
    "littin1": ("Crypturellus soui", "Little Tinamou", "Aves"),
    "48124": ("Tettigoniidae", "Katydids", "Insecta"),
    "50186": ("Cicadidae", "Typical Cicadas", "Insecta"),
}


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sync_server.cli", *args]


@dataclass
class RunningServer:
    """An `explorer-server run` subprocess and how to reach it."""

    process: subprocess.Popen
    url: str
    token: str
    db_target: str
    broker_host: str
    broker_port: int
    folder: Path
    lines: list[str] = field(default_factory=list)
    """What it logged (stderr), line by line, as it runs."""
    _client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        """One HTTP client for every call (a new one per call would rebuild its TLS context each time)."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=30)
        return self._client

    def get(self, path: str, params=None, token: str | None = "", **kwargs) -> httpx.Response:
        """GET `path` with the server's token ('' : that token; None: no token; else this one)."""
        headers = dict(kwargs.pop("headers", {}))
        chosen = self.token if token == "" else token
        if chosen is not None:
            headers["Authorization"] = f"Bearer {chosen}"
        return self.client.get(path, params=params, headers=headers, **kwargs)

    def request(self, method: str, path: str, token: str | None = "", **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        chosen = self.token if token == "" else token
        if chosen is not None:
            headers["Authorization"] = f"Bearer {chosen}"
        cookies = kwargs.pop("cookies", None)
        if cookies is not None:  # per request: a client keeps no cookies between the tests' calls
            with httpx.Client(base_url=self.url, timeout=30, cookies=cookies) as once:
                return once.request(method, path, headers=headers, **kwargs)
        return self.client.request(method, path, headers=headers, **kwargs)

    def sync_settings(self, **fields) -> SyncSettings:
        return SyncSettings(enabled=True, host=self.broker_host, port=self.broker_port, **fields)

    def sync(self, store: Store, device_id: str, wait_s: float = 30, **fields):
        """`explorer sync` by hand from `store` to this server; asserts every message was receipted."""
        from device.sync.by_hand import sync_by_hand

        report = sync_by_hand(store, self.sync_settings(**fields), device_id, wait_s=wait_s)
        assert report.pending == 0 and report.unconfirmed == 0 and report.refused == 0, report
        return report

    def all_detections(self, **params) -> list[dict]:
        """Every detection the API lists for `params`, following the cursor."""
        rows, cursor = [], None
        while True:
            page = self.get("/api/v1/detections", params={**params, "limit": 1000,
                                                           **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            body = page.json()
            rows.extend(body["detections"])
            cursor = body["next_cursor"]
            if cursor is None:
                return rows

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, and wait for a clean exit; its exit status."""
        if self._client is not None:
            self._client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def create_token(db_target: str, name: str = TOKEN_NAME) -> str:
    """A token made in the database as `explorer-server token create` makes it."""
    from sync_server.db import ServerStore
    from sync_server.db.tokens import create_token as make

    with ServerStore.open(db_target) as store:
        return make(store, name)[1]


def start_server(folder: Path, db_target: str | None = None, broker: Broker | None = None, *extra: str,
                 token_name: str = TOKEN_NAME, env: dict | None = None) -> RunningServer:
    """Start `explorer-server run` on a free port; with `broker`, ingesting from it, else from
    a broker of its own (whose port its log names). Returns once /health answers 200."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    db_target = db_target or str(folder / "aggregate.db")
    token = create_token(db_target, token_name)
    port = free_port()
    args = ["run", "--db", db_target, "--http-port", str(port), *extra]
    if broker is not None:
        # Its own ingest session: two servers on one broker under the default client id would take
        # the session from each other, and a device's detections land in whichever holds it.
        args += ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--no-tls", "--username", "",
                 "--client-id", f"explorer-ingest-{port}"]
    process = subprocess.Popen(server_command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, **(env or {})})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            time.sleep(0.2)  # the reader thread's last lines
            raise RuntimeError(f"explorer-server run exited {process.returncode}:\n{''.join(lines)}")
        if any(" api: " in line for line in lines):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError(f"explorer-server run did not answer /health within {SERVER_START_TIMEOUT_S} s:\n"
                           + "".join(lines))
    host, broker_port = (broker.host, broker.port) if broker is not None else _own_broker(lines)
    return RunningServer(process, url, token, db_target, host, broker_port, folder, lines)


def _own_broker(lines: list[str]) -> tuple[str, int]:
    """The host and port of the broker `run` started, from its log line."""
    line = next(line for line in lines if " broker: mqtt://" in line)
    address = line.split("mqtt://", 1)[1].split()[0]
    host, port = address.rsplit(":", 1)
    return host, int(port)


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory) -> Iterator[Callable[..., RunningServer]]:
    """start_server(folder-less): each call starts a server in a fresh folder; all are stopped
    (SIGTERM) when the module's tests are done."""
    started: list[RunningServer] = []

    def start(*extra: str, db_target: str | None = None, broker: Broker | None = None, **kwargs) -> RunningServer:
        server = start_server(tmp_path_factory.mktemp("server"), db_target, broker, *extra, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory) -> Iterator[Broker]:
    """A real Mosquitto for the module (tests/mqtt.py)."""
    running = Broker(tmp_path_factory.mktemp("broker")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def running_server(server_factory, mosquitto) -> RunningServer:
    """An empty `explorer-server run` on SQLite, ingesting from `mosquitto`."""
    return server_factory(broker=mosquitto)


# What devices send ---------------------------------------------------------------------------

T0 = datetime(2026, 4, 20, 10, 40, 0, tzinfo=timezone.utc)
"""05:40 at El Silencio (UTC-5): the dawn chorus."""


@dataclass(frozen=True)
class Planned:
    """One detection a device makes."""

    at_s: float
    """Seconds after T0."""
    label: str
    confidence: float
    tour: str | None = None
    verdict: str | None = None
    bundle_version: str = BUNDLE[1]
    site: str | None = None


def device_store(folder: Path, device_id: str, site: str | None = None) -> Store:
    """A device's store, with its `[device]` settings (id, site; its tours are reported with
    them) and the bundle's label names (as an installed bundle records them)."""
    from device.config import DeviceSettings

    latitude, longitude = SITES.get(site, (None, None))
    settings = DeviceSettings(id=device_id, site=site or "", latitude=latitude, longitude=longitude)
    store = Store.open(Path(folder) / f"{device_id}.db", device=settings)
    for version in {BUNDLE[1], "1.1.0"}:
        store.record_bundle(BUNDLE[0], version, BUNDLE[2] if version == BUNDLE[1] else "b" * 64,
                            labels=[{"primary_label": label, "scientific_name": s, "common_name": c,
                                     "class_name": k} for label, (s, c, k) in TAXA.items()])
    return store


def make_detections(store: Store, device_id: str, plan: Sequence[Planned]) -> list[tuple[Detection, Planned]]:
    """Close `plan`'s detections on a device store as its pipeline would (each queues its outbox
    message), inside tours where planned (a plan's tour is contiguous: started before its first
    detection, stopped after its last), with the guide's verdicts; returns what was made.
    A detection's site is its plan's, else the store's `[device] site`."""
    made = []
    tours: dict[str, str] = {}
    active: str | None = None
    for item in plan:
        if item.tour != active:
            if active is not None:
                store.stop_tour(tours[active])
            if item.tour is not None:
                assert item.tour not in tours, f"plan: tour {item.tour!r} is not contiguous"
                tours[item.tour] = store.start_tour(item.tour, guide="Ana Restrepo").tour_id
            active = item.tour
        tour_id = tours[item.tour] if item.tour is not None else None
        started = T0 + timedelta(seconds=item.at_s)
        sha = BUNDLE[2] if item.bundle_version == BUNDLE[1] else "b" * 64
        detection = Detection(
            label=item.label, started_on=started, ended_on=started + timedelta(seconds=5),
            confidence=item.confidence, branch_scores={"birdnet": item.confidence, "frog_head": None},
            bundle_name=BUNDLE[0], bundle_version=item.bundle_version, bundle_sha256=sha, device_id=device_id,
            tour_id=tour_id, source=f"/recordings/{device_id}_20260420.wav", start_s=item.at_s,
            end_s=item.at_s + 5, **_place(item.site or (store.device.site if store.device else None)))
        store.save_detection(detection, final=True)
        if item.verdict:
            store.add_feedback(detection.detection_id, item.verdict)
        made.append((detection, item))
    if active is not None:
        store.stop_tour(tours[active])
    return made


SITES = {"H02": (6.7861, -75.1583), "H07": (6.7790, -75.1702)}
"""Two recorder sites in the reserve (decimal degrees, WGS84)."""


def _place(site: str | None) -> dict:
    if not site:
        return {}
    latitude, longitude = SITES[site]
    return {"site": site, "latitude": latitude, "longitude": longitude, "coordinate_uncertainty_m": 1000.0}


# A morning and a night at two sites --------------------------------------------------------

H = 3600.0
FIELD = {
    "pi-h02": ("H02", [
        Planned(0, "littin1", 0.91, tour="Dawn chorus", verdict="confirm"),
        Planned(60, "21211", 0.88, tour="Dawn chorus"),
        Planned(120, "48124", 0.74, tour="Dawn chorus", verdict="reject"),
        Planned(180, "65448", 0.55, tour="Dawn chorus"),
        Planned(14 * H, "21211", 0.93, tour="Night frogs"),
        Planned(14 * H + 60, "555086", 0.81, tour="Night frogs"),
        Planned(14 * H + 120, "65448", 0.47, tour="Night frogs", verdict="confirm"),
        Planned(26 * H, "littin1", 0.66, bundle_version="1.1.0"),
    ]),
    "pi-h07": ("H07", [
        Planned(30, "50186", 0.71),
        Planned(25 * H, "littin1", 0.83, verdict="reject"),
        Planned(25 * H + 30, "21211", 0.62),
    ]),
}
"""device -> (its site, its detections). Times from T0 (2026-04-20 10:40 UTC): a dawn tour, a
night tour 14 h later (the next UTC day), and two detections of a recorder a day later."""
CLIP_OF = ("pi-h02", 0, "audio/birds/Cryp.soui.wav")
"""The clip kept: pi-h02's first detection (a Little Tinamou, confirmed by the guide, so the
device sends its clip), cut from a real recording of one."""


@dataclass
class Field:
    """What the devices sent: what the API is checked against."""

    server: RunningServer
    made: dict[str, list[tuple[Detection, Planned]]]
    tours: dict[str, str]
    """tour name -> tour_id."""
    clip_samples: object = None
    clip_rate: int = 0
    clip_id: str | None = None

    def detections(self) -> list[tuple[str, Detection, Planned]]:
        return [(device, det, plan) for device, items in self.made.items() for det, plan in items]


@pytest.fixture(scope="session")
def field(shared_data, tmp_path_factory) -> Iterator[Field]:
    """A running server holding FIELD's detections, their tours, verdicts and one real clip,
    all sent by the devices' real `explorer sync` through a real Mosquitto (one for the
    session: the tests that read it never change what it holds, beyond tokens)."""
    broker = Broker(tmp_path_factory.mktemp("field-broker")).start()
    server = start_server(tmp_path_factory.mktemp("field-server"), None, broker)
    try:
        yield fill_field(server, shared_data, tmp_path_factory)
    finally:
        server.stop()
        broker.stop()


def fill_field(server: RunningServer, shared_data: Path, tmp_path_factory) -> Field:
    import soundfile as sf

    folder = tmp_path_factory.mktemp("devices")
    made, tours = {}, {}
    samples = rate = None
    for device_id, (site, plan) in FIELD.items():
        store = device_store(folder, device_id, site)
        try:
            made[device_id] = make_detections(store, device_id, plan)
            if device_id == CLIP_OF[0]:
                audio, rate = sf.read(shared_data / CLIP_OF[2], dtype="float32", always_2d=True)
                samples = audio[: int(3 * rate), 0]
                store.save_clip(folder / "clips" / device_id, made[device_id][CLIP_OF[1]][0], samples, rate)
            for row in store.db.query("SELECT tour_id, name FROM tour"):
                tours[row["name"]] = row["tour_id"]
            report = server.sync(store, device_id, clip_chunk_kb=32)
            if device_id == CLIP_OF[0]:
                assert report.clip_error is None and report.clips_complete == 1, report
        finally:
            store.close()
    clip_id = next(iter(field_clips(server)))
    return Field(server, made, tours, samples, rate, clip_id)


def field_clips(server: RunningServer) -> set[str]:
    from sync_server.db import ServerStore

    with ServerStore.open(server.db_target) as store:
        return set(store.clips_held())
