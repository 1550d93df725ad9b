"""int8 for a head branch only where measurement says so: static QDQ, calibrated on real windows.

Never `quantize_dynamic`: on conv nets it re-derives activation scales at run time and was
measured 4-10x slower than fp32 here (issue 11). Static QDQ fixes the scales from calibration
on real audio windows (the artefact's reference windows), with weights int8 per output channel
and activations uint8. The front end (`log_mel/` nodes: STFT, mel sum and log in float64) is
excluded: its values span ~16 orders of magnitude before the log, which 8 bits cannot hold
(exporter/birdnet/quantize.py measured the same for BirdNET's spectrogram). Only the body's
Conv, MatMul and Gemm (nearly all of its multiply-adds) are quantized, as in the BirdNET study.

The decision (`decide`), per branch, on numbers measured against the fp32 branch:
  int8 iff top-1 agreement >= 0.99 on the evaluation windows
       and the BirdCLEF metric (macro ROC-AUC) falls by at most 0.005 (the issue's budget)
       and int8 is faster on one thread by at least 5 % (the median; less is within the noise
           of a shared machine, and a branch that is not faster gains nothing for its error);
  otherwise fp32. A metric that cannot be measured (no evaluation targets, or no class with
  both a positive and a negative window) keeps fp32: int8 is never chosen unmeasured.
Both calibrations the quantizer offers for this are tried, MinMax and Percentile (99.999 %),
and the one with the better top-1 agreement (then the smaller error) is the candidate.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from exporter.head_branch import FRONT_END_PREFIX, relative_error, run_outputs, session, top1_agreement

OP_TYPES = ("Conv", "MatMul", "Gemm")
METHODS = ("minmax", "percentile")
MIN_TOP1_AGREEMENT = 0.99
MAX_METRIC_LOSS = 0.005
MIN_SPEEDUP = 1.05
"""int8 must be at least 5 % faster on one thread (median of interleaved runs)."""
LATENCY_REPEATS = 15


def birdclef_metric(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """The BirdCLEF 2025 metric: macro ROC-AUC over the classes with a positive (sklearn's
    `roc_auc_score`, as the competition's reference); None when no class has both a positive and
    a negative window (AUC is undefined there)."""
    from sklearn.metrics import roc_auc_score

    targets = np.asarray(targets) > 0.5
    keep = targets.any(axis=0) & (~targets).any(axis=0)
    if not keep.any():
        return None
    return float(roc_auc_score(targets[:, keep], np.asarray(scores)[:, keep], average="macro"))


class _Windows:
    """onnxruntime CalibrationDataReader: one real window per call, fed as `waveform`."""

    def __init__(self, windows: np.ndarray):
        self._iter = iter(np.asarray(windows, np.float32))

    def get_next(self):
        window = next(self._iter, None)
        return None if window is None else {"waveform": window[None]}


def quantize_branch(fp32_path: Path, out_path: Path, calibration: np.ndarray, method: str = "minmax") -> Path:
    """Write a static QDQ int8 copy of a composed branch (front end kept float).

    Raises:
        ValueError: no calibration windows, or an unknown method.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one real window")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method {method!r} is not one of {tuple(methods)}")
    model = onnx.load(str(fp32_path))
    exclude = [n.name for n in model.graph.node if n.name.startswith(FRONT_END_PREFIX)]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # skip_optimization keeps the node names excluded above; every axis but the batch is static.
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the percentile calibrator prints its progress
            quantize_static(
                str(prepared), str(out_path), _Windows(calibration), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(OP_TYPES), per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=methods[method],
                extra_options={"CalibPercentile": 99.999} if method == "percentile" else {},
            )
    return Path(out_path)


