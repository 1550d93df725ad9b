"""A bundle that gives NaN is never read as "nothing heard": the window is marked, the cell empty.

The bundle is the real demo bundle with its branch's scores multiplied by NaN and signed again
(`bundle_variants`): it verifies, loads and runs, as a broken export shipped to a device would.
"""

from __future__ import annotations

import csv
import math

import numpy as np

from device.analysis import file_windows
from device.bundle.verify import verify_bundle
from device.config import DetectionSettings, Settings
from device.detect.detector import Detector
from device.engine.engine import Engine
from tests.device.engine.bundle_variants import home_variant
from tests.helpers import query, run_explorer

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis (21211), 38.3 s: 8 windows of 5 s


def every_label_at_zero(engine) -> Settings:
    """Thresholds of 0 for every label: a score of 0 would be "heard", a missing one must not be."""
    return Settings(detection=DetectionSettings(thresholds={label: 0.0 for label in engine.labels}))


def test_nan_scores_mark_the_window_and_open_no_detection(device_home, shared_data, tmp_path):
    healthy = Engine(verify_bundle(device_home.active_bundle(), device_home.trusted_keys))
    poisoned = Engine(verify_bundle(home_variant(device_home, tmp_path / "nan", "9.0.0", nan_branch=0),
                                    device_home.trusted_keys))
    windows = list(file_windows(shared_data / FROG))

    heard = Detector.for_engine(healthy, every_label_at_zero(healthy))
    assert len(heard.push(healthy.predict(windows[0])).opened) == len(healthy.labels)  # a finite 0 would be heard

    detector = Detector.for_engine(poisoned, every_label_at_zero(poisoned))
    for window in windows:
        prediction = poisoned.predict(window)
        assert prediction.unscored_branches == ("tiny",) and prediction.failed_branches == ()
        assert np.isnan(prediction.scores).all()  # missing, not 0
        assert "tiny" not in prediction.branch_scores
        assert detector.push(prediction).opened == []
    assert detector.flush() == []
    assert poisoned.counters.nonfinite_scores == len(windows) and poisoned.counters.branch_failures == 0


def test_analyze_leaves_unscored_cells_empty_and_names_their_rows(device_home, shared_data, tmp_path):
    bundle = home_variant(device_home, tmp_path / "nan", "9.0.0", nan_branch=0)
    out = tmp_path / "frog.csv"
    result = run_explorer("analyze", str(shared_data / FROG), "--bundle", str(bundle), "--out", str(out),
                          home=device_home)
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert len(header) == 16 and [r[0] for r in rows] == [f"3_{5 * i}" for i in range(1, 9)]
    assert all(cell == "" for row in rows for cell in row[1:])  # never "0.000000"
    assert "8 windows could not be scored (tiny gave NaN/infinity or failed)" in result.stderr
    assert "3_5, 3_10, 3_15, 3_20, 3_25, 3_30, 3_35, 3_40" in result.stderr
    read = np.genfromtxt(out, delimiter=",", skip_header=1)[:, 1:]  # what a reader of the CSV sees
    assert read.shape == (8, 15) and np.isnan(read).all()


def test_a_run_counts_unscored_windows_in_its_report_and_stores_nothing_from_them(device_home, shared_data, tmp_path):
    bundle = home_variant(device_home, tmp_path / "nan", "9.0.0", nan_branch=0)
    engine = Engine(verify_bundle(bundle, device_home.trusted_keys))
    zeros = ", ".join(f'"{label}" = 0.0' for label in engine.labels)
    device_home.config_file.write_text(f"[detection]\nthresholds = {{ {zeros} }}\n")
    result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", "--hop", "5",
                          "--bundle", str(bundle), home=device_home)
    assert result.returncode == 0, result.stderr
    assert "8 windows, 38 s of audio" in result.stdout
    assert "8 windows not scored (NaN/infinity or a failed branch; 0 branch failures)" in result.stdout
    assert "branch tiny gave NaN or infinite scores on window 0" in result.stderr
    assert query(device_home.database, "SELECT count(*) FROM detection") == [(0,)]


def test_a_healthy_run_says_nothing_about_unscored_windows(device_home, shared_data):
    result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)
    assert result.returncode == 0, result.stderr
    assert "not scored" not in result.stdout and "NaN" not in result.stderr
    assert not math.isnan(float(query(device_home.database, "SELECT max(confidence) FROM detection")[0][0]))


def test_an_optional_branch_that_gives_nan_or_fails_is_left_out_and_named(device_home, shared_data, tmp_path):
    healthy = Engine(verify_bundle(device_home.active_bundle(), device_home.trusted_keys))
    windows = list(file_windows(shared_data / FROG))
    expected = [healthy.predict(w).scores for w in windows]
    for spoiler, failed in (("nan", ()), ("fail", ("tiny_b",))):
        bundle = home_variant(device_home, tmp_path / spoiler, "9.0.1", optional_branch=spoiler)
        engine = Engine(verify_bundle(bundle, device_home.trusted_keys))
        assert engine.branch_names == ("tiny", "tiny_b")
        for window, scores in zip(windows, expected):
            prediction = engine.predict(window)
            assert prediction.unscored_branches == ("tiny_b",) and prediction.failed_branches == failed
            np.testing.assert_array_equal(prediction.scores, scores)  # fused from the required branch alone
            assert set(prediction.branch_scores) == {"tiny"}
        assert engine.counters.branch_failures == (len(windows) if failed else 0)
        assert engine.counters.nonfinite_scores == (0 if failed else len(windows))
