"""A real `torchrun --nproc-per-node 2` fit (gloo on the CPU), and the GPU benchmark's CPU smoke run.

Each rank runs `trainer.fit.fit` on the tiny real cache; the rank script (written below) records
the head each rank built and every checkpoint write, so the test can check what DDP promises:
both ranks finish, only rank 0 writes, and the trained parameters are equal on both ranks (and
equal to the checkpoint rank 0 wrote).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.trainer.fit_fixtures import WINDOW, tiny_cache

REPO = Path(__file__).resolve().parents[2]
TINY_RAW = {"window_samples": WINDOW, "width": 8, "depth": 1, "stages": 2, "dropout": 0.0}

RANK_SCRIPT = r'''
import json, os, sys
from pathlib import Path

import torch

import trainer.fit as fit_module
import trainer.heads as heads
from trainer import distributed
from trainer.jobs import DataSource, fit_config

spec = json.loads(Path(sys.argv[1]).read_text())
rank = int(os.environ["RANK"])
built, saves = [], []
build_head = heads.build_head
heads.build_head = lambda *a, **k: built.append(build_head(*a, **k)) or built[-1]
save_checkpoint = fit_module.save_checkpoint
fit_module.save_checkpoint = lambda path, **k: saves.append(str(path)) or save_checkpoint(path, **k)

examples, _, labels, cache = DataSource(**spec["data"]).load()
result = fit_module.fit(fit_config(spec["config"]), examples, cache, Path(spec["out_dir"]), labels=labels,
                        progress=False)
world = distributed.world_size()
weights = {k: v.detach().clone() for k, v in built[0].named_parameters()}
torch.save(weights, Path(spec["out_dir"]).parent / f"rank{rank}.pt")
Path(spec["out_dir"]).parent.joinpath(f"rank{rank}.json").write_text(json.dumps(
    {"world": world, "saves": saves, "epochs": result.epochs_run}))
distributed.close()
'''


def tiny_list(tmp_path_factory, root: Path) -> tuple[Path, Path]:
    """The tiny real examples as a labelled list (what `DataSource(lists=...)` reads) and their cache."""
    examples, cache, _ = tiny_cache(tmp_path_factory)
    csv = root / "tiny.csv"
    lines = ["path,label,start_s,end_s,group"]
    lines += [f"{e.path},{e.primary or ''},{e.start_s},{e.end_s},{e.group_id}" for e in examples]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv, cache.root


def test_torchrun_two_ranks_train_the_same_weights_and_only_rank_0_writes(tmp_path_factory, tmp_path):
    csv, cache_root = tiny_list(tmp_path_factory, tmp_path)
    out = tmp_path / "fit"
    config = {"head": "raw_cnn", "head_config": TINY_RAW, "epochs": 2, "batch_size": 4, "steps_per_epoch": 2,
              "lr": 3e-3, "precision": "fp32", "workers": 0, "device": "cpu", "patience": 0, "balanced": False}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": config, "out_dir": str(out),
                                "data": {"cache": str(cache_root), "lists": [str(csv)]}}))
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), str(script), str(spec)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["epochs"] for r in ranks] == [2, 2]
    assert ranks[1]["saves"] == [] and ranks[0]["saves"]
    assert set(ranks[0]["saves"]) <= {str(out / "last.pt"), str(out / "best.pt")}
    assert ranks[0]["saves"].count(str(out / "last.pt")) == 2  # one per epoch
    assert "last.pt" in {p.name for p in out.iterdir()}
    zero, one = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert zero.keys() == one.keys()
    for name in zero:
        assert torch.equal(zero[name], one[name]), name  # DDP's all-reduced gradients keep ranks in step
    written = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["model"]
    for name in zero:
        assert torch.equal(written[name], zero[name]), name
    initial = {k: v for k, v in _fresh_head(config).named_parameters()}
    assert any(not torch.equal(initial[k], zero[k]) for k in zero)  # it trained


def _fresh_head(config):
    from trainer.heads import build_head
    from tests.trainer.fit_fixtures import LABELS

    torch.manual_seed(0)
    return build_head("raw_cnn", labels=list(LABELS), **config["head_config"])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_gpu_benchmark_runs_every_head_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.gpu_train", "--cpu-smoke", "--cache", str(tmp_path / "cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("RawAudioCNN", "CNN14", "EfficientNet-B3", "ResNet50"):
        assert name in done.stdout
    assert "windows/s" in done.stdout
