"""Decode once: every training clip as 32 kHz mono int16 in one memory-mappable file.

Decoding OGG is the slowest step of a data pipeline (a 60 s Vorbis file takes longer to decode
than a GPU takes to train on its twelve windows), so clips are decoded once and epochs read
windows from the cache through `np.memmap`, which costs a page-cache copy.

Layout of a cache folder:

    meta.json       the format: rate, dtype, scale (checked on every open)
    samples.i16     every clip's samples back to back, little-endian int16, append-only
    index.jsonl     one line per stored clip: id, offset and length (in samples), source, clipped
    skipped.jsonl   one line per clip that could not be decoded: id, path, source, reason
    .lock           held while a build runs (two builds appending to one file would interleave)

Resumable: a clip is committed by appending its samples, then its index line (each flushed and
fsynced). A build killed at any point leaves at most a torn tail, which the next build cuts
off: the index back to its last complete line, the samples back to the end of the last indexed
clip. Clips are committed in the order given, so a resumed build writes exactly the bytes an
uninterrupted one writes. A clip whose source changed (size or mtime) is decoded again and
appended; its newest line wins.

Scaling: a sample x in [-1, 1] is stored as round(x * 32767) and read back as q / 32767 (a
symmetric scale, so +1 and -1 both fit); the round trip error is at most 0.5 / 32767 (1.5e-5,
-96 dB). Resampling can overshoot full scale slightly: such samples are clipped to +-1 and
counted per clip (`clipped` in the index).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soundfile as sf

from device.audio.resample import resample
from device.audio.samples import sanitize, to_mono
from trainer.labelled import Example

CACHE_RATE_HZ = 32_000
"""BirdCLEF's rate (every train_audio file is 32 kHz) and the heads' input rate."""
INT16_SCALE = 32767
"""Full scale: x in [-1, 1] is stored as round(x * INT16_SCALE) (module docstring)."""
MAX_ROUND_TRIP_ERROR = 0.5 / INT16_SCALE
"""The largest |x - stored(x) / INT16_SCALE| for x in [-1, 1]: half a quantisation step."""
FORMAT = {"format": 1, "rate_hz": CACHE_RATE_HZ, "dtype": "<i2", "scale": INT16_SCALE}
SAMPLES, INDEX, SKIPPED, META, LOCK = "samples.i16", "index.jsonl", "skipped.jsonl", "meta.json", ".lock"
BYTES_PER_SAMPLE = 2
IN_FLIGHT_PER_WORKER = 4
"""Clips decoded ahead of the (in-order) writer per worker: enough to keep every worker busy past
one slow file, few enough that decoded audio never piles up in memory (an hour of 32 kHz int16
is 230 MB)."""
DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, OSError, ValueError, EOFError)
"""What a corrupt, truncated, unreadable or empty file raises while it is decoded (libsndfile's
errors are RuntimeErrors; a vanished file an OSError)."""


@dataclass(frozen=True)
class CacheItem:
    """One clip to cache: a recording, or a stretch of one."""

    clip_id: str
    path: Path
    start_s: float = 0.0
    end_s: float | None = None


@dataclass(frozen=True)
class Entry:
    """Where a cached clip's samples are in samples.i16 (in samples, not bytes)."""

    offset: int
    length: int
    source: str
    clipped: int = 0


@dataclass(frozen=True)
class Skipped:
    clip_id: str
    path: str
    reason: str


@dataclass(frozen=True)
class Progress:
    """Passed to the progress callback after each clip is committed (or found committed)."""

    done: int
    total: int
    clip_id: str
    status: str
    """"decoded", "cached" (already there) or "skipped"."""


