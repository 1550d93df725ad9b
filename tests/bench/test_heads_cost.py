"""`python -m bench.heads_cost --smoke` runs the whole path (export, compose, quantize, time) and prints its table.

A smoke test only: tiny heads on 1 s windows, 2 repeats; no timing is asserted (benchmarks measure
speed, tests do not). The data home is the test's empty one, so the default bundle is absent and
the script must fall back to the front end as its baseline and say so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = ("log-mel front end (one copy)", "raw_cnn", "panns_mlp", "effnet_b3_lora", "resnet50",
        "CNN14 + front end alone", "resnet50 (shared CNN14)", "meta_mlp fusion")


def _cells(line: str, name: str) -> list[str]:
    return line[len(name):].split()


@pytest.mark.slow
def test_the_heads_benchmark_runs_every_branch_and_prints_its_table(shared_data):
    done = subprocess.run([sys.executable, "-m", "bench.heads_cost", "--smoke", "--shared", str(shared_data)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "206 labels" in out
    assert "BirdNET: no default bundle installed" in out and "the baseline is the front end alone" in out
    lines = out.splitlines()
    for name in ROWS:
        row = next((line for line in lines if line.startswith(name + " ")), None)
        assert row is not None, f"no table row for {name}:\n{out}"
        cells = _cells(row, name)
        gmac, sizes, one_fp32, _, two_fp32, _, best, ratio = cells[:8]
        assert float(gmac) >= 0 and float(one_fp32) > 0 and float(two_fp32) > 0 and float(best) > 0
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
        fp32_mb, int8_mb = sizes.split("/")
        assert float(fp32_mb) >= 0
        if name in ("raw_cnn", "panns_mlp", "effnet_b3_lora", "resnet50"):
            assert int8_mb != "-", f"{name} has no int8 copy: {row}"
            assert "top-1" in row and ("-> int8" in row or "-> fp32" in row), row
    baseline = next(line for line in lines if line.startswith("log-mel front end"))
    assert _cells(baseline, "log-mel front end (one copy)")[7] == "1.00x"  # the baseline against itself
    for variant in ("bundle, resnet50 recomputes CNN14", "bundle, resnet50 shares the embedding"):
        row = next((line for line in lines if line.startswith(variant)), None)
        assert row is not None, f"no bundle sum {variant!r}:\n{out}"
        assert all(float(v) > 0 for v in row[len(variant):].split())
    assert "say nothing about the 200 ms budget" in out
