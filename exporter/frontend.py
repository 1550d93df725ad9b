"""The log-mel front end, built inside a branch's ONNX graph from its manifest parameters.

The device feeds raw mono float32 waveforms; feature extraction belongs to the bundle, so
the spectrogram a model was trained on is the one it sees on the Pi. The manifest's
`branch.input.front_end` dict is the one definition: `LogMelParams.from_manifest` reads
it and `log_mel_nodes` builds the subgraph from it, so the graph cannot drift from what the
manifest says.

The arithmetic matches librosa (`feature.melspectrogram` + `power_to_db`, slaney mel scale
and norm, periodic Hann window) and is done in float64 inside the graph. Measured on real
recordings (5 s windows at 32 kHz, onnxruntime 1.32, one x86 thread): float32 STFT or
Conv1d-DFT front ends reach 1.1e-3 to 1.2e-3 dB from librosa, and the error sits in mel
bands 50-80 dB below their frame's loudest band, where the DFT of a loud frame must cancel
to a tiny residue and float32 rounding of the loud part (~1e-7 of it) is no longer small
beside what remains. Computing the STFT, the mel sum and the log in float64 brings the
error to 3.8e-6 dB (the float32 rounding of the output itself) and costs 11.1 ms per 5 s
window against 9.8 ms for the float32 STFT and 13.2 ms for a float32 Conv1d-DFT; a float64
DFT as MatMul costs 29 ms. Hence the ONNX `STFT` op in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 is the first with the STFT op the front end is built on. It is pinned, not
# "latest", so a newer `onnx` package cannot emit ops the Pi's onnxruntime (>= 1.17, which
# runs opsets up to 20) lacks.
OPSET = 17
# IR 8 is the IR version that shipped with opset 17 (onnx 1.12). onnx 1.23 would stamp its
# own, newer IR version, and a runtime refuses an IR version newer than it knows.
IR_VERSION = 8

# The demo and default branch parameters for a Raspberry Pi 5 (reasons per key):
DEFAULT_LOG_MEL: dict[str, Any] = {
    "kind": "log_mel",
    "in_graph": True,
    # BirdCLEF 2025 audio (train and soundscapes) is 32 kHz; 16 kHz Nyquist covers birds,
    # frogs and most audible insects, at two thirds of the cost of 48 kHz.
    "sample_rate_hz": 32_000,
    # 32 ms frames: 31.25 Hz bins separate frog pulse tones and bird whistles.
    "n_fft": 1024,
    # 10 ms hop: 100 frames/s keeps pulsed calls (A. femoralis notes, trills) apart; 501
    # frames per 5 s window.
    "hop_length": 320,
    "win_length": 1024,
    "window": "hann",
    "center": True,
    # Reflect padding: a window's first and last frames see real audio, not half silence.
    "pad_mode": "reflect",
    # 64 bands: enough for a pooled head and one TUI row per band; BirdCLEF models use 64-128.
    "n_mels": 64,
    # Below 50 Hz is wind, handling and mains rumble, not calls.
    "fmin": 50.0,
    # Stays clear of the resampler's roll-off just under the 16 kHz Nyquist.
    "fmax": 14_000.0,
    "power": 2.0,
    "mel_scale": "slaney",
    "norm": "slaney",
    "amin": 1e-10,
    "ref": 1.0,
    # Each window is floored 80 dB below its own loudest bin (librosa's default): digital
    # silence (zero-padded file ends) lands on a finite floor tied to the window.
    "top_db": 80.0,
    # See the module docstring: float32 is 1e-3 dB off librosa in quiet bands of loud frames.
    "compute_dtype": "float64",
}

_WINDOWS = ("hann",)
_PAD_MODES = ("reflect", "constant")
_DTYPES = {"float64": (np.float64, TensorProto.DOUBLE), "float32": (np.float32, TensorProto.FLOAT)}


class FrontEndError(ValueError):
    """Front-end parameters the exporter cannot build; names the key and the reason."""


@dataclass(frozen=True)
class LogMelParams:
    """The validated `front_end` dict of a branch (see DEFAULT_LOG_MEL for the reasons)."""

    sample_rate_hz: int
    n_fft: int
    hop_length: int
    win_length: int
    window: str
    center: bool
    pad_mode: str
    n_mels: int
    fmin: float
    fmax: float
    power: float
    mel_scale: str
    norm: str | None
    amin: float
    ref: float
    top_db: float | None
    compute_dtype: str

    @classmethod
    def from_manifest(cls, raw: Mapping[str, Any]) -> "LogMelParams":
        """Validate a manifest `front_end` dict.

        Raises:
            FrontEndError: naming the first key that is missing, mistyped or unsupported.
        """
        if not isinstance(raw, Mapping):
            raise FrontEndError(f"front_end: expected an object, got {type(raw).__name__}")
        if raw.get("kind") != "log_mel":
            raise FrontEndError(f"front_end.kind: {raw.get('kind')!r} is not 'log_mel'")
        if raw.get("in_graph") is not True:
            raise FrontEndError("front_end.in_graph: must be true (the device feeds raw waveforms)")
        unknown = set(raw) - set(cls.__dataclass_fields__) - {"kind", "in_graph"}
        if unknown:
            raise FrontEndError(f"front_end: unknown keys {sorted(unknown)}")

        def need(key: str, kinds: tuple[type, ...]) -> Any:
            if key not in raw:
                raise FrontEndError(f"front_end.{key}: missing")
            value = raw[key]
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                raise FrontEndError(f"front_end.{key}: {value!r} is not {'/'.join(k.__name__ for k in kinds)}")
            return value

        number = (int, float)
        params = cls(
            sample_rate_hz=need("sample_rate_hz", (int,)),
            n_fft=need("n_fft", (int,)),
            hop_length=need("hop_length", (int,)),
            win_length=need("win_length", (int,)),
            window=need("window", (str,)),
            center=need("center", (bool,)),
            pad_mode=need("pad_mode", (str,)),
            n_mels=need("n_mels", (int,)),
            fmin=float(need("fmin", number)),
            fmax=float(need("fmax", number)),
            power=float(need("power", number)),
            mel_scale=need("mel_scale", (str,)),
            norm=raw.get("norm", "slaney"),
            amin=float(need("amin", number)),
            ref=float(need("ref", number)),
            top_db=None if raw.get("top_db") is None else float(need("top_db", number)),
            compute_dtype=raw.get("compute_dtype", "float64"),
        )
        params._check()
        return params

    def _check(self) -> None:
        def refuse(key: str, why: str) -> None:
            raise FrontEndError(f"front_end.{key}: {getattr(self, key)!r} {why}")

        if self.sample_rate_hz <= 0:
            refuse("sample_rate_hz", "must be positive")
        if self.n_fft < 16 or self.n_fft & (self.n_fft - 1):
            refuse("n_fft", "must be a power of two >= 16 (onnxruntime's STFT is radix-2)")
        if not 0 < self.win_length <= self.n_fft:
            refuse("win_length", f"must be in (0, n_fft={self.n_fft}]")
        if not 0 < self.hop_length <= self.n_fft:
            refuse("hop_length", f"must be in (0, n_fft={self.n_fft}]")
        if self.window not in _WINDOWS:
            refuse("window", f"is not one of {_WINDOWS}")
        if self.pad_mode not in _PAD_MODES:
            refuse("pad_mode", f"is not one of {_PAD_MODES}")
        if self.power != 2.0:
            refuse("power", "is not 2.0 (the only power spectrum this front end builds)")
        if self.mel_scale != "slaney":
            refuse("mel_scale", "is not 'slaney' (librosa's default)")
        if self.norm not in ("slaney", None):
            refuse("norm", "is not 'slaney' or null")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate_hz / 2:
            refuse("fmax", f"needs 0 <= fmin ({self.fmin}) < fmax <= {self.sample_rate_hz / 2} (Nyquist)")
        if not 1 <= self.n_mels <= self.n_fft // 2:
            refuse("n_mels", f"must be in [1, {self.n_fft // 2}]")
        if not self.amin > 0:
            refuse("amin", "must be positive")
        if not self.ref > 0:
            refuse("ref", "must be positive")
        if self.top_db is not None and not self.top_db > 0:
            refuse("top_db", "must be positive or null")
        if self.compute_dtype not in _DTYPES:
            refuse("compute_dtype", f"is not one of {tuple(_DTYPES)}")
        empty = np.flatnonzero(mel_filterbank(self).max(axis=1) <= 0)
        if empty.size:
            refuse("n_mels", f"leaves mel bands {empty.tolist()[:5]} without an FFT bin (lower n_mels or raise n_fft)")

    def to_manifest(self) -> dict[str, Any]:
        """The dict form for `branch.input.front_end` (round-trips through `from_manifest`)."""
        return {"kind": "log_mel", "in_graph": True, **asdict(self)}

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def n_frames(self, samples: int) -> int:
        """Frames in the log-mel of `samples` samples (librosa's count)."""
        padded = samples + (2 * (self.n_fft // 2) if self.center else 0)
        if padded < self.n_fft:
            raise FrontEndError(f"{samples} samples is shorter than one {self.n_fft}-sample frame")
        return 1 + (padded - self.n_fft) // self.hop_length


def default_params() -> LogMelParams:
    return LogMelParams.from_manifest(DEFAULT_LOG_MEL)


def analysis_window(params: LogMelParams) -> np.ndarray:
    """The periodic Hann window (scipy `get_window('hann', fftbins=True)`), centred in n_fft."""
    n = np.arange(params.win_length)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / params.win_length)
    left = (params.n_fft - params.win_length) // 2
    return np.pad(window, (left, params.n_fft - params.win_length - left))


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa, htk=False)."""
    hz = np.asanyarray(hz, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    mels = hz / f_sp
    above = hz >= min_log_hz
    return np.where(above, min_log_hz / f_sp + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asanyarray(mels, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def mel_filterbank(params: LogMelParams) -> np.ndarray:
    """The [n_mels, n_fft//2+1] float64 mel weights, as `librosa.filters.mel` (slaney, slaney)."""
    fft_hz = np.linspace(0.0, params.sample_rate_hz / 2, params.n_bins)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(params.fmin), _hz_to_mel(params.fmax), params.n_mels + 2))
    spacing = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / spacing[:-1, None]
    upper = ramps[2:] / spacing[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if params.norm == "slaney":
        weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights


def log_mel_reference(waveform: np.ndarray, params: LogMelParams) -> np.ndarray:
    """The log-mel in numpy float64 (rfft): the exporter's check of the graph, no librosa.

    Args:
        waveform: [samples] or [batch, samples] mono audio at `params.sample_rate_hz`.

    Returns:
        [n_mels, frames] or [batch, n_mels, frames] in dB, float64.
    """
    x = np.asarray(waveform, dtype=np.float64)
    single = x.ndim == 1
    x = np.atleast_2d(x)
    if params.center:
        half = params.n_fft // 2
        x = np.pad(x, ((0, 0), (half, half)), mode=params.pad_mode)
    frames = params.n_frames(x.shape[1] - (2 * (params.n_fft // 2) if params.center else 0))
    index = np.arange(frames)[:, None] * params.hop_length + np.arange(params.n_fft)[None, :]
    spectrum = np.fft.rfft(x[:, index] * analysis_window(params), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = np.einsum("mk,bfk->bmf", mel_filterbank(params), power)
    db = 10.0 * np.log10(np.maximum(mel, params.amin)) - 10.0 * math.log10(max(params.amin, params.ref))
    if params.top_db is not None:
        db = np.maximum(db, db.max(axis=(1, 2), keepdims=True) - params.top_db)
    return db[0] if single else db


def log_mel_nodes(
    params: LogMelParams, waveform: str, mel: str, prefix: str = "log_mel/"
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers that turn float32 `waveform` [batch, samples] into `mel`.

    `mel` is float32 [batch, n_mels, frames] in dB (librosa's layout), computed in
    `params.compute_dtype`. The dB floor (`top_db`) is taken per batch item, as librosa
    does for one clip. Names are prefixed so the subgraph composes with a head.
    """
    dtype, onnx_dtype = _DTYPES[params.compute_dtype]
    p = prefix
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), p + "last_axis"),
        numpy_helper.from_array(np.array(params.hop_length, np.int64), p + "hop"),
        numpy_helper.from_array(analysis_window(params).astype(dtype), p + "window"),
        numpy_helper.from_array(np.array([3], np.int64), p + "re_im_axis"),
        numpy_helper.from_array(mel_filterbank(params).T.astype(dtype), p + "mel_weights"),
        numpy_helper.from_array(np.array(params.amin, dtype), p + "amin"),
        numpy_helper.from_array(np.array(10.0 / math.log(10.0), dtype), p + "db_per_neper"),
        numpy_helper.from_array(np.array(10.0 * math.log10(max(params.amin, params.ref)), dtype), p + "ref_db"),
    ]
    nodes = [helper.make_node("Cast", [waveform], [p + "x"], to=onnx_dtype)]
    signal = p + "x"
    if params.center:
        half = params.n_fft // 2
        inits.append(numpy_helper.from_array(np.array([0, half, 0, half], np.int64), p + "pads"))
        nodes.append(helper.make_node("Pad", [signal, p + "pads"], [p + "padded"], mode=params.pad_mode))
        signal = p + "padded"
    nodes += [
        helper.make_node("Unsqueeze", [signal, p + "last_axis"], [p + "signal"]),  # [B, S, 1]: real input
        # [B, frames, n_bins, 2]; the window's length sets frame_length
        helper.make_node("STFT", [p + "signal", p + "hop", p + "window"], [p + "stft"], onesided=1),
        helper.make_node("Mul", [p + "stft", p + "stft"], [p + "squares"]),
        helper.make_node("ReduceSum", [p + "squares", p + "re_im_axis"], [p + "power"], keepdims=0),
        helper.make_node("MatMul", [p + "power", p + "mel_weights"], [p + "mel_power"]),  # [B, frames, n_mels]
        helper.make_node("Max", [p + "mel_power", p + "amin"], [p + "clamped"]),
        helper.make_node("Log", [p + "clamped"], [p + "ln"]),
        helper.make_node("Mul", [p + "ln", p + "db_per_neper"], [p + "db_abs"]),
        helper.make_node("Sub", [p + "db_abs", p + "ref_db"], [p + "db"]),
    ]
    db = p + "db"
    if params.top_db is not None:
        inits.append(numpy_helper.from_array(np.array(params.top_db, dtype), p + "top_db"))
        nodes += [
            helper.make_node("ReduceMax", [db], [p + "peak"], axes=[1, 2], keepdims=1),
            helper.make_node("Sub", [p + "peak", p + "top_db"], [p + "floor"]),
            helper.make_node("Max", [db, p + "floor"], [p + "db_floored"]),
        ]
        db = p + "db_floored"
    nodes += [
        helper.make_node("Transpose", [db], [p + "db_bands"], perm=[0, 2, 1]),  # [B, n_mels, frames]
        helper.make_node("Cast", [p + "db_bands"], [mel], to=TensorProto.FLOAT),
    ]
    return nodes, inits


def make_model(graph: onnx.GraphProto, doc: str = "") -> onnx.ModelProto:
    """Wrap a graph at the pinned opset and IR version and run the full checker on it."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="elsilencio-exporter")
    model.ir_version = IR_VERSION
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def build_front_end_model(params: LogMelParams, window_samples: int | str = "samples") -> onnx.ModelProto:
    """A model with input `waveform` [batch, samples] and the one output `mel`.

    Args:
        window_samples: a fixed window length (the branch's), or a name for a free axis.
    """
    frames: int | str = params.n_frames(window_samples) if isinstance(window_samples, int) else "frames"
    nodes, inits = log_mel_nodes(params, "waveform", "mel")
    graph = helper.make_graph(
        nodes,
        "log_mel_front_end",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", window_samples])],
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", params.n_mels, frames])],
        inits,
    )
    return make_model(graph, "log-mel front end; parameters: " + str(params.to_manifest()))