@dataclass
class CacheReport:
    """What one build did."""

    root: Path
    total: int = 0
    decoded: int = 0
    reused: int = 0
    """Already in the cache with an unchanged source: not decoded again."""
    skipped: list[Skipped] = field(default_factory=list)
    """Clips that could not be decoded, this build or an earlier one (also in skipped.jsonl)."""
    samples: int = 0
    """Samples the requested clips hold in the cache."""

    def summary(self) -> str:
        hours = self.samples / CACHE_RATE_HZ / 3600
        return (f"{self.root}: {self.total} clips, {self.decoded} decoded, {self.reused} already cached, "
                f"{len(self.skipped)} skipped, {hours:.2f} h of audio")


def items_from_examples(examples: Iterable[Example]) -> list[CacheItem]:
    """One item per distinct clip id, in first-seen order.

    Raises:
        ValueError: one clip id names two different stretches of audio.
    """
    items: dict[str, CacheItem] = {}
    for example in examples:
        item = CacheItem(example.clip_id, Path(example.path), example.start_s, example.end_s)
        if items.setdefault(item.clip_id, item) != item:
            raise ValueError(f"clip id {item.clip_id!r} names two clips: {items[item.clip_id]} and {item}")
    return list(items.values())


def source_signature(path: Path) -> str:
    """size:mtime_ns, which changes when the file is replaced (hashing 100 GB of OGG would take
    longer than decoding it)."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def to_int16(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """(int16 samples, how many were clipped to full scale) for float samples nominally in [-1, 1]."""
    samples = np.asarray(samples, dtype=np.float32)
    clipped = int(np.count_nonzero(np.abs(samples) > 1.0))
    scaled = np.rint(np.clip(samples, -1.0, 1.0) * np.float32(INT16_SCALE))
    return scaled.astype("<i2"), clipped


def from_int16(samples: np.ndarray) -> np.ndarray:
    """Cached samples back to float32 in [-1, 1]."""
    return np.asarray(samples, dtype=np.float32) * np.float32(1.0 / INT16_SCALE)


def decode(item: CacheItem) -> tuple[np.ndarray, int]:
    """An item's audio at `CACHE_RATE_HZ`, mono, as int16, and its clipped-sample count.

    Raises:
        One of `DECODE_ERRORS`: the file cannot be read, or holds no samples in the stretch asked for.
    """
    info = sf.info(str(item.path))
    rate = int(info.samplerate)
    start = int(round(item.start_s * rate))
    stop = None if item.end_s is None else int(round(item.end_s * rate))
    frames, rate = sf.read(str(item.path), start=start, stop=stop, dtype="float32", always_2d=True)
    if len(frames) == 0:
        raise ValueError(f"no audio samples (file holds {info.frames} frames at {rate} Hz)")
    mono = np.ascontiguousarray(to_mono(frames))
    sanitize(mono)
    return to_int16(resample(mono, rate, CACHE_RATE_HZ))


def _decode_or_reason(item: CacheItem) -> tuple[np.ndarray | None, int, str]:
    try:
        samples, clipped = decode(item)
    except DECODE_ERRORS as exc:
        return None, 0, f"{type(exc).__name__}: {exc}"
    return samples, clipped, ""


def _complete_lines(path: Path) -> list[dict]:
    """The complete JSON lines of an append-only file, cutting off a torn last line in place."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def _read_index(root: Path) -> tuple[dict[str, Entry], int]:
    """Newest entry per clip id, and the end of the last line's samples (in samples)."""
    entries, end = {}, 0
    for line in _complete_lines(root / INDEX):
        entries[line["id"]] = Entry(line["offset"], line["length"], line["source"], line.get("clipped", 0))
        end = line["offset"] + line["length"]
    return entries, end


def _append_line(handle, record: dict) -> None:
    handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    handle.flush()
    os.fsync(handle.fileno())


def _check_meta(root: Path) -> None:
    meta = root / META
    if meta.exists():
        found = json.loads(meta.read_text(encoding="utf-8"))
        if found != FORMAT:
            raise ValueError(f"{meta}: cache format {found} is not this version's {FORMAT}; use a new folder")
    else:
        meta.write_text(json.dumps(FORMAT, sort_keys=True) + "\n", encoding="utf-8")


