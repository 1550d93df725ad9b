"""The log-mel front end as one torch module, computed where the model trains (the GPU).

The same arithmetic as the device's in-graph front end (`exporter.frontend.log_mel_nodes`) and
its numpy reference (`exporter.frontend.log_mel_reference`): periodic Hann window, reflect
padding, power STFT, the slaney mel weights of `exporter.frontend.mel_filterbank`, dB with a
floor `top_db` below each window's loudest bin. The parameters are the manifest's
`LogMelParams`, so what a head was trained on is what its bundle states and the Pi computes;
`tests/trainer/heads/test_frontend.py` measures the difference against onnxruntime running the
device's graph.

Training runs it in float32 (the GPU's speed); `dtype=torch.float64` gives the deployed
float64 arithmetic (the reference outputs an exported head is checked against).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from exporter.frontend import LogMelParams, analysis_window, mel_filterbank


class LogMel(nn.Module):
    """[B, samples] waveform -> [B, n_mels, frames] log-mel in dB."""

    def __init__(self, params: LogMelParams):
        super().__init__()
        self.params = params
        self.register_buffer("window", torch.from_numpy(analysis_window(params)), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank(params)), persistent=False)

    def forward(self, waveform: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        p = self.params
        compute = dtype or (torch.float32 if waveform.dtype in (torch.float16, torch.bfloat16) else waveform.dtype)
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.to(compute)
            spectrum = torch.stft(x, n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.n_fft,
                                  window=self.window.to(compute), center=p.center, pad_mode=p.pad_mode,
                                  return_complex=True)
            power = spectrum.real.square() + spectrum.imag.square()
            mel = torch.matmul(self.mel_basis.to(compute), power)
            db = 10.0 * torch.log10(torch.clamp(mel, min=p.amin)) - 10.0 * math.log10(max(p.amin, p.ref))
            if p.top_db is not None:
                db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - p.top_db)
        return db.float() if dtype is None else db
