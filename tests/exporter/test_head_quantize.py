"""The int8 gate: static QDQ int8 only where it keeps parity and is faster, measured on real windows."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from exporter.head_branch import compose_branch, load_artefact, run_outputs, session
from exporter.head_quantize import (MAX_METRIC_LOSS, QuantReport, birdclef_metric, count_macs, decide,
                                    measure_branch, quantize_branch, write_report)
from tests.exporter.test_head_export import tiny_head
from trainer.onnx_export import export_head


def fp32_branch(head, root, shared_data, windows=6):
    artefact = load_artefact(export_head(head, root / "artefact", windows=windows, data_dir=shared_data))
    path = root / "branch.onnx"
    onnx.save(compose_branch(artefact), str(path))
    return artefact, path


def numbers(**changes) -> QuantReport:
    """A report whose every number passes the rule, with `changes` applied."""
    base = dict(branch="b", bytes_fp32=1000, bytes_int8=400, ms_1_thread_fp32=10.0, ms_2_threads_fp32=6.0,
                ms_1_thread_int8=5.0, ms_2_threads_int8=3.0, macs=100, calibration="minmax", max_relative_error=0.01,
                top1_agreement=1.0, metric_fp32=0.80, metric_int8=0.799, windows=100)
    return QuantReport(**{**base, **changes})


def test_the_rule_on_measured_numbers():
    assert decide(numbers())[0] == "int8"
    precision, why = decide(numbers(top1_agreement=0.98))
    assert precision == "fp32" and "top-1 agreement" in why
    precision, why = decide(numbers(metric_int8=0.80 - MAX_METRIC_LOSS - 0.001))
    assert precision == "fp32" and "metric falls" in why
    precision, why = decide(numbers(ms_1_thread_int8=9.8))  # 2 % faster: within the noise, not worth the error
    assert precision == "fp32" and "one thread" in why
    precision, why = decide(numbers(metric_fp32=None, metric_int8=None))
    assert precision == "fp32" and "not measurable" in why


def test_the_metric_is_macro_roc_auc_over_classes_with_a_positive():
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.1, 0.2, 0.5], [0.4, 0.1, 0.5]])
    # class 0: positives 0.9, 0.4 vs negatives 0.2, 0.1 -> 1.0; class 1: positive 0.3 above all -> 1.0; class 2 unscored
    assert birdclef_metric(scores, targets) == 1.0
    scores[1, 1] = 0.15  # class 1's positive now beats negatives 0.1, 0.1 but not 0.2 -> AUC 2/3
    assert birdclef_metric(scores, targets) == pytest.approx((1.0 + 2 / 3) / 2)
    assert birdclef_metric(scores, np.zeros_like(targets)) is None


def test_the_front_end_stays_float_and_the_body_is_qdq(tmp_path, shared_data):
    artefact, path = fp32_branch(tiny_head("mel"), tmp_path, shared_data, windows=4)
    int8 = quantize_branch(path, tmp_path / "int8.onnx", artefact.waveform)
    model = onnx.load(str(int8))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "STFT" in ops
    assert not any(n.op_type == "QuantizeLinear" and n.input[0].startswith("log_mel/") for n in model.graph.node)
    mel_fp32, = run_outputs(session(path), artefact.waveform, ["mel"])
    mel_int8, = run_outputs(session(int8), artefact.waveform, ["mel"])
    np.testing.assert_array_equal(mel_fp32, mel_int8)  # the spectrogram is untouched
    assert count_macs(path) > 0


def test_a_sensitive_head_keeps_fp32(tmp_path, shared_data):
    """Classes whose logits differ by 1e-4 of their size: int8 rounding reorders them, so the gate refuses."""
    head = tiny_head("mel")
    with torch.no_grad():
        row = head.fc.weight[0].clone()
        for i in range(head.fc.weight.shape[0]):
            head.fc.weight[i] = row * 50.0 + 1e-3 * torch.randn_like(row)
        head.fc.bias.zero_()
    artefact, path = fp32_branch(head, tmp_path, shared_data)
    report, chosen = measure_branch("sensitive", path, tmp_path / "int8", artefact.waveform, artefact.targets)
    assert report.top1_agreement < 0.99, report
    assert report.precision == "fp32" and chosen == path and "top-1 agreement" in report.reason


def test_the_gate_measures_and_reports_a_tiny_head(tmp_path, shared_data):
    artefact, path = fp32_branch(tiny_head("waveform"), tmp_path, shared_data)
    report, chosen = measure_branch("wave", path, tmp_path / "int8", artefact.waveform, artefact.targets)
    assert report.calibration in ("minmax", "percentile") and report.windows == 6
    assert report.metric_fp32 is not None and report.ms_1_thread_int8 > 0 and report.bytes_int8 > 0
    assert (report.precision, report.reason) == decide(report)  # whatever was measured, the rule decided
    assert chosen == (path if report.precision == "fp32" else tmp_path / "int8" / f"wave.int8.{report.calibration}.onnx")
    json_path, md_path = write_report([report], tmp_path / "report")
    assert json.loads(json_path.read_text())[0]["precision"] == report.precision
    assert "| wave |" in md_path.read_text()