def build_cache(root: Path, items: Iterable[CacheItem], *, workers: int = 1,
                progress: Callable[[Progress], None] | None = None, bar: bool = False) -> CacheReport:
    """Decode into the cache at `root` every item not already there; resume what a killed build left.

    Args:
        root: The cache folder (created if missing).
        items: The clips, in the order they are appended (keep it fixed for byte-identical caches).
        workers: Decoding processes; 1 decodes in this process. Commits stay in item order.
        progress: Called after each clip is committed, skipped, or found already cached.
        bar: Show a tqdm progress bar on stderr.

    Returns:
        What was decoded, reused and skipped; every skipped clip is also in skipped.jsonl.

    Raises:
        ValueError: the folder holds a cache of another format or a damaged one (samples missing
            that its index lists), or two items share an id.
        BlockingIOError: another build holds the cache.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = list(items)
    if len({i.clip_id for i in items}) != len(items):
        raise ValueError("cache items must have distinct clip ids (items_from_examples merges examples)")
    with open(root / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BlockingIOError(f"{root}: another build is writing this cache") from None
        _check_meta(root)
        return _build_locked(root, items, workers, progress, bar)


def _build_locked(root: Path, items: list[CacheItem], workers: int, progress, bar: bool) -> CacheReport:
    entries, end = _read_index(root)
    samples_path = root / SAMPLES
    with open(samples_path, "ab"):
        pass
    size = samples_path.stat().st_size
    if size < end * BYTES_PER_SAMPLE:
        raise ValueError(f"{samples_path}: holds {size // BYTES_PER_SAMPLE} samples, its index needs {end}; "
                         f"the cache was damaged outside a build: use a new folder")
    if size > end * BYTES_PER_SAMPLE:  # samples of a clip whose index line never came
        with open(samples_path, "r+b") as handle:
            handle.truncate(end * BYTES_PER_SAMPLE)
    skipped_before = {line["id"]: line for line in _complete_lines(root / SKIPPED)}
    report = CacheReport(root=root, total=len(items))
    todo, signatures = [], {}
    for item in items:
        try:
            signatures[item.clip_id] = source_signature(item.path)
        except OSError as exc:
            signatures[item.clip_id] = f"unreadable: {type(exc).__name__}"
        entry = entries.get(item.clip_id)
        earlier = skipped_before.get(item.clip_id)
        if not (entry and entry.source == signatures[item.clip_id]) and not (
                earlier and earlier["source"] == signatures[item.clip_id]):
            todo.append(item)
    ticker = _ticker(len(items), progress, bar)
    pending = {i.clip_id for i in todo}
    for item in items:  # what is already there, reported first
        if item.clip_id not in pending:
            if item.clip_id in skipped_before and (item.clip_id not in entries
                                                   or entries[item.clip_id].source != signatures[item.clip_id]):
                report.skipped.append(Skipped(item.clip_id, skipped_before[item.clip_id]["path"],
                                              skipped_before[item.clip_id]["reason"]))
                ticker(item.clip_id, "skipped")
            else:
                report.reused += 1
                report.samples += entries[item.clip_id].length
                ticker(item.clip_id, "cached")
    with open(samples_path, "ab") as samples_out, open(root / INDEX, "ab") as index_out, \
            open(root / SKIPPED, "ab") as skipped_out:
        for item, (samples, clipped, reason) in zip(todo, _decoded(todo, workers)):
            if samples is None:
                _append_line(skipped_out, {"id": item.clip_id, "path": str(item.path),
                                           "source": signatures[item.clip_id], "reason": reason})
                report.skipped.append(Skipped(item.clip_id, str(item.path), reason))
                ticker(item.clip_id, "skipped")
                continue
            samples_out.write(samples.tobytes())
            samples_out.flush()
            os.fsync(samples_out.fileno())
            _append_line(index_out, {"id": item.clip_id, "offset": end, "length": len(samples),
                                     "source": signatures[item.clip_id], "clipped": clipped})
            end += len(samples)
            report.decoded += 1
            report.samples += len(samples)
            ticker(item.clip_id, "decoded")
    ticker.close()
    return report


def _decoded(todo: list[CacheItem], workers: int):
    """(samples, clipped, reason) per item, in item order, with at most `IN_FLIGHT_PER_WORKER`
    clips per worker decoded ahead of the writer."""
    if workers <= 1 or len(todo) < 2:
        yield from map(_decode_or_reason, todo)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        ahead: deque = deque()
        for item in todo:
            ahead.append(pool.submit(_decode_or_reason, item))
            if len(ahead) >= workers * IN_FLIGHT_PER_WORKER:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


class _ticker:
    """Counts committed clips for the callback and the optional tqdm bar."""

    def __init__(self, total: int, callback, bar: bool):
        self.total, self.done, self.callback = total, 0, callback
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="clip", desc="caching audio")

    def __call__(self, clip_id: str, status: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.callback is not None:
            self.callback(Progress(self.done, self.total, clip_id, status))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class AudioCache:
    """A read-only view of a built cache: clip samples through one `np.memmap`, never decoded again.

    Open it after the build (or again after another build): the map covers the file as it was.
    Each worker process should open its own (a memmap is cheap to open and shares the page cache).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        meta = self.root / META
        if not meta.exists():
            raise FileNotFoundError(f"{meta}: no audio cache here (build one with trainer.audio_cache.build_cache)")
        found = json.loads(meta.read_text(encoding="utf-8"))
        if found != FORMAT:
            raise ValueError(f"{meta}: cache format {found} is not this version's {FORMAT}")
        self.entries: dict[str, Entry] = {}
        for raw in (self.root / INDEX).read_bytes().splitlines() if (self.root / INDEX).exists() else []:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                break  # a torn last line of a build in progress
            self.entries[line["id"]] = Entry(line["offset"], line["length"], line["source"], line.get("clipped", 0))
        end = max((e.offset + e.length for e in self.entries.values()), default=0)
        size = (self.root / SAMPLES).stat().st_size // BYTES_PER_SAMPLE if (self.root / SAMPLES).exists() else 0
        if size < end:
            raise ValueError(f"{self.root / SAMPLES}: holds {size} samples, the index needs {end}")
        self.data = np.memmap(self.root / SAMPLES, dtype="<i2", mode="r", shape=(end,)) if end else np.zeros(0, "<i2")
        self.skipped = [Skipped(s["id"], s["path"], s["reason"]) for s in _complete_lines_readonly(self.root / SKIPPED)]

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def length(self, clip_id: str) -> int:
        return self._entry(clip_id).length

    def _entry(self, clip_id: str) -> Entry:
        try:
            return self.entries[clip_id]
        except KeyError:
            raise KeyError(f"{clip_id!r} is not in the cache at {self.root} (skipped, or never built)") from None

    def samples(self, clip_id: str) -> np.ndarray:
        """The clip's int16 samples: a view into the map, no copy."""
        entry = self._entry(clip_id)
        return self.data[entry.offset : entry.offset + entry.length]

    def window(self, clip_id: str, start: int, length: int) -> np.ndarray:
        """`length` float32 samples from `start`, zero-padded past the clip's end (as the device
        pads a file's last window)."""
        entry = self._entry(clip_id)
        start = max(0, int(start))
        stop = min(entry.length, start + length)
        out = np.zeros(length, dtype=np.float32)
        if stop > start:
            out[: stop - start] = from_int16(self.data[entry.offset + start : entry.offset + stop])
        return out

    def random_window(self, clip_id: str, rng: np.random.Generator, length: int) -> np.ndarray:
        """A window at a uniformly drawn start (the whole clip, padded, when it is shorter)."""
        span = self._entry(clip_id).length - length
        return self.window(clip_id, int(rng.integers(0, span + 1)) if span > 0 else 0, length)


def _complete_lines_readonly(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]
