"""Fixtures for the audio tests: the real recordings, and the virtual microphone helper."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2]


def _load_pulse():
    """Import tests/pulse.py as `pulse` without putting tests/ on sys.path: there,
    tests/device (no __init__.py) would shadow the real `device` package for any later import."""
    if "pulse" not in sys.modules:
        spec = importlib.util.spec_from_file_location("pulse", TESTS / "pulse.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["pulse"] = module
        spec.loader.exec_module(module)
    return sys.modules["pulse"]


virtual_mic = _load_pulse().virtual_mic  # the session fixture, visible to every test here


@pytest.fixture(scope="session")
def pulse():
    """tests/pulse.py: feed_recording, unload_pipe_source, ensure_virtual_mic."""
    return _load_pulse()


@pytest.fixture(scope="session")
def audio_dir(shared_data: Path) -> Path:
    """The real recordings (../shared/data/audio; read-only)."""
    return shared_data / "audio"


@pytest.fixture(scope="session")
def soundscape(audio_dir: Path) -> Path:
    """A real 60 s El Silencio soundscape, 32 kHz mono OGG, named with its start time."""
    return audio_dir / "elsilencio_soundscape" / "H02_20230420_074000.ogg"
