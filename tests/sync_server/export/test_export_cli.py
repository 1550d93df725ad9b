"""`explorer-server export`: every format from the command line, the API's filters as options, and
bad input refused by name with nothing written."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from sync_server.export.cli import FORMAT_NAMES, export


def run(*args):
    return CliRunner().invoke(export, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_each_format_is_written_and_summarised(filled, tmp_path, format_name):
    out = tmp_path / f"out.{format_name}"
    result = run("--db", filled.server.sqlite_path, "--format", format_name, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{format_name}: ") and str(out) in result.output
    assert out.exists()


def test_filters_select_as_the_api_does(filled, tmp_path):
    out = tmp_path / "some.csv"
    result = run("--db", filled.server.sqlite_path, "--format", "csv", "--out", out, "--species", "littin1",
                 "--species", "engystomops pustulosus", "--start", "2026-04-20T06:00:00Z",
                 "--end", "2026-04-20T07:00:00+00:00", "--device-id", "pi-h02", "--min-confidence", "0.6")
    assert result.exit_code == 0 and result.output.startswith("csv: 2 detection(s)")
    assert set(pd.read_csv(out)["detection_id"]) == {filled.ids["tinamou"], filled.ids["tungara"]}
    result = run("--db", filled.server.sqlite_path, "--format", "dwca", "--out", tmp_path / "a.zip")
    assert "left out: 1 rejected by a guide, 1 without a scientific name" in result.output


def test_bad_input_is_refused_by_name_and_writes_nothing(filled, tmp_path):
    out = tmp_path / "never.csv"
    for args, named in (
        (["--start", "yesterday"], "'yesterday' is not an ISO-8601 time"),
        (["--start", "2026-04-21", "--end", "2026-04-20"], "Invalid value for '--end': end: 2026-04-20T00:00:00.000Z is not after start"),
        (["--min-confidence", "1.5"], "--min-confidence"),
        (["--status", "maybe"], "--status"),
    ):
        result = CliRunner().invoke(export, ["--db", str(filled.server.sqlite_path), "--format", "csv", "--out",
                                             str(out), *args])
        assert result.exit_code == 2 and named in result.output, result.output
    missing = CliRunner().invoke(export, ["--db", str(tmp_path / "nowhere.db"), "--format", "csv", "--out", str(out)])
    assert missing.exit_code == 1 and "no such file" in missing.output and not (tmp_path / "nowhere.db").exists()
    url = CliRunner().invoke(export, ["--db", str(filled.server.sqlite_path), "--format", "dwca", "--clips", "url",
                                      "--out", str(tmp_path / "x.zip")])
    assert url.exit_code == 1 and "base_url" in url.output
    assert not out.exists()
