"""CSV and Parquet exports of ingested detections, read back by pandas and pyarrow: every field of
every selected row comes back equal, nulls as nulls, and the filter selects the same rows as the API."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow.parquet as pq

from device.domain import parse_iso_utc
from sync_server.db.queries import DetectionFilter, detection_rows, iter_detection_rows
from sync_server.export.formats import ExportOptions, export
from sync_server.export.tables import COLUMNS, NAMED, TIMESTAMPS, flat_row, write_parquet
from tests.sync_server.export.conftest import UNNAMED_LABEL

BASE = "https://explorer.example.org"


def expected(filled, filter=DetectionFilter()):
    return [flat_row(row, BASE) for row in detection_rows(filled.server, filter)]


def same(read, wanted) -> bool:
    """A value read back equals the row's (NaN-free floats compared exactly)."""
    if wanted is None:
        return read is None or (isinstance(read, float) and math.isnan(read))
    return read == wanted


def test_csv_holds_every_field_of_every_row_and_reads_back_equal(filled, tmp_path):
    out = tmp_path / "detections.csv"
    summary = export(filled.server, "csv", DetectionFilter(), out, ExportOptions(base_url=BASE))
    wanted = expected(filled)
    assert summary.rows == len(wanted) == len(filled.ids)
    frame = pd.read_csv(out, dtype={"tour_id": str, "verdict": str, "site": str, "label": str})
    assert tuple(frame.columns) == COLUMNS
    assert COLUMNS[COLUMNS.index("class_name") + 1:][:2] == NAMED  # the reader's name beside the label's facts
    for read, row in zip(frame.to_dict("records"), wanted):
        for name in COLUMNS:
            value = read[name]
            if name in ("branch_scores", "context_scores") and row[name] is not None:
                assert json.loads(value) == row[name], name
            elif row[name] is None:
                assert isinstance(value, float) and math.isnan(value), name
            elif isinstance(row[name], bool):
                assert bool(value) is row[name], name
            else:
                assert value == row[name], (name, value, row[name])
    by_id = {r["detection_id"]: r for r in frame.to_dict("records")}
    tinamou = by_id[filled.ids["tinamou"]]
    assert tinamou["tour_name"] == "dawn walk" and tinamou["site"] == "H02"  # the tour's own message named it
    assert tinamou["verification_status"] == "confirmed" and tinamou["clip_url"].startswith(BASE + "/api/v1/clips/")
    assert "clip_path" not in frame.columns  # the server's own file stays the server's
    assert math.isnan(by_id[filled.ids["cicada"]]["clip_sample_rate_hz"])  # no clip: empty clip columns
    assert named(by_id, filled) == NAMED_ROWS
    unnamed = by_id[filled.ids["unnamed"]]
    assert math.isnan(unnamed["taxon_rank"]) and unnamed["display_name"] == UNNAMED_LABEL  # no name: no rank


NAMED_ROWS = {
    "cicada": ("Cicadidae", "Typical Cicadas", "family", "a cicada (Cicadidae)"),
    "tinamou": ("Crypturellus soui", "Little Tinamou", "species", "Little Tinamou (Crypturellus soui)"),
    "tungara": ("Engystomops pustulosus", "Túngara Frog", "species", "Túngara Frog (Engystomops pustulosus)"),
}
"""What the names columns hold for a family, and for two species (the taxonomy's names kept as they are)."""


def named(by_id, filled) -> dict:
    return {key: tuple(by_id[filled.ids[key]][c] for c in ("scientific_name", "common_name", "taxon_rank", "display_name"))
            for key in NAMED_ROWS}


def test_parquet_reads_back_with_types_timestamps_and_a_map_of_branch_scores(filled, tmp_path):
    out = tmp_path / "detections.parquet"
    summary = export(filled.server, "parquet", DetectionFilter(), out, ExportOptions(base_url=BASE))
    table = pq.read_table(out)
    wanted = expected(filled)
    assert summary.rows == table.num_rows == len(wanted)
    assert table.schema.field("started_on").type.tz == "UTC" and str(table.schema.field("seq").type) == "int64"
    for read, row in zip(table.to_pylist(), wanted):
        for name in COLUMNS:
            if name in TIMESTAMPS and row[name] is not None:
                assert read[name] == parse_iso_utc(row[name]), name  # millisecond precision kept
            elif name in ("branch_scores", "context_scores") and row[name] is not None:
                assert dict(read[name]) == row[name], name
            else:
                assert same(read[name], row[name]), (name, read[name], row[name])
    frog = next(r for r in table.to_pylist() if r["detection_id"] == filled.ids["frog_confirmed"])
    assert dict(frog["branch_scores"]) == {"birdnet": None, "frog_head": 0.93}
    by_id = {r["detection_id"]: r for r in table.to_pylist()}
    assert named(by_id, filled) == NAMED_ROWS  # the family reads as a family here too
    assert by_id[filled.ids["unnamed"]]["taxon_rank"] is None


def test_a_filter_selects_the_same_rows_in_both_formats(filled, tmp_path):
    chosen = DetectionFilter(species=("Allobates femoralis",), status="unreviewed", min_confidence=0.7)
    export(filled.server, "csv", chosen, tmp_path / "some.csv")
    export(filled.server, "parquet", chosen, tmp_path / "some.parquet")
    ids = {filled.ids["frog_unreviewed"], filled.ids["frog_other_device"]}
    assert set(pd.read_csv(tmp_path / "some.csv")["detection_id"]) == ids
    assert set(pq.read_table(tmp_path / "some.parquet").column("detection_id").to_pylist()) == ids
    assert pd.read_csv(tmp_path / "some.csv")["clip_url"].str.startswith("/api/v1/clips/").all()  # no base URL


def test_parquet_is_written_in_row_groups_and_an_empty_selection_is_a_valid_file(filled, tmp_path):
    rows = iter_detection_rows(filled.server, DetectionFilter(), batch=3)  # the reader's batches too
    assert write_parquet(rows, tmp_path / "groups.parquet", row_group=3) == len(filled.ids)
    assert pq.ParquetFile(tmp_path / "groups.parquet").metadata.num_row_groups == math.ceil(len(filled.ids) / 3)
    none = export(filled.server, "parquet", DetectionFilter(device_id="pi-nobody"), tmp_path / "none.parquet")
    assert none.rows == 0 and pq.read_table(tmp_path / "none.parquet").schema.names == list(COLUMNS)
    export(filled.server, "csv", DetectionFilter(device_id="pi-nobody"), tmp_path / "none.csv")
    assert (tmp_path / "none.csv").read_text().strip() == ",".join(COLUMNS)
