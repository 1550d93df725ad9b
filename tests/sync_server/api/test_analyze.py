"""`POST /api/v1/analyze`: the device's own analysis, served over HTTP.

The router is mounted in a bare FastAPI app and served by a real uvicorn on a free port (the
app's auth is H2's; here a plain dependency stands in for it). The server's answers are
compared with the real `explorer analyze` command on the same data home, byte for byte, on
the shared recordings in every format the device reads (OGG, WAV at 9 and 44.1 kHz, MP3, FLAC).
Bad uploads are made from real recordings too: a real CSV, a real OGG with a damaged header,
a real FLAC with damage mid-stream, real samples under absurd rates, an empty file.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException

from device.bundle.manifest import read_manifest
from device.home import ExplorerHome
from sync_server.analysis import Analyser, AnalysisSettings
from sync_server.api.analyze import make_analyze_router, upload_name
from tests.helpers import run_explorer

SOUNDSCAPE = "audio/elsilencio_soundscape/H02_20230420_074000.ogg"
RECORDINGS = (
    SOUNDSCAPE,                                                  # OGG Vorbis, 32 kHz, 60 s
    "audio/birds/Cryp.soui.wav",                                  # WAV, 9 kHz: the Little Tinamou
    "audio/birds/spinetail.wav",                                  # WAV, 44.1 kHz
    "audio/insects/LIS_Magicicada_neotredecim_Marshall_Hill.mp3",  # MP3
    "audio/insects/Rthoptera_eumodicogryllus_bordigalensis.flac",  # FLAC
    "audio/mammals/minetest_sounds_jaguar_saw.ogg",               # 1.4 s: one padded window
    "audio/birdclef_train_audio/3.ogg",                           # Allobates femoralis, 38 s
)
FROG = "audio/birdclef_train_audio/3.ogg"


class LiveServer:
    """A real uvicorn serving `app` on a free loopback port, in a thread of this process."""

    def __init__(self, app: FastAPI):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()


def app_for(analyser: Analyser, dependencies=None) -> FastAPI:
    app = FastAPI()
    app.include_router(make_analyze_router(analyser, dependencies=dependencies))
    return app


@pytest.fixture(scope="module")
def bundle_home(tmp_path_factory) -> ExplorerHome:
    """A data home holding the demo bundle and the default bundle (active), as the CLI builds them."""
    from exporter.default_bundle import build_default_bundle
    from exporter.demo_bundle import build_demo_bundle

    home = ExplorerHome.resolve(tmp_path_factory.mktemp("analyze-home")).ensure()
    build_demo_bundle(home)
    build_default_bundle(home, progress=lambda line: None)
    return home


@pytest.fixture(scope="module")
def spool(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analyze-spool")


@pytest.fixture(scope="module")
def server(bundle_home, spool):
    analyser = Analyser(bundle_home, AnalysisSettings(engines_per_bundle=2, spool_dir=spool))
    with LiveServer(app_for(analyser)) as live:
        yield live


def cli_rows(home: ExplorerHome, recordings: list[Path], out: Path, *options: str) -> tuple[bytes, dict[str, bytes]]:
    """Run `explorer analyze` over `recordings` at once: its header line and each file's row lines."""
    result = run_explorer("analyze", *map(str, recordings), *options, "--out", str(out), home=home)
    assert result.returncode == 0, result.stderr
    header, *rows = out.read_bytes().splitlines(keepends=True)
    by_stem: dict[str, bytes] = {}
    for line in rows:
        stem = line.split(b",", 1)[0].decode().rsplit("_", 1)[0]
        by_stem[stem] = by_stem.get(stem, b"") + line
    assert set(by_stem) == {Path(r).stem for r in recordings}
    return header, by_stem


@pytest.fixture(scope="module")
def cli_csv(bundle_home, shared_data, tmp_path_factory) -> tuple[bytes, dict[str, bytes]]:
    """`explorer analyze` with the active (default) bundle over every recording."""
    return cli_rows(bundle_home, [shared_data / r for r in RECORDINGS], tmp_path_factory.mktemp("cli") / "all.csv")


@pytest.fixture(scope="module")
def demo_dir(bundle_home) -> Path:
    return next(p for p in bundle_home.bundles.iterdir() if p.name.startswith("demo-tiny-"))


