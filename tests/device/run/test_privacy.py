"""The privacy filter on real speech over real frog calls, through `explorer run` (issue 10).

Real audio only: the one speech recording in the shared data (negatives/whisper_jfk_speech.flac,
11 s). Its FIRST half chose `[privacy] human_vocal_threshold` (device/config.py,
HUMAN_VOCAL_THRESHOLD, with every number measured); every test here uses the SECOND half
(5.5-11 s), which fitted nothing. The non-speech side is not held out: the threshold sits above
every non-speech recording of the shared data by construction, so the no-speech cases here show
the wiring (clips kept), not a held-out false-alarm rate.

Levels are the speech's RMS relative to the frog recording's over the span they share. Over this
frog (Colostethus inguinalis, one 4 s window) BirdNET's Human vocal for the held-out speech is
0.72, 0.73, 0.63 and 0.088 at +10, 0, -10 and -20 dB (measured): all over the threshold, -20 dB
narrowly. That is not true of every frog call: over the 13 in-space frog calls the second half
at -20 dB scored over 0.05 in 3 of 13 windows (at -10 dB in 9, at 0 dB in 13; see
HUMAN_VOCAL_THRESHOLD). Speech 20 dB under a calling frog is mostly masked for BirdNET, at any
threshold the non-speech recordings allow.

The loud-sound option: the shared data holds no engine, siren, gun or fireworks recording.
Measured on its real negatives, BirdNET's Engine, Gun and Fireworks stay under 0.11 on rain and
wind, but Fireworks scores 0.922 on the thunder (Gun 0.048, Engine 0.106), so that test mixes the
real thunder over the frog: the closest honest case of "a bang BirdNET takes for fireworks".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.analysis import file_windows
from device.audio.resample import resample
from device.bundle.verify import verify_bundle
from device.config import HUMAN_VOCAL_THRESHOLD
from device.contracts.clip import ClipRequest
from device.domain import Window, utc_now
from device.engine.engine import Engine
from device.store import Store
from exporter.birdnet.restrict import CONTEXT_CLASSES
from tests.helpers import query, run_explorer

SPEECH = "audio/negatives/whisper_jfk_speech.flac"
FROG = "audio/colombian_frogs/Colostethus_inguinalis.wav"  # 21038, 4 s at 48 kHz: one window
FROG_5S = "audio/colombian_frogs/Boana_pugnax.wav"  # 555142, 6.5 s at 44.1 kHz: calls throughout
RAIN = "audio/negatives/minetest_sounds_rain_light.ogg"
THUNDER = "audio/negatives/minetest_sounds_thunder_01.ogg"
NON_SPEECH = ("negatives", "insects", "mammals", "colombian_frogs", "birds")
"""Folders whose every non-speech recording is checked against the threshold (the rest of the
shared data scored at most 0.024: see HUMAN_VOCAL_THRESHOLD)."""


def read(path: Path, rate: int | None = None) -> tuple[np.ndarray, int]:
    """A recording as mono float32, at `rate` when given (the device's resampler)."""
    audio, native = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate is not None and rate != native:
        return resample(audio, native, rate), rate
    return audio, native


def held_out_speech(shared_data: Path, rate: int) -> np.ndarray:
    """The speech recording's second half (it fitted no threshold), at `rate`."""
    audio, native = read(shared_data / SPEECH)
    return resample(audio[len(audio) // 2:], native, rate)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def mix(base: np.ndarray, over: np.ndarray, level_db: float, at: int = 0) -> np.ndarray:
    """`over` added into `base` from sample `at`, its RMS `level_db` relative to `base`'s over the
    span they share; scaled down together if the sum would clip."""
    span = min(len(over), len(base) - at)
    gain = rms(base[at:at + span]) / rms(over[:span]) * 10 ** (level_db / 20)
    out = base.astype(np.float32).copy()
    out[at:at + span] += gain * over[:span]
    return out / max(1.0, float(np.abs(out).max()))


def write(path: Path, audio: np.ndarray, rate: int) -> Path:
    sf.write(str(path), audio, rate, subtype="FLOAT")
    return path


def label_of(home, scientific_name: str) -> str:
    manifest = verify_bundle(home.active_bundle(), home.trusted_keys).manifest
    return next(label.primary_label for label in manifest.labels if label.scientific_name == scientific_name)


def run_file(home, path: Path, *flags: str):
    result = run_explorer("run", "--source", str(path), "--headless", *flags, home=home)
    assert result.returncode == 0, result.stderr
    return result


def detections(home) -> list[dict]:
    rows = query(home.database, "SELECT detection_id, label, start_s, clip_withheld, context_scores FROM detection "
                                "ORDER BY start_s, label")
    return [dict(zip(("id", "label", "start_s", "withheld", "context"), row)) for row in rows]


def clip_files(home) -> list[Path]:
    return sorted(Path(home.clips).rglob("*.flac"))


def sent_payloads(home) -> dict[str, dict]:
    rows = query(home.database, "SELECT payload FROM outbox_message WHERE kind = 'detection'")
    return {p["detection_id"]: p for p in (json.loads(row[0]) for row in rows)}


def wanted_clips_after_a_verdict_and_a_request(home, detection_ids: list[str]) -> list:
    """A guide confirms each detection and the server asks for each clip: what the uploader
    would then send."""
    with Store.open(home.database) as store:
        for detection_id in detection_ids:
            store.add_feedback(detection_id, "confirm")
        store.apply_clip_messages([], [ClipRequest("explorer-dev", utc_now(), tuple(detection_ids))], utc_now())
        return store.clip_upload_candidates(100)


def test_the_threshold_withholds_held_out_speech_and_no_non_speech_recording(default_home, shared_data):
    engine = Engine(verify_bundle(default_home.active_bundle(), default_home.trusted_keys), threads=2)
    speech, rate = read(shared_data / SPEECH)
    half = speech[len(speech) // 2:]
    # Every whole 5 s window of the held-out half, a quarter second apart (5.5-10.5 s ... 6-11 s).
    starts = range(0, len(half) - 5 * rate + 1, rate // 4)
    held_out = [engine.predict(Window(half[s:s + 5 * rate], rate, s / rate, utc_now(), "speech")).context
                for s in starts]
    assert len(held_out) == 3
    assert min(c["Human vocal"] for c in held_out) > HUMAN_VOCAL_THRESHOLD  # measured 0.849-0.880

    highest = {}
    for folder in NON_SPEECH:
        for path in sorted((shared_data / "audio" / folder).iterdir()):
            if path.name == Path(SPEECH).name:
                continue
            scores = [engine.predict(w).context["Human vocal"] for w in file_windows(path, hop_s=2.5)]
            highest[f"{folder}/{path.name}"] = max(scores)
    assert len(highest) == 18 + 13 + 4 + 53 + 7  # every non-speech recording of those folders
    over = {name: score for name, score in highest.items() if score > HUMAN_VOCAL_THRESHOLD}
    assert not over, over  # measured: the highest is a bee's buzz, 0.042


@pytest.mark.parametrize("level_db", [10, 0, -10, -20])
def test_speech_over_a_frog_keeps_the_detection_and_no_audio(default_home, shared_data, tmp_path, level_db):
    frog, rate = read(shared_data / FROG)
    audio = mix(frog, held_out_speech(shared_data, rate), level_db)
    result = run_file(default_home, write(tmp_path / f"speech_{level_db}dB.wav", audio, rate))

    found = detections(default_home)
    frog_label = label_of(default_home, "Colostethus inguinalis")
    assert frog_label in {d["label"] for d in found}  # the frog is still detected
    assert all(d["withheld"] == "privacy" for d in found)  # its only window held speech
    assert clip_files(default_home) == [] and query(default_home.database, "SELECT count(*) FROM clip") == [(0,)]
    sent = sent_payloads(default_home)
    assert set(sent) == {d["id"] for d in found}  # stored and synced, without audio
    for payload in sent.values():
        assert payload["clip_withheld"] == "privacy"
        assert payload["context_scores"]["Human vocal"] > HUMAN_VOCAL_THRESHOLD
        assert set(payload["context_scores"]) == set(CONTEXT_CLASSES) and payload["label"] not in CONTEXT_CLASSES
    assert f"0 clips, {len(found)} withheld for privacy" in result.stdout
    assert wanted_clips_after_a_verdict_and_a_request(default_home, list(sent)) == []  # nothing to upload, ever


def test_without_speech_the_same_frog_keeps_its_clip(default_home, shared_data, tmp_path):
    frog, rate = read(shared_data / FROG)
    result = run_file(default_home, write(tmp_path / "frog.wav", frog, rate))
    found = detections(default_home)
    frog_label = label_of(default_home, "Colostethus inguinalis")
    [det] = [d for d in found if d["label"] == frog_label]
    assert det["withheld"] is None and json.loads(det["context"])["Human vocal"] < 0.01
    assert len(clip_files(default_home)) == len(found) >= 1
    assert sent_payloads(default_home)[det["id"]]["clip_withheld"] is None
    assert f"{len(found)} clips, 0 withheld for privacy" in result.stdout
    wanted = wanted_clips_after_a_verdict_and_a_request(default_home, [det["id"]])
    assert [c.detection_id for c in wanted] == [det["id"]]  # the upload side would send this one


def five_seconds(shared_data: Path, name: str, rate: int = 44_100) -> np.ndarray:
    audio, _ = read(shared_data / name, rate)
    assert len(audio) >= 5 * rate
    return audio[: 5 * rate]


@pytest.mark.parametrize("order, withheld", [
    (("speech", "frog"), "privacy"),  # the window before the event opened
    (("frog", "speech"), "privacy"),  # the window that closed it
    (("frog", "rain", "speech"), None),  # a window later: not next to it, the clip is kept
])
def test_a_detection_next_to_speech_keeps_no_audio_and_one_further_away_does(
        default_home, shared_data, tmp_path, order, withheld):
    """Non-overlapping 5 s windows (--hop 5), one real recording in each."""
    parts = {"speech": held_out_speech(shared_data, 44_100)[: 5 * 44_100],
             "frog": five_seconds(shared_data, FROG_5S), "rain": five_seconds(shared_data, RAIN)}
    audio = np.concatenate([parts[name] for name in order])
    run_file(default_home, write(tmp_path / ("_".join(order) + ".wav"), audio, 44_100), "--hop", "5")

    frog_at = 5.0 * order.index("frog")
    [frog] = [d for d in detections(default_home) if d["label"] == label_of(default_home, "Boana pugnax")]
    assert frog["start_s"] == frog_at and frog["withheld"] == withheld
    clips = query(default_home.database, "SELECT detection_id FROM clip")
    assert (frog["id"],) in clips if withheld is None else (frog["id"],) not in clips
    assert sent_payloads(default_home)[frog["id"]]["clip_withheld"] == withheld


def test_the_watch_folder_marks_what_a_person_was_heard_next_to(default_home, shared_data, tmp_path):
    """The watch folder writes no clips at all; its detections still say theirs is withheld."""
    frog, rate = read(shared_data / FROG)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write(inbox / "speech_0dB.wav", mix(frog, held_out_speech(shared_data, rate), 0), rate)
    result = run_explorer("run", "--source", str(inbox), "--once", "--out", str(tmp_path / "out"), home=default_home)
    assert result.returncode == 0, result.stderr
    found = detections(default_home)
    assert found and all(d["withheld"] == "privacy" for d in found)
    assert all(p["clip_withheld"] == "privacy" for p in sent_payloads(default_home).values())
    assert clip_files(default_home) == []


def thunder_over_the_frog(shared_data: Path, tmp_path: Path) -> Path:
    """Boana pugnax twice (13 s), the real thunder (5.4 s) over its first 5 s at +20 dB: BirdNET's
    Fireworks 0.73 in the first window, while the frog still scores 0.93 there (measured)."""
    frog, rate = read(shared_data / FROG_5S)
    thunder, _ = read(shared_data / THUNDER, rate)
    return write(tmp_path / "thunder.wav", mix(np.concatenate([frog, frog]), thunder, 20), rate)


def test_off_by_default_a_frog_calling_through_thunder_is_detected_from_the_start(default_home, shared_data, tmp_path):
    result = run_file(default_home, thunder_over_the_frog(shared_data, tmp_path), "--hop", "5")
    [frog] = [d for d in detections(default_home) if d["label"] == label_of(default_home, "Boana pugnax")]
    assert frog["start_s"] == 0.0 and json.loads(frog["context"])["Fireworks"] > 0.5
    assert "suppressed" not in result.stdout


def test_suppression_opens_no_detection_while_thunder_is_loud(default_home, shared_data, tmp_path):
    (default_home.root / "config.toml").write_text("[privacy]\nsuppress_while_loud = true\n")
    result = run_file(default_home, thunder_over_the_frog(shared_data, tmp_path), "--hop", "5")
    found = detections(default_home)
    assert found and min(d["start_s"] for d in found) == 5.0  # nothing opened in the thunder's window
    [frog] = [d for d in found if d["label"] == label_of(default_home, "Boana pugnax")]
    assert json.loads(frog["context"])["Fireworks"] < 0.5  # its windows are the quiet ones
    assert "1 windows suppressed while loud" in result.stdout
