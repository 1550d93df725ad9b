"""One BirdNET conversion per test session, shared by every BirdNET test (about 1-2 s)."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.birdnet.convert import ConversionReport, convert_birdnet
from exporter.birdnet.runners import load_audio_48k, windows_3s

SOUNDSCAPE = "audio/elsilencio_soundscape/H02_20230420_074000.ogg"


@pytest.fixture(scope="session")
def birdnet(tmp_path_factory) -> ConversionReport:
    return convert_birdnet(tmp_path_factory.mktemp("birdnet") / "birdnet.onnx")


@pytest.fixture(scope="session")
def soundscape_windows(shared_data) -> np.ndarray:
    """The first four 3 s windows of the real El Silencio soundscape, at 48 kHz."""
    return windows_3s(load_audio_48k(shared_data / SOUNDSCAPE), 4)
