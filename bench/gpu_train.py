"""Training throughput of each head on one GPU, fed by the real data pipeline, against issue 11's H200 figures.

    python -m bench.gpu_train                       # cache ../shared/data, then every head, eager and compiled
    python -m bench.gpu_train --data DIR --cache C  # another recordings folder / an existing cache folder
    python -m bench.gpu_train --cpu-smoke           # 2 steps per head at batch 2 on the CPU (proves it runs)

What one step is, as `trainer.fit` trains: a batch of real 5 s windows read from the int16 memmap
cache by DataLoader workers (`trainer.data.CacheWindows`: random crops, multi-hot targets), in
pinned memory, copied with non_blocking; the log-mel inside the step on the GPU (the head's
`features`); bf16 autocast; BCE; AdamW over every weight. Two modes per network, as the
references were measured: eager at batch 128, and channels_last + `torch.compile` at batch 256.

The networks are the references' (the issue measured whole networks trained end to end, on
random waveforms already on the GPU): RawAudioCNN (`raw_cnn`), CNN14 (`panns_mlp` with its CNN14
unfrozen), EfficientNet-B3 (`effnet_b3_lora` with `train_base=True`: the base and the adapters)
and ResNet50 (the `resnet50` head's timm ResNet50 on the log-mel, without the head's CNN14
branch, which the reference did not have). The heads as `fit` trains them (frozen CNN14, LoRA
only) are cheaper per step than these.

Output: windows/s per network and mode, the reference, the ratio, and the target verdict
(compiled >= 90 % of the compiled reference, the issue's bar for "the data pipeline keeps up").
Nothing is downloaded: the weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.audio_cache import AudioCache, build_cache, items_from_examples
from trainer.data import CacheWindows, labelled_rows, loader, to_float
from trainer.heads import build_head
from trainer.labelled import examples_from_recordings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WINDOW = 160_000
"""5 s at 32 kHz, as the references."""
REFERENCE = {  # name: (eager batch 128, channels_last + compile batch 256), windows/s on an H200 (issue 11)
    "RawAudioCNN": (3_521, 6_269),
    "CNN14": (1_863, 5_772),
    "EfficientNet-B3": (912, 2_998),
    "ResNet50": (2_036, 5_181),
}
SMOKE_WINDOW = 32_000
"""1 s: the CPU smoke run checks that every step runs, not its speed."""
TARGET = 0.90
"""Compiled throughput with the real pipeline must reach this share of the compiled reference."""
MODES = {"eager": (128, False), "compiled": (256, True)}


class ResNet50Only(nn.Module):
    """The `resnet50` head's log-mel front end, mel batch norm and timm ResNet50, with a linear
    classifier: the reference network (the head adds a frozen CNN14 branch beside it)."""

    def __init__(self, head):
        super().__init__()
        self.head_front, self.bn0, self.resnet = head.front_end, head.bn0, head.resnet
        self.input_kind = "mel"
        self.classifier = nn.Linear(head.resnet.num_features, head.num_classes)

    def features(self, wave):
        return self.head_front(wave).unsqueeze(1)

    def body(self, mel):
        return self.classifier(self.resnet(self.bn0(mel.transpose(1, 2)).transpose(1, 2)))


def network(name: str, labels: list[str]) -> nn.Module:
    """The reference network `name` (module docstring), every weight trainable."""
    if name == "RawAudioCNN":
        model = build_head("raw_cnn", labels=labels)
    elif name == "CNN14":
        model = build_head("panns_mlp", labels=labels)
    elif name == "EfficientNet-B3":
        model = build_head("effnet_b3_lora", labels=labels, train_base=True)
    elif name == "ResNet50":
        model = ResNet50Only(build_head("resnet50", labels=labels))
    else:
        raise ValueError(f"unknown network {name!r}: choose from {', '.join(REFERENCE)}")
    return model.requires_grad_(True)


class Step(nn.Module):
    """features (log-mel for mel nets) -> channels_last (when asked) -> body: what one forward is."""

    def __init__(self, model: nn.Module, channels_last: bool):
        super().__init__()
        self.model, self.channels_last = model, channels_last and model.input_kind == "mel"

    def forward(self, wave):
        x = self.model.features(wave)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model.body(x)


def prepare(data: Path, cache_dir: Path, clips: int | None, clip_s: float | None):
    """(cache, training rows, labels): the recordings' clips cached once (resumable), every clip a row."""
    examples = examples_from_recordings(data)[:clips] if clips else examples_from_recordings(data)
    if clip_s:  # the first clip_s seconds, under an id of its own (the cache keys audio by id)
        examples = [replace(e, clip_id=f"{e.clip_id}@{clip_s:g}s", end_s=e.start_s + clip_s if e.end_s is None
                            else min(e.end_s, e.start_s + clip_s)) for e in examples]
    began = time.perf_counter()
    report = build_cache(cache_dir, items_from_examples(examples), workers=os.cpu_count() or 1)
    print(f"cache: {report.summary()} ({time.perf_counter() - began:.1f} s)", flush=True)
    cache = AudioCache(cache_dir)
    examples = [e for e in examples if e.clip_id in cache]
    labels = sorted({label for e in examples for label in e.labels}) or ["none"]
    return cache, labelled_rows(examples, labels, 0.5, False), labels


