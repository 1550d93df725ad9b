"""The site-restricted model: the same network, logits only for the site's classes."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.birdnet.labels import map_to_taxonomy, read_birdnet_labels, read_taxonomy
from exporter.birdnet.restrict import restrict_to_classes
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
