"""Playing a detection's clip on the device's speaker, when it has one."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def output_device() -> str | None:
    """The default output device's name, or None when the device has no speaker or card."""
    try:
        import sounddevice as sd

        info = sd.query_devices(kind="output")
    except Exception:  # no PortAudio output at all (PortAudioError, ValueError, OSError)
        return None
    if not info or int(info.get("max_output_channels", 0)) < 1:
        return None
    return str(info["name"])


def play_clip(path: Path | str) -> float:
    """Play a clip to the end (call from a worker thread); return its length in seconds.

    Raises:
        OSError / RuntimeError: the file is gone or the output failed (the caller says so).
    """
    import sounddevice as sd
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    sd.play(data, rate)
    sd.wait()
    return len(data) / rate
