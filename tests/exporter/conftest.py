"""Fixtures for the exporter tests: the committed demo head, its graph, and a signing key."""

from __future__ import annotations

import pytest

from exporter.demo_bundle import ARTEFACT, example_recordings
from exporter.frontend import LogMelParams
from exporter.linear_head import build_linear_head_model
from exporter.signing import generate_keypair
from exporter.head_artefacts import TinyHead


@pytest.fixture(scope="session")
def demo_head() -> TinyHead:
    return TinyHead.load(ARTEFACT)


def head_model_bytes(head: TinyHead, bias_shift: float = 0.0) -> bytes:
    """The branch ONNX for `head`, optionally with every bias shifted (a wrong export)."""
    params = LogMelParams.from_manifest(head.front_end)
    model = build_linear_head_model(params, head.window_samples, head.mean, head.scale, head.weights, head.bias + bias_shift)
    return model.SerializeToString()


@pytest.fixture(scope="session")
def demo_model_bytes(demo_head) -> bytes:
    return head_model_bytes(demo_head)


@pytest.fixture(scope="session")
def build_head_model():
    return head_model_bytes


@pytest.fixture(scope="session")
def check_recordings():
    return example_recordings()


@pytest.fixture
def signing_key(tmp_path_factory):
    """A fresh (private key, public key) pair outside any repository."""
    return generate_keypair(tmp_path_factory.mktemp("keys"), "test-signer")
