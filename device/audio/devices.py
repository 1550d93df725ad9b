"""Finding the microphone: the input devices PortAudio sees, and the one a setting names.

`settings.audio.microphone` (or `--mic`) is `default`, a PortAudio device index, or part of
a device name (case-insensitive), because names survive a reboot and indices do not: a USB
microphone plugged in after boot shifts every index after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import sounddevice as sd

from device.audio.types import AudioError


@dataclass(frozen=True)
class InputDevice:
    """One device PortAudio can capture from."""

    index: int
    """PortAudio's index; valid until the device list is rescanned."""
    name: str
    hostapi: str
    """e.g. ALSA; the same card may appear under several host APIs."""
    max_input_channels: int
    default_samplerate_hz: int
    """The rate the device runs at natively; capturing at it avoids resampling in the driver."""
    is_default: bool

    def describe(self) -> str:
        mark = " (default)" if self.is_default else ""
        return (
            f"[{self.index}] {self.name!r}{mark}: {self.hostapi}, "
            f"{self.max_input_channels} ch, {self.default_samplerate_hz} Hz"
        )


def rescan_devices() -> None:
    """Make PortAudio enumerate devices again (it lists them only once, at initialisation).

    Needed to see a USB microphone that was plugged back in. Pa_Terminate closes every open
    PortAudio stream of this process, so call it only with no stream open; this is the
    sounddevice maintainers' advice (spatialaudio/python-sounddevice#125).
    """
    sd._terminate()
    sd._initialize()


def _default_input_index() -> int:
    try:
        index = sd.default.device[0]
        if index is None or index < 0:
            index = sd.query_devices(kind="input")["index"]
        return int(index)
    except (sd.PortAudioError, ValueError, TypeError, KeyError):
        return -1


def list_input_devices() -> list[InputDevice]:
    """Every device with at least one input channel, in PortAudio's order."""
    default = _default_input_index()
    hostapis = sd.query_hostapis()
    found = []
    for info in sd.query_devices():
        if info["max_input_channels"] < 1:
            continue
        found.append(
            InputDevice(
                index=int(info["index"]),
                name=str(info["name"]),
                hostapi=str(hostapis[info["hostapi"]]["name"]),
                max_input_channels=int(info["max_input_channels"]),
                default_samplerate_hz=int(round(info["default_samplerate"])),
                is_default=int(info["index"]) == default,
            )
        )
    return found


def _available(devices: list[InputDevice]) -> str:
    if not devices:
        return "no input devices are visible (is a microphone plugged in, and is the sound server running?)"
    return "available inputs: " + "; ".join(d.describe() for d in devices)


def find_input_device(spec: str | int = "default") -> InputDevice:
    """The input device `spec` names.

    Args:
        spec: `default` (the system's default input), an index (int or digits), or a
            case-insensitive substring of a device name. An exact name wins over substrings.

    Raises:
        AudioError: Nothing matches, the match has no input channels, or a substring matches
            several devices; the message lists the available inputs.
    """
    devices = list_input_devices()
    text = str(spec).strip()
    if text.lower() == "default":
        chosen = [d for d in devices if d.is_default]
        if not chosen:
            raise AudioError(f"microphone 'default': there is no default input device; {_available(devices)}")
        return chosen[0]
    if text.lstrip("-").isdigit():
        chosen = [d for d in devices if d.index == int(text)]
        if not chosen:
            raise AudioError(f"microphone {text}: no input device has this index; {_available(devices)}")
        return chosen[0]
    wanted = text.lower()
    exact = [d for d in devices if d.name.lower() == wanted]
    if exact:
        return exact[0]
    partial = [d for d in devices if wanted in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise AudioError(f"microphone {text!r}: no input device name contains it; {_available(devices)}")
    raise AudioError(
        f"microphone {text!r}: matches {len(partial)} inputs, give more of the name or an index; "
        + _available(partial)
    )
