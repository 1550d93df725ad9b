"""The fusion graph of the default bundle: pass-through, head, and the one explicit combination
(a label both BirdNET and the head score: the larger of the head's probability and BirdNET's
moved by an odds factor), against the numpy reference on real BirdNET outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from device.analysis import file_windows
from exporter.default_bundle import ARTEFACT, family_indices, site_mapping
from exporter.fusion import (
    EMBEDDING_INPUT, OUTPUT, SCORES_INPUT, build_fusion_model, combined_columns, fusion_reference, source_order,
)
from exporter.head_artefacts import shift
from trainer.birdnet_families import odds_factor
from exporter.head_artefacts import EmbeddingHead
from trainer.embeddings import birdnet_session, device_embedding


@pytest.fixture(scope="module")
def head() -> EmbeddingHead:
    return EmbeddingHead.load(ARTEFACT)


def test_a_label_both_score_is_refused_unless_combined_explicitly():
    with pytest.raises(ValueError, match=r"labels \['52884'\] are scored by BirdNET and by the head"):
        source_order(["bird", "52884"], ["frog", "52884"], ["bird", "frog", "52884"])
    with pytest.raises(ValueError, match=r"labels \['frog'\] are to be combined but are not scored by both"):
        source_order(["bird", "52884"], ["frog", "52884"], ["bird", "frog", "52884"], ["52884", "frog"])
    order = source_order(["bird", "52884"], ["frog", "52884"], ["52884", "bird", "frog"], ["52884"])
    assert order.tolist() == [4, 0, 2]  # [bird, 52884 (BirdNET), frog, 52884 (head), 52884 (combined)]


def test_the_odds_shift_puts_birdnets_threshold_on_the_heads():
    for head_threshold, birdnet_threshold in ((0.2, 0.382), (0.834, 0.286), (0.5, 0.5)):
        k = odds_factor(head_threshold, birdnet_threshold)
        assert shift(birdnet_threshold, k) == pytest.approx(head_threshold, abs=1e-12)
        grid = np.linspace(0, 1, 101)
        assert (np.diff(shift(grid, k)) > 0).all() and shift(0.0, k) == 0.0 and shift(1.0, k) == 1.0


@pytest.fixture(scope="module")
def real_inputs(head, shared_data, tmp_path_factory):
    """BirdNET's sigmoid scores (site birds, then the family maxima) and embeddings, max- and
    mean-pooled over crops as the engine pools them, on real crickets, katydids and frogs."""
    from device.engine.engine import make_crops
    from device.audio.resample import resample

    session, _ = birdnet_session(tmp_path_factory.mktemp("birdnet"))
    birds = list(site_mapping(head).birdnet_indices)
    families = family_indices(head)
    scores, embeddings = [], []
    for name in ("insects/Rthoptera_gryllus_campestris_XC753101.flac", "insects/Rthoptera_platycleis_grisea.flac",
                 "negatives/Rthoptera_hoplosphyrum_griseum_Mogoplistidae.flac", "colombian_frogs/Boana_pugnax.wav"):
        for window in list(file_windows(shared_data / "audio" / name))[:2]:
            crops = make_crops(resample(window.samples, window.sample_rate_hz, 48_000), 144_000,
                               round(window.real_samples * 48_000 / window.sample_rate_hz))
            logits = session.run(["logits"], {"waveform": crops})[0]
            columns = np.concatenate([logits[:, birds], *(logits[:, f].max(axis=1, keepdims=True) for f in families)],
                                     axis=1)
            scores.append((1 / (1 + np.exp(-columns))).max(axis=0))
            embeddings.append(device_embedding(session, window.samples, window.sample_rate_hz, window.real_samples))
    return np.array(scores, np.float32), np.array(embeddings, np.float32), birds


@pytest.fixture(scope="module")
def default_fusion(head):
    """The default bundle's fusion graph as onnxruntime runs it, with its BirdNET labels (site
    birds, then the family maxima), manifest labels and combined labels' odds factors."""
    bird_labels = list(site_mapping(head).site_labels) + list(head.birdnet_families)
    manifest = sorted(set(bird_labels) | set(head.label_ids))
    combined = {label: row["odds_factor"] for label, row in head.birdnet_families.items()}
    model = build_fusion_model(bird_labels, head.label_ids, manifest, head.mean, head.scale, head.weights, head.bias,
                               head.calibration, combined)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, bird_labels, manifest, combined


def test_the_combined_labels_are_the_larger_of_the_head_and_shifted_birdnet(head, real_inputs, default_fusion):
    scores, embeddings, birds = real_inputs
    session, bird_labels, manifest, combined = default_fusion
    fused = session.run([OUTPUT], {SCORES_INPUT: scores, EMBEDDING_INPUT: embeddings})[0]
    order = source_order(bird_labels, head.label_ids, manifest, list(combined))
    columns = combined_columns(bird_labels, head.label_ids, combined)
    np.testing.assert_allclose(fused, fusion_reference(scores, head.scores(embeddings), order, columns), atol=1e-6)
    head_scores = head.scores(embeddings)
    for label, k in combined.items():
        got = fused[:, manifest.index(label)]
        birdnet = scores[:, bird_labels.index(label)]
        expected = np.maximum(head_scores[:, head.label_ids.index(label)], k * birdnet / (k * birdnet + 1 - birdnet))
        np.testing.assert_allclose(got, expected, atol=1e-6)
    cricket = fused[0, manifest.index("52884")]  # Gryllus campestris: BirdNET's Fall Field Cricket 0.99
    assert scores[0, bird_labels.index("52884")] > 0.98 and cricket > 0.95
    # a label only one source scores is that source's, unchanged
    np.testing.assert_array_equal(fused[:, manifest.index(bird_labels[0])], scores[:, 0])
    frog = head.label_ids.index("555142")
    np.testing.assert_allclose(fused[:, manifest.index("555142")], head_scores[:, frog], atol=1e-6)


def test_saturated_birdnet_scores_stay_finite(head, real_inputs, default_fusion):
    """float32 sigmoids reach exactly 0 and 1 (|logit| > 17 and > 88): the shift has no log to blow up."""
    scores, embeddings, _ = real_inputs
    session, bird_labels, manifest, combined = default_fusion
    for value in (0.0, 1.0):
        saturated = scores.copy()
        saturated[:, -len(combined):] = value
        fused = session.run([OUTPUT], {SCORES_INPUT: saturated, EMBEDDING_INPUT: embeddings})[0]
        assert np.isfinite(fused).all()
        for label in combined:
            column = fused[:, manifest.index(label)]
            own = head.scores(embeddings)[:, head.label_ids.index(label)]
            np.testing.assert_allclose(column, np.ones_like(own) if value else own, atol=1e-6)


def test_bad_odds_factors_are_refused(head):
    bird_labels = ["bird", "52884"]
    labels = ["bird", *head.label_ids]
    for k in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="odds factors"):
            build_fusion_model(bird_labels, head.label_ids, labels, head.mean, head.scale, head.weights, head.bias,
                               head.calibration, {"52884": k})
