"""Finding the microphone by 'default', index or name, against PortAudio's real device list."""

from __future__ import annotations

import pytest

from device.audio.mic import find_input_device, list_input_devices
from device.audio.types import AudioError


def test_the_virtual_microphone_is_listed_as_an_input(virtual_mic) -> None:
    devices = list_input_devices()
    names = [d.name for d in devices]
    assert "pulse" in names and "default" in names
    assert all(d.max_input_channels > 0 and d.default_samplerate_hz > 0 for d in devices)
    assert sum(d.is_default for d in devices) == 1


def test_default_index_and_name_find_the_same_kind_of_device(virtual_mic) -> None:
    default = find_input_device("default")
    assert default.is_default
    pulse = find_input_device("PULSE")  # case-insensitive
    assert pulse.name == "pulse"
    assert find_input_device(pulse.index) == pulse
    assert find_input_device(str(pulse.index)) == pulse
    assert find_input_device("puls") == pulse  # a unique substring


def test_an_unknown_name_lists_the_available_inputs(virtual_mic) -> None:
    with pytest.raises(AudioError) as error:
        find_input_device("USB Audio Device")
    message = str(error.value)
    assert "'USB Audio Device'" in message and "available inputs" in message and "'pulse'" in message


def test_an_ambiguous_name_or_a_bad_index_is_refused(virtual_mic) -> None:
    with pytest.raises(AudioError, match="matches 2 inputs"):
        find_input_device("u")  # in both 'pulse' and 'default'
    with pytest.raises(AudioError, match="no input device has this index"):
        find_input_device(999)
