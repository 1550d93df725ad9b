"""`GET /api/v1/exports/{format}` in the real app (sync_server.api.app) behind a real token: the same
bytes as the command line's export, every format as a download, 422s naming the parameter, 401
without a token, and no temporary file left behind."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from sync_server.api.app import create_app
from sync_server.db.queries import DetectionFilter
from sync_server.db.tokens import create_token
from sync_server.export.formats import FORMATS, ExportOptions, export
from trainer.labelled import read_labelled_list


@pytest.fixture(scope="module")
def client(filled):
    _, secret = create_token(filled.server, "export-tests")
    with TestClient(create_app(filled.server), headers={"Authorization": f"Bearer {secret}"}) as opened:
        yield opened


def test_csv_over_http_is_the_command_lines_file_byte_for_byte(client, filled, tmp_path):
    params = {"species": ["21211", "littin1"], "min_confidence": 0.6, "device_id": "pi-h02"}
    response = client.get("/api/v1/exports/csv", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment; filename=\"explorer-")
    same = export(filled.server, "csv", DetectionFilter(species=("21211", "littin1"), min_confidence=0.6,
                                                        device_id="pi-h02"),
                  tmp_path / "cli.csv", ExportOptions(base_url="http://testserver"))
    assert response.content == (tmp_path / "cli.csv").read_bytes()
    assert int(response.headers["x-explorer-rows"]) == same.rows == 3  # two frogs (0.93, 0.71) and the tinamou


def test_every_format_downloads_as_a_file_its_reader_opens(client, filled, tmp_path):
    for name, spec in FORMATS.items():
        response = client.get(f"/api/v1/exports/{name}")
        assert response.status_code == 200, (name, response.text)
        assert response.headers["content-type"].split(";")[0] == spec.media_type.split(";")[0]
        assert response.headers["content-disposition"].endswith(f'{spec.suffix}"')
        if name == "parquet":
            assert pq.read_table(io.BytesIO(response.content)).num_rows == len(filled.ids)
        elif name != "csv":
            with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
                archive.extractall(tmp_path / name)
    assert len(read_labelled_list(tmp_path / "labelled" / "labelled.csv")) == 3
    assert (tmp_path / "dwca" / "meta.xml").is_file() and (tmp_path / "raven" / "index.tsv").is_file()
    left = json.loads(client.get("/api/v1/exports/dwca").headers["x-explorer-left-out"])
    assert left == {"rejected by a guide": 1, "without a scientific name": 1}


def test_bad_parameters_are_422s_naming_them_and_no_token_is_401(client, filled):
    for path, params, where in (
        ("/api/v1/exports/csv", {"min_confidence": 2}, ["query", "min_confidence"]),
        ("/api/v1/exports/csv", {"start": "2026-04-21T00:00:00Z", "end": "2026-04-20T00:00:00Z"}, ["query", "end"]),
        ("/api/v1/exports/csv", {"status": "maybe"}, ["query", "status"]),
        ("/api/v1/exports/dwca", {"clips": "all"}, ["query", "clips"]),
        ("/api/v1/exports/xlsx", {}, ["path", "format"]),
    ):
        response = client.get(path, params=params)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == where, response.text
    anonymous = TestClient(client.app)
    assert anonymous.get("/api/v1/exports/csv").status_code == 401
    assert client.get("/api/v1/exports/csv", headers={"Authorization": "Bearer not-a-token"}).status_code == 401


def test_the_temporary_export_is_gone_once_sent(client, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert client.get("/api/v1/exports/dwca").status_code == 200
    assert client.get("/api/v1/exports/raven").status_code == 200
    assert list(tmp_path.iterdir()) == []
