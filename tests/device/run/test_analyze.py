"""`explorer analyze`: the BirdCLEF submission format is a contract."""

from __future__ import annotations

import csv
import math

import numpy as np
import soundfile as sf

from device.bundle.manifest import read_manifest
from tests.helpers import run_explorer

SOUNDSCAPE = "audio/elsilencio_soundscape/H02_20230420_074000.ogg"
FROG = "audio/birdclef_train_audio/3.ogg"


def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def test_a_soundscape_gives_twelve_rows_in_the_submission_format(device_home, shared_data, tmp_path):
    out = tmp_path / "submission.csv"
    result = run_explorer("analyze", str(shared_data / SOUNDSCAPE), "--out", str(out), home=device_home)
    assert result.returncode == 0, result.stderr
    header, rows = read_csv(out)
    manifest = read_manifest(device_home.active_bundle())
    assert header == ["row_id", *manifest.label_ids]
    assert [r[0] for r in rows] == [f"H02_20230420_074000_{5 * i}" for i in range(1, 13)]
    values = np.array([[float(x) for x in r[1:]] for r in rows])
    assert values.shape == (12, len(manifest.label_ids))
    assert ((values >= 0) & (values <= 1)).all()


def test_the_last_partial_window_is_padded_and_gets_its_own_row(device_home, shared_data, tmp_path):
    out = tmp_path / "frog.csv"
    assert run_explorer("analyze", str(shared_data / FROG), "--out", str(out), home=device_home).returncode == 0
    _, rows = read_csv(out)
    duration = sf.info(shared_data / FROG).duration  # 38.3 s -> rows ending 5 ... 40
    assert [r[0] for r in rows] == [f"3_{5 * i}" for i in range(1, math.ceil(duration / 5) + 1)]


def test_a_bad_file_is_named_skipped_and_the_others_still_written(device_home, shared_data, tmp_path):
    broken = tmp_path / "broken.ogg"
    broken.write_bytes((shared_data / FROG).read_bytes()[:2000])
    text = tmp_path / "notes.wav"
    text.write_text("these are field notes, not audio\n")
    out = tmp_path / "mixed.csv"
    result = run_explorer("analyze", str(text), str(shared_data / SOUNDSCAPE), str(broken), "--out", str(out),
                          home=device_home)
    assert result.returncode == 1
    assert "notes.wav" in result.stderr
    _, rows = read_csv(out)
    assert len([r for r in rows if r[0].startswith("H02_")]) == 12


def test_a_directory_is_expanded_to_its_recordings(device_home, shared_data, tmp_path):
    out = tmp_path / "birds.csv"
    result = run_explorer("analyze", str(shared_data / "audio/birds"), "--out", str(out), home=device_home)
    assert result.returncode == 0, result.stderr
    _, rows = read_csv(out)
    stems = {r[0].rsplit("_", 1)[0] for r in rows}
    assert stems == {p.stem for p in (shared_data / "audio/birds").iterdir()}


def test_no_active_bundle_is_a_clear_error(tmp_path, shared_data):
    result = run_explorer("analyze", str(shared_data / FROG), "--out", str(tmp_path / "x.csv"), home=tmp_path / "empty")
    assert result.returncode != 0
    assert "no active bundle" in result.stderr
    assert_points_at_the_default_model(result.stderr)


def assert_points_at_the_default_model(message: str) -> None:
    """A fresh data directory is pointed at the product's model first, the demo one last."""
    assert "explorer export default-bundle" in message, message
    demo = message.find("explorer export demo-bundle")
    assert demo == -1 or demo > message.find("explorer export default-bundle"), message


def test_run_on_a_fresh_home_points_at_the_default_model(tmp_path, shared_data):
    result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=tmp_path / "fresh")
    assert result.returncode == 1
    assert "no active bundle" in result.stderr
    assert_points_at_the_default_model(result.stderr)
