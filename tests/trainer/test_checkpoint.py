"""The head checkpoint: a round trip gives the same outputs on real windows, writes are atomic,
RNG states come back, and every bad file gets an error naming it."""

from __future__ import annotations

import importlib
import random

import numpy as np
import pytest
import torch

from tests.trainer.fit_fixtures import TinyMelHead, register_tiny_head, tiny_cache
from trainer.checkpoint import (
    BIG_KEYS, FORMAT, atomic_save, load_head, read_checkpoint, restore_rng, rng_state, save_checkpoint,
)
from trainer.heads import HEADS, build_head


@pytest.fixture(scope="module")
def real_windows(tmp_path_factory):
    examples, cache, labels = tiny_cache(tmp_path_factory)
    wave = np.stack([cache.window(e.clip_id, 8_000, 32_000) for e in examples[:6]])
    return torch.from_numpy(wave), labels


@pytest.fixture(autouse=True)
def tiny_head(monkeypatch):
    register_tiny_head(monkeypatch)


TINY = {"tiny_mel": {}, "raw_cnn": {"width": 8, "depth": 1, "stages": 2}}
"""Small configs of the heads round-tripped here (the defaults hold millions of parameters)."""


def importable_heads() -> list[str]:
    """The registered heads of `TINY` whose module exists yet (the heads land in parallel)."""
    names = []
    for name in ("raw_cnn",):
        try:
            importlib.import_module(HEADS[name].split(":")[0])
        except ModuleNotFoundError:
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("name", ["tiny_mel"] + importable_heads())
def test_a_round_trip_gives_the_same_outputs(real_windows, tmp_path, name):
    wave, labels = real_windows
    torch.manual_seed(0)
    model = build_head(name, labels=labels, window_samples=32_000, **TINY[name]).eval()
    with torch.no_grad():
        expected = model(wave)
    path = save_checkpoint(tmp_path / "head.pt", model, epoch=3, step=12, thresholds={lb: 0.5 for lb in labels},
                           evaluation={"birdclef": np.float64(0.75)}, fit_config={"lr": 1e-3})
    loaded, meta = load_head(path)
    assert type(loaded) is type(model) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(wave), expected)
    assert meta["format"] == FORMAT and meta["head"] == name and meta["epoch"] == 3 and meta["step"] == 12
    assert meta["config"]["labels"] == labels and meta["evaluation"] == {"birdclef": 0.75}
    assert not set(BIG_KEYS) & set(meta)
    assert [p.name for p in tmp_path.iterdir()] == ["head.pt"]  # no temporary file left


def test_an_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = TinyMelHead(["a", "b"])
    path = save_checkpoint(tmp_path / "last.pt", model, epoch=1)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, epoch=2)
    monkeypatch.undo()
    register_tiny_head(monkeypatch)
    assert read_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_come_back():
    state = rng_state()
    before = (random.random(), np.random.random(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == before


def test_rng_state_survives_the_weights_only_file(tmp_path):
    state = rng_state()
    atomic_save({"format": "x", "rng": save_plain(state)}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    restore_rng(loaded)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


def save_plain(state):
    from trainer.checkpoint import plain

    return plain(state)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt: no checkpoint file"):
        load_head(tmp_path / "missing.pt")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="notes.txt: not a head checkpoint"):
        load_head(text)
    atomic_save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt: not a head checkpoint \\(no 'format' key"):
        load_head(tmp_path / "foreign.pt")
    atomic_save({"format": "explorer-head-checkpoint/99", "head": "tiny_mel", "config": {}, "model": {}},
                tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format 'explorer-head-checkpoint/99' is not"):
        load_head(tmp_path / "future.pt")
    model = TinyMelHead(["a", "b"])
    path = save_checkpoint(tmp_path / "renamed.pt", model, head="no_such_head")
    with pytest.raises(ValueError, match="renamed.pt: unknown head 'no_such_head'"):
        load_head(path)
    state = read_checkpoint(path)
    state["head"], state["config"]["channels"] = "tiny_mel", 4
    atomic_save(state, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt: weights do not fit a tiny_mel head"):
        load_head(tmp_path / "mismatch.pt")
