"""Every head of the registry, at a tiny size, through the whole export: torch -> the artefact ->
the device's front end + body + sigmoid in one ONNX graph -> onnxruntime equal to torch on real
windows (relative error under 1e-4) -> the int8 gate measured and decided by its rule.

Tiny sizes keep it to seconds a head; `python -m bench.heads_cost` runs the same path at the
default sizes for the costs."""

from __future__ import annotations

import onnx
import pytest
import torch

from exporter.head_branch import branch_parity, compose_branch, load_artefact
from exporter.head_quantize import decide, measure_branch
from trainer.heads import build_head
from trainer.onnx_export import export_head

LABELS = ["21211", "41663", "48124", "50186", "52884"]
WINDOW = 64_000  # 2 s: the bodies pool over time, so any window length exports
TINY = {
    "raw_cnn": {"width": 8, "depth": 1, "stages": 3, "dropout": 0.0},
    "panns_mlp": {"width_divisor": 16, "hidden": 32, "dropout": 0.0},
    "effnet_b3_lora": {"model_name": "tinynet_e", "lora_rank": 2},
    "resnet50": {"model_name": "resnet10t", "timm_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 8},
                 "width_divisor": 16, "dropout": 0.0},
}


@pytest.mark.filterwarnings("ignore:effnet_b3_lora. no pretrained_path")  # the tiny base is random on purpose
@pytest.mark.parametrize("name", list(TINY))
def test_the_head_exports_with_parity_and_the_int8_gate_decides(name, tmp_path, shared_data):
    torch.manual_seed(0)
    head = build_head(name, labels=LABELS, window_samples=WINDOW, **TINY[name]).eval()
    artefact = load_artefact(export_head(head, tmp_path / "artefact", windows=4, data_dir=shared_data))
    assert artefact.waveform.shape == (4, WINDOW)
    path = tmp_path / "branch.onnx"
    onnx.save(compose_branch(artefact), str(path))
    results = branch_parity(artefact, path, branch=name)
    assert results and all(r.passed for r in results), [r.describe() for r in results]
    report, chosen = measure_branch(name, path, tmp_path / "int8", artefact.waveform, artefact.targets)
    assert report.ms_1_thread_fp32 > 0 and report.bytes_int8 > 0 and report.top1_agreement is not None
    assert (report.precision, report.reason) == decide(report)
    assert chosen.is_file()
