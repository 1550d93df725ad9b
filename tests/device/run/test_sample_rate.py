"""Audio recorded below what the bundle's branches can use is refused, naming its rate and the minimum.

The low-rate files are real recordings written at absurd rates: the first samples of a frog
call labelled 1 Hz (what a broken converter writes), and the same call resampled to 4 kHz
(a telephone-band copy, whose 2 kHz Nyquist limit cuts off most of the call). The 9 kHz Little
Tinamou recording stays above the default minimum of 8 kHz and is analysed.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from tests.device.engine.bundle_variants import home_variant
from tests.helpers import query, run_explorer

FROG = "audio/birdclef_train_audio/3.ogg"  # 32 kHz
TINAMOU = "audio/birds/Cryp.soui.wav"  # 9 kHz, littin1


@pytest.fixture
def low_rate(shared_data, tmp_path):
    """{'one_hz': path, 'four_khz': path}: the frog call at 1 Hz and at 4000 Hz."""
    audio, rate = sf.read(shared_data / FROG, dtype="float32")
    folder = tmp_path / "low"
    folder.mkdir()
    sf.write(folder / "one_hz.wav", audio[:10], 1)  # 10 "seconds": two windows before the fix
    sf.write(folder / "four_khz.wav", resample_poly(audio, 4000, rate).astype(np.float32), 4000)
    return {"one_hz": folder / "one_hz.wav", "four_khz": folder / "four_khz.wav"}


def test_analyze_refuses_each_low_rate_file_and_still_writes_the_others(device_home, shared_data, low_rate, tmp_path):
    out = tmp_path / "out.csv"
    result = run_explorer("analyze", str(low_rate["one_hz"]), str(shared_data / TINAMOU), str(low_rate["four_khz"]),
                          "--out", str(out), home=device_home)
    assert result.returncode == 1
    for path, rate in ((low_rate["one_hz"], 1), (low_rate["four_khz"], 4000)):
        assert f"skipped {path}: {path}: sample rate {rate} Hz is below 8000 Hz" in result.stderr
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert [r[0] for r in rows] == ["Cryp.soui_5", "Cryp.soui_10"]  # 8 s at 9 kHz, analysed


def test_run_refuses_a_low_rate_file_and_stores_nothing(device_home, low_rate):
    result = run_explorer("run", "--source", str(low_rate["four_khz"]), "--headless", home=device_home)
    assert result.returncode == 1
    assert f"{low_rate['four_khz']}: sample rate 4000 Hz is below 8000 Hz" in result.stderr
    assert "windows" not in result.stdout  # refused at start, before a tour or a pipeline
    if device_home.database.exists():
        assert query(device_home.database, "SELECT count(*) FROM detection") == [(0,)]
        assert query(device_home.database, "SELECT count(*) FROM tour") == [(0,)]


def test_the_watch_folder_marks_low_rate_files_failed_with_the_reason(device_home, shared_data, low_rate, tmp_path):
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for path in low_rate.values():
        shutil.copy(path, inbox / path.name)
    shutil.copy(shared_data / TINAMOU, inbox / "tinamou.wav")
    result = run_explorer("run", "--source", str(inbox), "--out", str(outbox), "--once", home=device_home)
    assert result.returncode == 0, result.stderr
    rows = {p.rsplit("/", 1)[1]: (s, d) for p, s, d in query(device_home.database,
                                                             "SELECT path, status, detail FROM watched_file")}
    assert rows["tinamou.wav"] == ("done", None)
    assert rows["one_hz.wav"][0] == "failed" and "sample rate 1 Hz is below 8000 Hz" in rows["one_hz.wav"][1]
    assert rows["four_khz.wav"][0] == "failed" and "sample rate 4000 Hz is below 8000 Hz" in rows["four_khz.wav"][1]
    assert sorted(p.name for p in outbox.iterdir()) == ["tinamou.csv"]


def test_a_bundle_that_needs_more_refuses_what_the_default_allows(device_home, shared_data, tmp_path):
    def need_16_khz(raw):
        raw["branches"][0]["input"]["min_sample_rate_hz"] = 16000

    bundle = home_variant(device_home, tmp_path / "wideband", "9.1.0", edit=need_16_khz)
    result = run_explorer("analyze", str(shared_data / TINAMOU), str(shared_data / FROG), "--bundle", str(bundle),
                          "--out", str(tmp_path / "out.csv"), home=device_home)
    assert result.returncode == 1
    assert "sample rate 9000 Hz is below 16000 Hz, the lowest rate this bundle's branches can use" in result.stderr
    assert "3.ogg: 8 windows" in result.stderr  # 32 kHz is still fine