def latencies(paths: dict[str, Path], window: np.ndarray, threads: int, repeats: int = LATENCY_REPEATS) -> dict[str, float]:
    """Median ms per one-window call of each model on `threads` threads, runs interleaved so a
    busy neighbour slows every model alike."""
    sessions = {name: session(path, threads) for name, path in paths.items()}
    feed = {"waveform": np.ascontiguousarray(window[None], np.float32)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for s in sessions.values():
        s.run(["scores"], feed)  # warm-up: allocation and kernel selection
    for _ in range(repeats):
        for name, s in sessions.items():
            started = time.perf_counter()
            s.run(["scores"], feed)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def count_macs(path: Path) -> int | None:
    """Multiply-adds of one window through the Conv, MatMul and Gemm nodes (shape inference at
    batch 1); None when a shape stays unknown."""
    model = onnx.load(str(path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        if node.op_type not in OP_TYPES:
            continue
        a, b, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if not a or not b or not out or 0 in [*a, *b, *out]:
            return None
        if node.op_type == "Conv":
            total += int(np.prod(out)) * int(np.prod(b[1:]))
        else:
            total += int(np.prod(out)) * int(a[-1])
    return total


@dataclass
class QuantReport:
    """What the gate measured for one branch, and what it chose."""

    branch: str
    bytes_fp32: int
    bytes_int8: int | None
    ms_1_thread_fp32: float
    ms_2_threads_fp32: float
    ms_1_thread_int8: float | None
    ms_2_threads_int8: float | None
    macs: int | None
    calibration: str | None
    max_relative_error: float | None
    top1_agreement: float | None
    metric_fp32: float | None
    metric_int8: float | None
    windows: int
    precision: str = "fp32"
    reason: str = ""

    @property
    def metric_change(self) -> float | None:
        if self.metric_fp32 is None or self.metric_int8 is None:
            return None
        return self.metric_int8 - self.metric_fp32

    def cost(self) -> dict[str, Any]:
        """The manifest's `branches[].cost` for the chosen precision."""
        int8 = self.precision == "int8"
        return {"ms_1_thread": round(self.ms_1_thread_int8 if int8 else self.ms_1_thread_fp32, 3),
                "ms_2_threads": round(self.ms_2_threads_int8 if int8 else self.ms_2_threads_fp32, 3),
                "macs": self.macs}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metric_change": self.metric_change}


def decide(report: QuantReport) -> tuple[str, str]:
    """(precision, why) by the rule in the module docstring."""
    if report.ms_1_thread_int8 is None or report.top1_agreement is None:
        return "fp32", "int8 not measured"
    failures = []
    if report.top1_agreement < MIN_TOP1_AGREEMENT:
        failures.append(f"top-1 agreement {report.top1_agreement:.3f} < {MIN_TOP1_AGREEMENT}")
    change = report.metric_change
    if change is None:
        failures.append("metric change not measurable (no evaluation targets with positives and negatives)")
    elif change < -MAX_METRIC_LOSS:
        failures.append(f"metric falls {-change:.4f} > {MAX_METRIC_LOSS}")
    speedup = report.ms_1_thread_fp32 / report.ms_1_thread_int8
    if speedup < MIN_SPEEDUP:
        failures.append(f"int8 {report.ms_1_thread_int8:.2f} ms vs fp32 {report.ms_1_thread_fp32:.2f} ms on one "
                        f"thread ({speedup:.2f}x < {MIN_SPEEDUP}x)")
    if failures:
        return "fp32", "; ".join(failures)
    return "int8", (f"top-1 agreement {report.top1_agreement:.3f}, metric change {change:+.4f}, "
                    f"{speedup:.2f}x faster on one thread")


def measure_branch(branch: str, fp32_path: Path, int8_dir: Path, windows: np.ndarray, targets: np.ndarray | None = None,
                   calibration: np.ndarray | None = None, methods: tuple[str, ...] = METHODS,
                   metric: Callable[[np.ndarray, np.ndarray], float | None] = birdclef_metric) -> tuple[QuantReport, Path]:
    """Quantize, measure and decide one composed branch; returns the report and the file to ship.

    Args:
        windows: real evaluation windows [N, window]; `targets` [N, C] their labels (or None).
        calibration: real windows for the int8 scales (default: `windows`).
    """
    int8_dir.mkdir(parents=True, exist_ok=True)
    reference, ref_logits = run_outputs(session(fp32_path), windows, ["scores", "logits"])
    best = None
    for method in methods:
        path = quantize_branch(fp32_path, int8_dir / f"{branch}.int8.{method}.onnx",
                               windows if calibration is None else calibration, method)
        scores, logits = run_outputs(session(path), windows, ["scores", "logits"])
        key = (top1_agreement(logits, ref_logits), -relative_error(logits, ref_logits))
        if best is None or key > best[0]:
            best = (key, method, path, scores)
    (agreement, neg_error), method, int8_path, int8_scores = best
    one = latencies({"fp32": fp32_path, "int8": int8_path}, windows[0], 1)
    two = latencies({"fp32": fp32_path, "int8": int8_path}, windows[0], 2)
    report = QuantReport(
        branch=branch, bytes_fp32=Path(fp32_path).stat().st_size, bytes_int8=int8_path.stat().st_size,
        ms_1_thread_fp32=one["fp32"], ms_2_threads_fp32=two["fp32"], ms_1_thread_int8=one["int8"],
        ms_2_threads_int8=two["int8"], macs=count_macs(fp32_path), calibration=method,
        max_relative_error=-neg_error, top1_agreement=agreement,
        metric_fp32=None if targets is None else metric(reference, targets),
        metric_int8=None if targets is None else metric(int8_scores, targets), windows=len(windows),
    )
    report.precision, report.reason = decide(report)
    return report, (int8_path if report.precision == "int8" else Path(fp32_path))


def fp32_cost(branch: str, fp32_path: Path, window: np.ndarray) -> QuantReport:
    """The report of a branch kept fp32 without trying int8 (its cost only)."""
    one = latencies({"fp32": fp32_path}, window, 1)["fp32"]
    two = latencies({"fp32": fp32_path}, window, 2)["fp32"]
    return QuantReport(branch, Path(fp32_path).stat().st_size, None, one, two, None, None, count_macs(fp32_path),
                       None, None, None, None, None, 1, "fp32", "int8 not tried (--no-int8)")


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_report(reports: list[QuantReport], out_dir: Path) -> tuple[Path, Path]:
    """`quantization.json` and `quantization.md` in `out_dir`: one row per branch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "quantization.json", out_dir / "quantization.md"
    json_path.write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n", encoding="utf-8")
    lines = ["# Quantization per branch (static QDQ int8 vs fp32)", "",
             f"Rule: int8 iff top-1 agreement >= {MIN_TOP1_AGREEMENT}, metric loss <= {MAX_METRIC_LOSS} "
             f"(macro ROC-AUC), and >= {MIN_SPEEDUP}x faster on one thread; else fp32.", "",
             "| branch | size fp32 / int8 (kB) | ms 1 thread fp32 / int8 | ms 2 threads fp32 / int8 | MMAC | "
             "calibration | max rel. error | top-1 agreement | metric fp32 -> int8 | decision | why |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(
            f"| {r.branch} | {r.bytes_fp32 / 1e3:.0f} / {_fmt(r.bytes_int8 and r.bytes_int8 / 1e3, '.0f')} | "
            f"{r.ms_1_thread_fp32:.2f} / {_fmt(r.ms_1_thread_int8, '.2f')} | {r.ms_2_threads_fp32:.2f} / "
            f"{_fmt(r.ms_2_threads_int8, '.2f')} | {_fmt(r.macs and r.macs / 1e6, '.1f')} | {r.calibration or 'n/a'} | "
            f"{_fmt(r.max_relative_error, '.3g')} | {_fmt(r.top1_agreement, '.3f')} | {_fmt(r.metric_fp32, '.4f')} -> "
            f"{_fmt(r.metric_int8, '.4f')} | {r.precision} | {r.reason} |")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path
