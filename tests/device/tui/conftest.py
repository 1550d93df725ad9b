"""Fixtures for the guide's screen: a real bundle on real recordings, driven by Textual's pilot.

`trail_recording` is a real 72 s "walk" made of real calls from ../shared/data (five frogs
and a Little Tinamou, 3 s of silence between them), named with a fixed start time so every
detection's time, and so every snapshot, is the same on each run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TRAIL_PARTS = (  # (file under shared/data/audio, primary_label)
    ("colombian_frogs/Boana_boans.wav", "555086"),
    ("birds/Cryp.soui.wav", "littin1"),
    ("colombian_frogs/Engystomops_pustulosus.wav", "65448"),
    ("colombian_frogs/Rhinella_horribilis.wav", "517119"),
    ("colombian_frogs/Leucostethus_fraterdanieli.wav", "787625"),
    ("colombian_frogs/Allobates_niputidea.wav", "64862"),
)
TRAIL_RATE = 44100
FROG = "audio/birdclef_train_audio/3.ogg"  # Allobates femoralis (21211), 38 s


@pytest.fixture(scope="session")
def trail_recording(shared_data, tmp_path_factory) -> Path:
    """Real calls in a row, as one WAV whose name fixes its start time (2024-03-12 06:30:00 UTC)."""
    from scipy.signal import resample_poly

    parts = []
    for relative, _ in TRAIL_PARTS:
        audio, rate = sf.read(shared_data / "audio" / relative, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != TRAIL_RATE:
            audio = resample_poly(audio, TRAIL_RATE, rate).astype(np.float32)
        parts += [audio, np.zeros(3 * TRAIL_RATE, np.float32)]
    path = tmp_path_factory.mktemp("trail") / "trail_20240312_063000.wav"
    sf.write(path, np.concatenate(parts), TRAIL_RATE)
    return path


@pytest.fixture
def runtime_factory(device_home):
    """Builds `TuiRuntime`s over a real bundle (the demo) and closes them after the test."""
    from device.audio.files import FileSource
    from device.config import Settings
    from device.engine.loader import load_engine
    from device.tui.run import TuiRuntime

    made = []
    engine = load_engine(device_home, None, 1)

    def make(recording: Path, live: bool = False, realtime: bool = False, tour_name: str = "Morning walk",
             settings: Settings | None = None, **kwargs):
        source = FileSource(recording, realtime=realtime)
        runtime = TuiRuntime(device_home, settings or Settings(), engine, source, live=live, tour_name=tour_name, **kwargs)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