@pytest.fixture(scope="module")
def cli_demo_csv(bundle_home, demo_dir, shared_data, tmp_path_factory) -> tuple[bytes, dict[str, bytes]]:
    """`explorer analyze --bundle <the demo bundle>` over every recording."""
    return cli_rows(bundle_home, [shared_data / r for r in RECORDINGS], tmp_path_factory.mktemp("cli") / "demo.csv",
                    "--bundle", str(demo_dir))


def post(url: str, path: Path, name: str | None = None, **params) -> httpx.Response:
    with open(path, "rb") as handle:
        return httpx.post(f"{url}/api/v1/analyze", params=params, files={"file": (name or path.name, handle)},
                          timeout=300)


def test_the_csv_is_byte_for_byte_what_explorer_analyze_writes(server, bundle_home, shared_data, tmp_path, spool):
    recording = shared_data / SOUNDSCAPE
    result = run_explorer("analyze", str(recording), "--out", str(tmp_path / "cli.csv"), home=bundle_home)
    assert result.returncode == 0, result.stderr
    response = post(server.url, recording)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content == (tmp_path / "cli.csv").read_bytes()
    assert response.content.count(b"\n") == 13  # the header and 12 rows of 5 s
    assert list(spool.iterdir()) == []  # the spooled upload is gone


def test_every_format_the_device_reads_gives_the_cli_rows(server, shared_data, cli_csv):
    header, by_stem = cli_csv
    for recording in RECORDINGS:
        response = post(server.url, shared_data / recording)
        assert response.status_code == 200, (recording, response.text)
        assert response.content == header + by_stem[Path(recording).stem], recording


def test_eight_concurrent_uploads_are_all_answered_correctly(server, shared_data, cli_demo_csv, spool):
    header, by_stem = cli_demo_csv  # the demo bundle: the same engine, a quicker model
    uploads = [RECORDINGS[i % len(RECORDINGS)] for i in range(8)]
    with ThreadPoolExecutor(len(uploads)) as pool:
        responses = list(pool.map(lambda r: post(server.url, shared_data / r, bundle="demo-tiny"), uploads))
    for recording, response in zip(uploads, responses):
        assert response.status_code == 200, (recording, response.text)
        assert response.content == header + by_stem[Path(recording).stem], recording
    assert list(spool.iterdir()) == []


def test_json_lists_the_labels_over_their_thresholds_with_the_bundle(server, bundle_home, shared_data, cli_csv):
    response = post(server.url, shared_data / FROG, format="json")
    assert response.status_code == 200, response.text
    body = response.json()
    active = bundle_home.active_bundle()
    manifest = read_manifest(active)
    sha256 = hashlib.sha256((active / "manifest.json").read_bytes()).hexdigest()
    assert body["bundle"] == {"name": manifest.name, "version": manifest.version, "sha256": sha256}
    header, by_stem = cli_csv
    labels = header.decode().strip().split(",")[1:]
    rows = [line.split(",") for line in by_stem[Path(FROG).stem].decode().splitlines()]
    assert [w["row_id"] for w in body["windows"]] == [row[0] for row in rows]
    by_id = {label.primary_label: label for label in manifest.labels}
    for window, row in zip(body["windows"], rows):
        expected = {label for label, cell in zip(labels, row[1:]) if cell and float(cell) >= manifest.threshold(label)}
        assert {entry["label"] for entry in window["labels"]} == expected, window["row_id"]
        scores = [entry["score"] for entry in window["labels"]]
        assert scores == sorted(scores, reverse=True)
        for entry in window["labels"]:
            label = by_id[entry["label"]]
            assert (entry["scientific_name"], entry["common_name"], entry["class_name"]) == \
                   (label.scientific_name, label.common_name, label.class_name)
            assert entry["score"] == pytest.approx(float(row[1 + labels.index(entry["label"])]), abs=1e-6)
    assert [(w["start_s"], w["end_s"]) for w in body["windows"][:2]] == [(0.0, 5.0), (5.0, 10.0)]
    assert body["windows"][-1]["end_s"] == pytest.approx(sf.info(shared_data / FROG).duration, abs=1e-3)
    heard = [e for w in body["windows"] for e in w["labels"] if e["label"] == "21211"]
    assert heard and heard[0]["scientific_name"] == "Allobates femoralis" and heard[0]["class_name"] == "Amphibia"


