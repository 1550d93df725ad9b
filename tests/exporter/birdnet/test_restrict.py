"""The site-restricted model: the same network, logits only for the site's classes, and BirdNET's
non-species classes (Human vocal, Engine, ...) kept as a second output, and family columns (the
maximum of BirdNET's own cricket or katydid species' logits) after the site classes."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.birdnet.labels import map_to_taxonomy, read_birdnet_labels, read_taxonomy
from exporter.birdnet.restrict import CONTEXT_CLASSES, CONTEXT_NAME, context_indices, restrict_to_classes
from exporter.birdnet.runners import OnnxBirdnet


@pytest.fixture(scope="module")
def site_indices(shared_data):
    return map_to_taxonomy(read_birdnet_labels(), read_taxonomy(shared_data / "taxonomy.csv")).birdnet_indices


@pytest.mark.parametrize("method", ["slice", "gather"])
def test_restricted_logits_are_the_full_logits_at_the_site_indices(birdnet, soundscape_windows, site_indices, tmp_path, method):
    path = restrict_to_classes(birdnet.onnx_path, tmp_path / f"{method}.onnx", site_indices, method)
    full_logits, full_emb = OnnxBirdnet(birdnet.onnx_path).run(soundscape_windows[:2])
    logits, emb = OnnxBirdnet(path).run(soundscape_windows[:2])
    assert logits.shape == (2, 145)
    assert np.array_equal(logits, full_logits[:, list(site_indices)])
    assert np.array_equal(emb, full_emb)


def test_slicing_the_classifier_halves_the_file(birdnet, site_indices, tmp_path):
    path = restrict_to_classes(birdnet.onnx_path, tmp_path / "site.onnx", site_indices)
    # The 6522 x 1024 float32 classifier is ~26.7 MB of the ~55 MB model.
    saved = birdnet.onnx_path.stat().st_size - path.stat().st_size
    assert saved > 26_000_000


@pytest.mark.parametrize("indices", [[], [0, 0], [6522], [-1]])
def test_bad_class_indices_are_refused(birdnet, tmp_path, indices):
    with pytest.raises(ValueError, match="class indices must be distinct and within 0..6521"):
        restrict_to_classes(birdnet.onnx_path, tmp_path / "x.onnx", indices)
    assert not (tmp_path / "x.onnx").exists()


CONTEXT = ("Human vocal", "Human non-vocal", "Human whistle", "Dog", "Engine", "Siren", "Gun", "Fireworks",
           "Power tools", "Noise")


def test_the_context_classes_are_matched_by_their_whole_name():
    labels = read_birdnet_labels()
    assert CONTEXT_CLASSES == CONTEXT
    found = context_indices(labels)
    assert [labels[i].scientific_name for i in found] == list(CONTEXT)
    assert found[:3] == [2819, 2818, 2820] and found[3] == 1949 and found[4] == 2143
    assert any("Power" in label.common_name and label.index not in found for label in labels)  # Powerful Owl: a bird
    with pytest.raises(ValueError, match="0 classes named exactly 'Owl'"):
        context_indices(labels, ("Owl",))


@pytest.mark.parametrize("method", ["slice", "gather"])
def test_the_context_output_is_the_full_logits_at_the_context_indices(birdnet, soundscape_windows, site_indices,
                                                                      tmp_path, method):
    context = context_indices(read_birdnet_labels())
    path = restrict_to_classes(birdnet.onnx_path, tmp_path / f"{method}.onnx", site_indices, method, context=context)
    session = OnnxBirdnet(path).session
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding", CONTEXT_NAME]
    assert session.get_outputs()[2].shape == ["batch", len(CONTEXT)]
    full = OnnxBirdnet(birdnet.onnx_path).session
    full_logits, full_emb = full.run(["logits", "embedding"], {"waveform": soundscape_windows[:2]})
    logits, emb, context_logits = session.run(None, {"waveform": soundscape_windows[:2]})
    assert np.array_equal(context_logits, full_logits[:, context])
    assert np.array_equal(logits, full_logits[:, list(site_indices)]) and np.array_equal(emb, full_emb)


def test_keeping_the_context_columns_barely_grows_the_file(birdnet, site_indices, tmp_path):
    bare = restrict_to_classes(birdnet.onnx_path, tmp_path / "bare.onnx", site_indices)
    kept = restrict_to_classes(birdnet.onnx_path, tmp_path / "kept.onnx", site_indices,
                               context=context_indices(read_birdnet_labels()))
    # Ten columns of 1024 float32 weights and their biases: 41 KB (plus names).
    assert 40_000 < kept.stat().st_size - bare.stat().st_size < 45_000


@pytest.mark.parametrize("context", [[], [2819, 2819], [6522]])
def test_bad_context_indices_are_refused(birdnet, site_indices, tmp_path, context):
    with pytest.raises(ValueError, match="context class indices must be distinct and within 0..6521"):
        restrict_to_classes(birdnet.onnx_path, tmp_path / "x.onnx", site_indices, context=context)
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def families():
    """BirdNET's four Gryllus species and its eighteen katydids (trainer.birdnet_families)."""
    from exporter.birdnet.labels import species_indices
    from trainer.birdnet_families import family_species

    labels = read_birdnet_labels()
    return [species_indices(labels, names) for names in family_species(labels).values()]


@pytest.mark.parametrize("method", ["slice", "gather"])
def test_family_columns_are_the_max_of_their_species_logits(birdnet, soundscape_windows, site_indices, families,
                                                           tmp_path, method):
    """After the site classes, one column per family: the largest of its species' logits (so after
    the device's sigmoid, the largest of their probabilities)."""
    assert [len(f) for f in families] == [4, 18]
    context = context_indices(read_birdnet_labels())
    path = restrict_to_classes(birdnet.onnx_path, tmp_path / f"{method}.onnx", site_indices, method, context=context,
                               families=families)
    session = OnnxBirdnet(path).session
    assert session.get_outputs()[0].shape == ["batch", 145 + 2]
    full_logits, full_emb = OnnxBirdnet(birdnet.onnx_path).session.run(["logits", "embedding"],
                                                                       {"waveform": soundscape_windows})
    logits, emb, context_logits = session.run(None, {"waveform": soundscape_windows})
    assert np.array_equal(logits[:, :145], full_logits[:, list(site_indices)])
    for k, family in enumerate(families):
        assert np.array_equal(logits[:, 145 + k], full_logits[:, family].max(axis=1))
    assert np.array_equal(context_logits, full_logits[:, context]) and np.array_equal(emb, full_emb)


def test_keeping_the_family_columns_barely_grows_the_file(birdnet, site_indices, families, tmp_path):
    bare = restrict_to_classes(birdnet.onnx_path, tmp_path / "bare.onnx", site_indices)
    kept = restrict_to_classes(birdnet.onnx_path, tmp_path / "kept.onnx", site_indices, families=families)
    # 22 columns of 1024 float32 weights and their biases: 90 KB (plus a few small nodes).
    assert 90_000 < kept.stat().st_size - bare.stat().st_size < 95_000


@pytest.mark.parametrize("family", [[], [2601, 2601], [6522]])
def test_bad_family_indices_are_refused(birdnet, site_indices, tmp_path, family):
    with pytest.raises(ValueError, match="family class indices must be distinct and within 0..6521"):
        restrict_to_classes(birdnet.onnx_path, tmp_path / "x.onnx", site_indices, families=[family])
    assert not (tmp_path / "x.onnx").exists()
