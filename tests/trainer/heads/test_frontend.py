"""The torch log-mel the heads train on (trainer/torch_frontend.py) against the device's own front
end: onnxruntime running `exporter.frontend.build_front_end_model(default_params(), 160000)`.

Measured (torch 2.14.1 CPU, onnxruntime 1.32), max abs difference in dB over the 64 x 501 bins
of each 5 s window:

| window | float64 torch | float32 torch |
|---|---|---|
| El Silencio soundscape H02 (birds, OGG 32 kHz), 20-25 s | 9.5e-7 | 3.8e-6 |
| Allobates femoralis (BirdCLEF OGG 32 kHz), 10-15 s | 1.9e-6 | 1.5e-5 |
| Pristimantis gaigei (quiet: peak 0.0097, WAV 44.1 kHz resampled) | 3.8e-6 | 3.1e-5 |
| Dendropsophus ebraccatus (WAV 48 kHz resampled) | 3.7e-6 | 7.4e-4 |
| Phaethornis longirostris (1.7 s at 22.5 kHz, zero-padded: the top_db floor) | 3.8e-6 | 1.4e-4 |

float64 torch rounded to float32 equals the graph's float32 output in every bin (the graph also
computes in float64; what is left is the output's own rounding, one float32 ulp, 3.8e-6 at
60 dB). float32 torch is off where the exporter's module docstring says float32 must be: bands
50-80 dB below a loud frame's peak.
"""

from __future__ import annotations


import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporter.frontend import build_front_end_model, default_params
from tests.trainer.heads.common import read_window
from trainer.torch_frontend import LogMel

RATE = 32_000
WINDOW = 160_000
FLOAT64_BOUND_DB = 5e-6
"""Measured 3.8e-6 (one float32 ulp of the graph's output near 60 dB)."""
FLOAT32_BOUND_DB = 1e-3
"""Measured 7.4e-4 (the 48 kHz frog); the exporter measured 1.1e-3 to 1.2e-3 for other float32 STFTs."""

WINDOWS = [  # (path under shared data, start in seconds): the table in the module docstring
    ("audio/elsilencio_soundscape/H02_20230420_074000.ogg", 20.0),
    ("audio/birdclef_train_audio/3.ogg", 10.0),
    ("audio/colombian_frogs/Pristimantis_gaigei.wav", 0.0),
    ("audio/colombian_frogs/Dendropsophus_ebraccatus.wav", 0.0),
    ("audio/birds/Phae.long2.wav", 0.0),
]


@pytest.fixture(scope="module")
def windows(shared_data) -> np.ndarray:
    return np.stack([read_window(shared_data, path, start) for path, start in WINDOWS])


@pytest.fixture(scope="module")
def device_mel(windows) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = build_front_end_model(default_params(), WINDOW)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["mel"], {"waveform": windows})[0]


def test_windows_are_real_and_cover_the_cases(windows):
    peaks = np.abs(windows).max(axis=1)
    assert peaks.min() > 0 and peaks[2] < 0.01  # every window has sound; the third is quiet
    assert np.all(windows[4, 60_000:] == 0)  # the short file is padded with digital silence


def test_float64_equals_the_device_graph_to_its_float32_rounding(windows, device_mel):
    mel = LogMel(default_params())(torch.from_numpy(windows).double(), dtype=torch.float64).numpy()
    assert mel.dtype == np.float64 and mel.shape == device_mel.shape == (len(WINDOWS), 64, 501)
    error = np.abs(mel - device_mel)
    assert error.max() < FLOAT64_BOUND_DB, error.max(axis=(1, 2))
    assert np.all(error <= np.spacing(np.abs(device_mel).astype(np.float32)))  # within one ulp


def test_float32_is_within_the_measured_bound(windows, device_mel):
    mel = LogMel(default_params())(torch.from_numpy(windows))
    assert mel.dtype == torch.float32
    error = np.abs(mel.numpy() - device_mel)
    assert error.max() < FLOAT32_BOUND_DB, error.max(axis=(1, 2))
    # The floor: 80 dB below each window's own peak, per window, as on the device.
    peaks = mel.amax(dim=(1, 2))
    assert torch.allclose(mel.amin(dim=(1, 2))[4], peaks[4] - 80.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_batch_of_three_equals_three_singles(windows, dtype):
    front_end = LogMel(default_params())
    batch = torch.from_numpy(windows[:3]).to(dtype)
    together = front_end(batch, dtype=dtype)
    one_by_one = torch.cat([front_end(batch[i : i + 1], dtype=dtype) for i in range(3)])
    assert torch.equal(together, one_by_one)


def test_autocast_does_not_lower_the_front_ends_precision(windows):
    front_end = LogMel(default_params())
    x = torch.from_numpy(windows[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = front_end(x)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, front_end(x))