def test_a_named_bundle_is_used_and_an_unknown_one_is_refused(server, bundle_home, demo_dir, shared_data, cli_demo_csv):
    header, by_stem = cli_demo_csv
    recording = shared_data / FROG
    for name in ("demo-tiny", demo_dir.name):
        response = post(server.url, recording, bundle=name)
        assert response.status_code == 200, response.text
        assert response.content == header + by_stem[recording.stem]
    response = post(server.url, recording, bundle="no-such-bundle")
    assert response.status_code == 404
    assert "no-such-bundle" in response.json()["detail"] and "elsilencio-default" in response.json()["detail"]
    listed = httpx.get(f"{server.url}/api/v1/analyze/bundles").json()
    assert listed["default"] == bundle_home.active_bundle().name
    assert {b["name"] for b in listed["bundles"]} == {"demo-tiny", "elsilencio-default"}


def _damaged(shared_data: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad uploads made from real files, each with what the 422's detail must say."""
    ogg = (shared_data / SOUNDSCAPE).read_bytes()
    flac = (shared_data / RECORDINGS[4]).read_bytes()
    samples, _ = sf.read(shared_data / "audio/birds/spinetail.wav", dtype="float32", frames=20_000)
    cases = {
        "recordings.csv": ((shared_data / "recordings.csv").read_bytes(), "not a readable audio file"),
        "damaged_header.ogg": (ogg[:40] + b"\xff" * 4000 + ogg[4040:], "unreadable audio"),
        "damaged_stream.flac": (flac[: len(flac) // 2] + b"\x00\xff" * 20_000 + flac[len(flac) // 2 + 40_000:],
                                "decoding failed"),
        "empty.wav": (b"", "empty file"),
    }
    paths = {}
    for name, (data, expected) in cases.items():
        (folder / name).write_bytes(data)
        paths[name] = (folder / name, expected)
    for name, rate, expected in (("rate_4hz.wav", 4, "below"), ("rate_999983hz.wav", 999_983, "no recorder's rate"),
                                 ("rate_5mhz.wav", 5_000_000, "above 1000000 Hz")):
        sf.write(folder / name, samples, rate)
        paths[name] = (folder / name, expected)
    sf.write(folder / "no_samples.wav", np.zeros(0, dtype=np.float32), 32_000)
    paths["no_samples.wav"] = (folder / "no_samples.wav", "holds no audio")
    return paths


def test_bad_audio_gets_a_422_naming_the_upload_and_the_problem(server, shared_data, tmp_path, spool):
    for name, (path, expected) in _damaged(shared_data, tmp_path).items():
        response = post(server.url, path)
        assert response.status_code == 422, (name, response.text)
        detail = response.json()["detail"]
        assert detail.startswith(f"{name}: ") and expected in detail, (name, detail)
        assert str(spool) not in detail  # the spool path never leaks
    assert list(spool.iterdir()) == []


def test_uploads_over_the_limits_are_refused(bundle_home, shared_data, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    analyser = Analyser(bundle_home, AnalysisSettings(max_upload_bytes=600_000, max_duration_s=30,
                                                      engines_per_bundle=1, spool_dir=spool))
    big = shared_data / "audio/birds/spinetail.wav"  # 1.7 MB
    with LiveServer(app_for(analyser)) as live:
        response = post(live.url, big)
        assert response.status_code == 413
        assert "600000 bytes" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit must hold while the body streams in
            boundary = b"x-boundary"
            yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
            data = big.read_bytes()
            for i in range(0, len(data), 65_536):
                yield data[i: i + 65_536]
            yield b"\r\n--" + boundary + b"--\r\n"

        response = httpx.post(f"{live.url}/api/v1/analyze", content=chunks(), timeout=60,
                              headers={"content-type": "multipart/form-data; boundary=x-boundary"})
        assert response.status_code == 413, response.text
        assert "600000 bytes" in response.json()["detail"]

        long = shared_data / SOUNDSCAPE  # 60 s in 0.5 MB of OGG: under the size limit, over the duration one
        assert long.stat().st_size < 600_000
        response = post(live.url, long)
        assert response.status_code == 422
        assert "H02_20230420_074000.ogg: 60 s long, above the 30 s" in response.json()["detail"]
    assert list(spool.iterdir()) == []


def test_requests_that_are_not_an_upload_are_refused_clearly(server):
    response = httpx.post(f"{server.url}/api/v1/analyze", content=b"RIFF....", headers={"content-type": "audio/wav"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    response = httpx.post(f"{server.url}/api/v1/analyze", files={"recording": ("a.wav", b"RIFF")})
    assert response.status_code == 422 and "no field 'file'" in response.json()["detail"]
    response = httpx.post(f"{server.url}/api/v1/analyze", params={"format": "xml"}, files={"file": ("a.wav", b"x")})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "format"]


def test_the_apps_dependencies_guard_the_routes(bundle_home, shared_data):
    def token(authorization: str = Header("")) -> None:
        if authorization != "Bearer right":
            raise HTTPException(401, "a token is needed")

    analyser = Analyser(bundle_home, AnalysisSettings(engines_per_bundle=1))
    recording = shared_data / "audio/mammals/minetest_sounds_jaguar_saw.ogg"
    with LiveServer(app_for(analyser, dependencies=[Depends(token)])) as live:
        assert post(live.url, recording).status_code == 401
        assert httpx.get(f"{live.url}/api/v1/analyze/bundles").status_code == 401
        with open(recording, "rb") as handle:
            answer = httpx.post(f"{live.url}/api/v1/analyze", files={"file": (recording.name, handle)},
                                headers={"Authorization": "Bearer right"}, params={"bundle": "demo-tiny"})
    assert answer.status_code == 200 and answer.text.startswith("row_id,")
    assert answer.headers["content-disposition"] == 'attachment; filename="minetest_sounds_jaguar_saw.csv"'


def test_upload_names_keep_the_stem_and_lose_any_folder():
    assert upload_name("H02_20230420_074000.ogg") == "H02_20230420_074000.ogg"
    assert upload_name("../../etc/passwd") == "passwd"
    assert upload_name("C:\\recordings\\site 4\\dawn.wav") == "dawn.wav"
    assert upload_name("") == "upload" and upload_name("..") == "upload"
    assert upload_name("a\x00b.wav") == "a_b.wav"
    assert len(upload_name("x" * 500 + ".flac")) == 200 and upload_name("x" * 500 + ".flac").endswith(".flac")


def test_a_bundle_that_does_not_verify_is_never_served(bundle_home, demo_dir, tmp_path):
    import shutil

    home = ExplorerHome.resolve(tmp_path / "home").ensure()
    shutil.copytree(bundle_home.trusted_keys, home.trusted_keys, dirs_exist_ok=True)
    tampered = home.bundles / demo_dir.name
    shutil.copytree(demo_dir, tampered)
    model = next(p for p in tampered.iterdir() if p.suffix == ".onnx")
    model.write_bytes(model.read_bytes() + b"\0")
    analyser = Analyser(home, AnalysisSettings(engines_per_bundle=1))
    assert analyser.bundles == [] and "does not match the manifest" in analyser.refused[demo_dir.name]
    with LiveServer(app_for(analyser)) as live:
        response = httpx.post(f"{live.url}/api/v1/analyze", files={"file": ("a.wav", b"RIFF")})
        assert response.status_code == 503 and "holds no verified bundle" in response.json()["detail"]
        response = httpx.post(f"{live.url}/api/v1/analyze", params={"bundle": demo_dir.name},
                              files={"file": ("a.wav", b"RIFF")})
        assert response.status_code == 404 and "did not verify" in response.json()["detail"]


def test_past_the_in_flight_limit_a_request_gets_a_503_not_a_queue(bundle_home, shared_data, tmp_path):
    from tests.helpers import wait_until

    analyser = Analyser(bundle_home, AnalysisSettings(max_in_flight=1, engines_per_bundle=1, spool_dir=tmp_path))
    recording = shared_data / "audio/mammals/minetest_sounds_jaguar_saw.ogg"
    release = threading.Event()

    def held_upload():  # the first request stays in flight until released
        yield (b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + recording.name.encode()
               + b'"\r\n\r\n')
        release.wait(60)
        yield recording.read_bytes() + b"\r\n--b--\r\n"

    with LiveServer(app_for(analyser)) as live, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{live.url}/api/v1/analyze", content=held_upload(), timeout=60,
                            headers={"content-type": "multipart/form-data; boundary=b"}, params={"bundle": "demo-tiny"})
        # The first is in flight once its spool folder exists (made as it passes the gate).
        assert wait_until(lambda: any(tmp_path.iterdir()), timeout_s=30)
        second = post(live.url, recording, bundle="demo-tiny")
        assert second.status_code == 503, second.text
        assert "1 analyses are in flight" in second.json()["detail"]
        assert second.headers["retry-after"] == "5"
        release.set()
        answer = first.result(60)
        assert answer.status_code == 200 and answer.text.startswith("row_id,")
    assert list(tmp_path.iterdir()) == []


def test_the_server_serves_the_data_homes_active_bundle(bundle_home):
    assert Analyser(bundle_home.root).default_bundle.verified.path == bundle_home.active_bundle().resolve()
