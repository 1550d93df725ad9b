"""`explorer run` on real recordings: detections, clips, outbox and the tour land in SQLite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from device.bundle.verify import verify_bundle
from tests.helpers import query, run_explorer

FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis (21211), 38 s, 32 kHz


def test_a_recording_ends_with_detections_clips_outbox_and_a_summary(device_home, shared_data):
    result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)
    assert result.returncode == 0, result.stderr
    assert "Allobates femoralis" in result.stdout
    assert "Species Spotting Rate" in result.stdout

    bundle = verify_bundle(device_home.active_bundle(), device_home.trusted_keys)
    rows = query(
        device_home.database,
        "SELECT detection_id, label, status, device_id, bundle_name, bundle_version, bundle_sha256, "
        "start_s, end_s, window_count, confidence, branch_scores, tour_id FROM detection",
    )
    labels = {row[1] for row in rows}
    assert "21211" in labels
    for det_id, label, status, device_id, name, version, sha, start_s, end_s, windows, conf, branches, tour in rows:
        assert status == "closed"
        assert (name, version, sha) == (bundle.manifest.name, bundle.manifest.version, bundle.sha256)
        assert 0.0 <= start_s < end_s <= 38.33
        assert windows >= 1 and 0.0 <= conf <= 1.0
        assert set(json.loads(branches)) == {b.name for b in bundle.manifest.branches}
        assert tour is not None
    # each closed detection carries exactly one outbox message with its final payload
    outbox = query(device_home.database, "SELECT detection_id, payload FROM outbox_message WHERE kind = 'detection'")
    assert sorted(d for d, _ in outbox) == sorted(r[0] for r in rows)
    for det_id, payload in outbox:
        assert json.loads(payload)["detection_id"] == det_id
    # the tour the run started is stopped again, and both its states are queued for the server
    tours = query(device_home.database, "SELECT tour_id, ended_on FROM tour")
    assert len(tours) == 1 and tours[0][1] is not None
    tour_messages = [json.loads(p) for (p,) in query(device_home.database,
                                                     "SELECT payload FROM outbox_message WHERE kind = 'tour' "
                                                     "ORDER BY created_on, rowid")]
    assert [(m["tour_id"], m["ended_on"] is not None) for m in tour_messages] == [(tours[0][0], False),
                                                                               (tours[0][0], True)]
    # each detection's clip is a FLAC of the peak window, taken from the recording itself
    clips = query(device_home.database, "SELECT detection_id, path, sample_rate_hz, start_s FROM clip")
    assert sorted(c[0] for c in clips) == sorted(r[0] for r in rows)
    source, rate = sf.read(shared_data / FROG, dtype="float32")
    for _, path, clip_rate, start_s in clips:
        clip, got_rate = sf.read(path, dtype="float32")
        assert got_rate == clip_rate == rate and sf.info(path).format == "FLAC"
        start = round(start_s * rate)
        expected = source[start : start + len(clip)]
        np.testing.assert_allclose(clip[: len(expected)], expected, atol=1 / 32768 + 1e-6)


@pytest.mark.parametrize("fmt,subtype,channels", [("FLAC", "PCM_24", 2), ("MP3", "MPEG_LAYER_III", 1), ("WAV", "FLOAT", 2)])
def test_any_format_and_channel_count_is_heard_alike(device_home, shared_data, tmp_path, fmt, subtype, channels):
    audio, rate = sf.read(shared_data / FROG, dtype="float32", frames=20 * 32000)
    data = np.stack([audio] * channels, axis=1) if channels > 1 else audio
    path = tmp_path / f"frog.{fmt.lower()}"
    sf.write(path, data, rate, format=fmt, subtype=subtype)
    result = run_explorer("run", "--source", str(path), "--headless", home=device_home)
    assert result.returncode == 0, result.stderr
    assert {r[0] for r in query(device_home.database, "SELECT label FROM detection")} >= {"21211"}


def test_an_odd_sample_rate_is_resampled_for_the_model(device_home, shared_data, tmp_path):
    from scipy.signal import resample_poly

    audio, rate = sf.read(shared_data / FROG, dtype="float32", frames=20 * 32000)
    path = tmp_path / "frog_22050.wav"
    sf.write(path, resample_poly(audio, 441, 640).astype(np.float32), 22050)
    result = run_explorer("run", "--source", str(path), "--headless", home=device_home)
    assert result.returncode == 0, result.stderr
    assert "21211" in {r[0] for r in query(device_home.database, "SELECT label FROM detection")}


def test_a_second_run_opens_a_new_tour_and_the_summary_covers_both(device_home, shared_data):
    for _ in range(2):
        assert run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home).returncode == 0
    tours = query(device_home.database, "SELECT tour_id FROM tour")
    assert len(tours) == 2
    summary = run_explorer("tour", "summary", "--all", "--json", home=device_home)
    assert summary.returncode == 0, summary.stderr
    data = json.loads(summary.stdout)
    per_tour = [t["unique_species"] for t in data["tours"]]
    assert len(per_tour) == 2 and per_tour[0] >= 1
    assert data["species_spotting_rate"] == pytest.approx(sum(per_tour) / 2)
    assert data["detection_count"] == len(query(device_home.database, "SELECT 1 FROM detection"))


def test_nan_and_inf_samples_are_zeroed_reported_and_the_run_goes_on(device_home, shared_data, tmp_path):
    audio, rate = sf.read(shared_data / FROG, dtype="float32", frames=20 * 32000)
    audio[1000:1100] = np.nan
    audio[50000:50010] = np.inf
    path = tmp_path / "frog_with_nan.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    result = run_explorer("run", "--source", str(path), "--headless", home=device_home)
    assert result.returncode == 0, result.stderr
    assert "110 NaN/Inf samples were replaced by zeros" in result.stderr
    confidences = [c for (c,) in query(device_home.database, "SELECT confidence FROM detection WHERE label = '21211'")]
    assert confidences and all(np.isfinite(confidences))


def test_a_start_sweeps_clip_files_an_interrupted_run_left_without_rows(device_home, shared_data):
    import os

    day = device_home.clips / "2026-04-20"
    day.mkdir(parents=True)
    orphan = day / "21211_00000000-0000-4000-8000-000000000000.flac"
    samples, rate = sf.read(shared_data / FROG, dtype="float32", frames=32000 * 3)
    sf.write(orphan, samples, rate, format="FLAC")
    an_hour_ago = orphan.stat().st_mtime - 3600
    os.utime(orphan, (an_hour_ago, an_hour_ago))

    result = run_explorer("run", "--source", str(shared_data / FROG), "--headless", home=device_home)

    assert result.returncode == 0, result.stderr
    assert not orphan.exists()
    assert "removed 1 clip file(s)" in result.stderr + result.stdout
    kept = [row[0] for row in query(device_home.database, "SELECT path FROM clip WHERE deleted_on IS NULL")]
    assert kept and all(os.path.exists(path) for path in kept)  # this run's own clips stay