def measure(name: str, mode: str, cache: AudioCache, rows, labels: list[str], device: torch.device, *,
            batch: int, steps: int, warmup: int, workers: int, precision: torch.dtype | None,
            window: int = WINDOW) -> float:
    """Windows/s over `steps` timed steps (after `warmup`, which includes compilation)."""
    _, compiled = MODES[mode]
    torch.manual_seed(0)
    model = network(name, labels).to(device)
    if compiled and model.input_kind == "mel":
        model = model.to(memory_format=torch.channels_last)
    step = Step(model, channels_last=compiled)
    forward = torch.compile(step) if compiled else step
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-2,
                                  fused=device.type == "cuda")
    loss_fn = nn.BCEWithLogitsLoss()
    total = warmup + steps
    rng = np.random.default_rng(0)
    keys = np.stack([rng.integers(0, len(rows), total * batch), np.zeros(total * batch), np.arange(total * batch)],
                    axis=1).astype(np.int64)
    batches = loader(CacheWindows(cache, rows, window, seed=0), keys, batch, workers, drop_last=True, seed=0, epoch=0,
                     pin_memory=device.type == "cuda")
    model.train()
    began = None
    for k, item in enumerate(batches):
        if k == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
        wave = to_float(item["wave"].to(device, non_blocking=True))  # int16 through the pipe, as in fit
        target = item["target"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
            loss = loss_fn(forward(wave).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    if not math.isfinite(float(loss.detach())):
        raise RuntimeError(f"{name} {mode}: the loss is {float(loss.detach())}")
    return steps * batch / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED,
                        help="a folder with recordings.csv (default ../shared/data)")
    parser.add_argument("--cache", type=Path, help="the audio cache folder (default: a temporary one)")
    parser.add_argument("--networks", nargs="+", default=list(REFERENCE), choices=list(REFERENCE))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=150, help="timed steps per network and mode")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation happens here)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="DataLoader workers")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="2 steps per network at batch 2 of 1 s windows on the CPU, eager, fp32")
    args = parser.parse_args(argv)
    cache_dir = args.cache or Path(tempfile.mkdtemp(prefix="gpu-train-bench-")) / "cache"
    if args.cpu_smoke:
        device, precision, modes, steps, warmup, workers = torch.device("cpu"), None, ["eager"], 2, 0, 1
        window = SMOKE_WINDOW
        torch.set_num_threads(2)
        cache, rows, labels = prepare(args.data, cache_dir, clips=6, clip_s=6.0)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run on a GPU machine, or use --cpu-smoke to check the script", file=sys.stderr)
            return 2
        device, precision, modes = torch.device("cuda"), torch.bfloat16, args.modes
        steps, warmup, workers, window = args.steps, args.warmup, args.workers, WINDOW
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  workers {workers}", flush=True)
        cache, rows, labels = prepare(args.data, cache_dir, clips=None, clip_s=None)
    print(f"{len(rows)} clips, {len(labels)} labels, {window / 32_000:.0f} s windows", flush=True)
    header = f"{'network':<16} {'mode':<9} {'batch':>5} {'windows/s':>10} {'reference':>10} {'ratio':>6}"
    print(header, flush=True)
    verdicts = []
    for name in args.networks:
        for mode in modes:
            batch = 2 if args.cpu_smoke else MODES[mode][0]
            began = time.perf_counter()
            rate = measure(name, mode, cache, rows, labels, device, batch=batch, steps=steps, warmup=warmup,
                           workers=workers, precision=precision, window=window)
            reference = REFERENCE[name][1 if mode == "compiled" else 0]
            print(f"{name:<16} {mode:<9} {batch:>5} {rate:>10,.1f} {reference:>10,} {rate / reference:>6.2f}"
                  f"   ({time.perf_counter() - began:.0f} s)", flush=True)
            if mode == "compiled":
                verdicts.append((name, rate / reference))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for name, ratio in verdicts:
        print(f"target {name}: compiled {ratio:.0%} of the reference, "
              f"{'meets' if ratio >= TARGET else 'BELOW'} the {TARGET:.0%} target")
    if args.cpu_smoke:
        print("cpu smoke run: the windows/s above are CPU figures, not comparable with the H200 references")
    return 0


if __name__ == "__main__":
    sys.exit(main())
