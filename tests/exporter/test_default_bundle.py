"""`explorer export default-bundle`: BirdNET for the birds, the embedding head for the frogs,
the three insect families and the two mammals, and for Gryllidae and Tettigoniidae the larger
of the head's score and BirdNET's own family maximum (moved onto the head's scale).

Built once for this module through the real command (about 7 s: convert, slice, LiteRT and
fusion checks on the example recordings, sign, install).
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from device.analysis import file_windows
from device.bundle.verify import verify_bundle
from device.cli.main import cli
from device.engine.engine import Engine
from device.home import ExplorerHome
from exporter.bundle_writer import ParityError, write_bundle
from exporter.default_bundle import (
    ARTEFACT, BIRD_THRESHOLD, BIRDNET_FILE, FUSION_FILE, LICENSE, NAME, LiteRtMissing, birdnet_check, branch_labels,
    build_default_bundle, default_manifest, family_indices, site_mapping,
)
from exporter.demo_bundle import EXAMPLES, development_key, example_recordings
from exporter.fusion import build_fusion_model, source_order
from exporter.birdnet.labels import species_indices
from trainer.birdnet_families import FAMILY_GENERA, window_species_scores
from trainer.embeddings import birdnet_session, device_embedding
from exporter.head_artefacts import EmbeddingHead


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("home")
    result = CliRunner().invoke(cli, ["--home", str(root), "export", "default-bundle"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    home = ExplorerHome.resolve(root)
    return home, home.active_bundle(), result.output


@pytest.fixture(scope="module")
def head() -> EmbeddingHead:
    return EmbeddingHead.load(ARTEFACT)


def test_the_command_builds_installs_and_activates_it(built):
    home, path, output = built
    assert "default bundle active:" in output and str(path) in output
    assert path.parent == home.bundles and path.name.startswith(f"{NAME}-1.0.0+")
    assert verify_bundle(path, home.trusted_keys).manifest.name == NAME


def test_birds_come_from_birdnet_and_the_rest_from_the_head(built, head, shared_data):
    home, path, _ = built
    manifest = verify_bundle(path, home.trusted_keys).manifest
    taxonomy = list(csv.DictReader(open(shared_data / "taxonomy.csv", newline="")))
    classes = {row["primary_label"]: row["class_name"] for row in taxonomy}
    order = [row["primary_label"] for row in taxonomy]
    assert list(manifest.label_ids) == sorted(manifest.label_ids, key=order.index)
    (branch,) = manifest.branches
    assert branch.activation == "sigmoid" and branch.embedding_dim == 1024 and branch.input.sample_rate_hz == 48_000
    # 145 site birds, then the two families BirdNET also scores (the max of its own species)
    assert len(branch.score_labels) == 147 and list(branch.score_labels[145:]) == ["48124", "52884"]
    assert {classes[label] for label in branch.score_labels[:145]} == {"Aves"}
    assert "littin1" in branch.score_labels and "shghum1" not in manifest.label_ids
    assert set(manifest.label_ids) == set(branch.score_labels) | set(head.label_ids)
    assert manifest.fusion.kind == "onnx"
    assert manifest.fusion.inputs == (("birdnet", "scores"), ("birdnet", "embedding"))
    assert manifest.provenance["coverage"] == {"Aves": [145, 146], "Amphibia": [14, 34], "Insecta": [3, 17],
                                               "Mammalia": [2, 9]}
    assert len(manifest.labels) == 164 and {classes[label] for label in head.label_ids} == {"Amphibia", "Insecta",
                                                                                             "Mammalia"}
    assert manifest.default_threshold == BIRD_THRESHOLD
    assert manifest.label_thresholds == {label: round(float(t), 4) for label, t in zip(head.label_ids, head.thresholds)}
    families = manifest.provenance["birdnet_families"]
    assert list(families) == ["48124", "52884"] == list(head.birdnet_families)
    assert families["52884"]["species"] == ["Gryllus assimilis", "Gryllus fultoni", "Gryllus pennsylvanicus",
                                            "Gryllus rubens"]
    assert len(families["48124"]["species"]) == 18
    assert {name.split()[0] for name in families["48124"]["species"]} == set(FAMILY_GENERA["48124"])


def test_licence_and_attribution_travel_with_it(built):
    home, path, _ = built
    manifest = verify_bundle(path, home.trusted_keys).manifest
    assert manifest.license == LICENSE == "CC BY-NC-SA 4.0"
    credits = ("BirdNET V2.4", "Kahl", "CC BY-NC-SA 4.0", "Allobates femoralis", "colombianfrogs", "Rthoptera",
               "CC BY-NC 4.0", "Cesare Brizio", "David Marshall", "About Zoos", "jnargus", "Non-commercial")
    for credit in credits:
        assert credit in manifest.attribution, credit
    assert manifest.provenance["rebuild"].startswith("python -m trainer.embedding_head")
    terms = manifest.provenance["data_terms"]
    assert "CC BY-NC 4.0" in terms["panchorivasf/Rthoptera (katydids, crickets, a scaly cricket)"]


def test_every_label_says_how_much_audio_taught_it(built, head):
    """The head's labels carry the artefact's counts; BirdNET's birds say BirdNET publishes none.
    The guide's screen marks "few training recordings" below three independent recordings."""
    home, path, _ = built
    manifest = verify_bundle(path, home.trusted_keys).manifest
    by_id = {label.primary_label: label for label in manifest.labels}
    for lid, support in head.training["support"].items():
        training = by_id[lid].training
        assert (training.recordings, training.seconds, list(training.sources), training.note) == \
               (support["recordings"], support["seconds"], support["sources"], support["note"]), lid
    jaguar, cicadas, femoralis = by_id["41970"].training, by_id["50186"].training, by_id["21211"].training
    assert jaguar.few and jaguar.recordings == 1 and "weak data" in jaguar.note
    assert not cicadas.few and cicadas.recordings == 6 and not femoralis.few
    birds = [label for label in manifest.labels if label.class_name == "Aves"]
    assert len(birds) == 145 and "littin1" in {b.primary_label for b in birds}
    for bird in birds:
        assert bird.training.recordings is None and bird.training.seconds is None and not bird.training.few
        assert bird.training.sources[0].startswith("BirdNET V2.4 (Kahl et al. 2021)")
    assert sum(label.training.few for label in manifest.labels) == 17  # 13 frogs, 2 families, 2 mammals


def test_every_check_passed_on_the_example_recordings(built):
    home, path, _ = built
    provenance = verify_bundle(path, home.trusted_keys).manifest.provenance
    parity = provenance["parity"]
    assert {p["output"] for p in parity} == {"logits", "embedding", "logits/top5", "fusion", "context_logits"}
    assert any("LiteRT" in p["reference"] for p in parity) and provenance["checks"] == "litert+onnx"
    assert all(p["passed"] for p in parity)
    # A fresh clone has no ../shared/data: the checks ran on the repository's examples/.
    assert set(parity[0]["recordings"]) == set(EXAMPLES)


def test_rebuilding_reuses_the_installed_bundle(built):
    home, path, _ = built
    before = (path / "manifest.json").read_bytes()
    lines: list[str] = []
    assert build_default_bundle(home, progress=lines.append) == path
    assert (path / "manifest.json").read_bytes() == before and "already installed" in lines[-1]


def test_the_recipes_code_is_part_of_the_version(tmp_path):
    from exporter.default_bundle import RECIPE, recipe_digest

    assert any(p.name == "spectrogram_tail.py" for p in RECIPE) and any(p.name == "fusion.py" for p in RECIPE)
    copies = []
    for path in RECIPE:
        copies.append(tmp_path / path.name)
        copies[-1].write_bytes(path.read_bytes())
    assert recipe_digest(copies) == recipe_digest()
    copies[0].write_bytes(copies[0].read_bytes() + b"# a changed conversion\n")
    assert recipe_digest(copies) != recipe_digest()


def test_training_and_the_device_compute_the_same_embedding_and_scores(built, head, shared_data, tmp_path):
    """The head was trained on `device_embedding`; the engine must feed the fusion the same vector
    (and the same BirdNET family scores, `trainer.birdnet_families.window_species_scores`)."""
    home, path, _ = built
    engine = Engine(verify_bundle(path, home.trusted_keys), threads=1)
    session, _ = birdnet_session(tmp_path)
    families = family_indices(head)
    windows = list(file_windows(shared_data / "audio/birds/spinetail.wav"))  # 44.1 kHz, last window padded
    windows.append(next(iter(file_windows(shared_data / "audio/birdclef_train_audio/4.ogg"))))  # a frog, 32 kHz
    assert windows[-2].real_samples < len(windows[-2].samples)
    for window in windows:
        prediction = engine.predict(window)
        trained = device_embedding(session, window.samples, window.sample_rate_hz, window.real_samples)
        np.testing.assert_allclose(prediction.embedding, trained, atol=1e-5)
        family = [[window_species_scores(session, window.samples, window.sample_rate_hz, species,
                                         window.real_samples).max() for species in families]]
        frogs = [prediction.labels.index(label) for label in head.label_ids]
        np.testing.assert_allclose(prediction.scores[frogs], head.combined_scores(trained[None], family)[0], atol=1e-5)
    assert prediction.scores[prediction.labels.index("21211")] >= engine.manifest.threshold("21211")


def _manifest_and_checks(home: ExplorerHome, head: EmbeddingHead):
    mapping = site_mapping(head)
    birds = list(mapping.site_labels)
    manifest = default_manifest(head, birds, "0.0.0-test", {})
    columns = branch_labels(head, birds)
    order = source_order(columns, head.label_ids, [label["primary_label"] for label in manifest["labels"]],
                         list(head.birdnet_families))
    check = birdnet_check(head, list(mapping.birdnet_indices), _tflite(), example_recordings()[:2], False, order)
    return manifest, columns, order, check, development_key(home)


def _odds(head: EmbeddingHead, factor: float = 1.0) -> dict[str, float]:
    return {label: row["odds_factor"] * factor for label, row in head.birdnet_families.items()}


def _tflite():
    from exporter.birdnet.convert import find_birdnet_file

    return find_birdnet_file()


def test_a_wrong_fusion_graph_fails_its_check_and_writes_nothing(built, head, tmp_path):
    home, path, _ = built
    manifest, columns, _, check, key = _manifest_and_checks(home, head)
    labels = [label["primary_label"] for label in manifest["labels"]]
    wrong = build_fusion_model(columns, head.label_ids, labels, head.mean, head.scale, head.weights, head.bias + 0.5,
                               head.calibration, _odds(head))
    target = tmp_path / "bundles" / "wrong"
    files = {BIRDNET_FILE: path / BIRDNET_FILE, FUSION_FILE: wrong.SerializeToString()}
    with pytest.raises(ParityError, match="'fusion'"):
        write_bundle(target, manifest, files, key, [check])
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_wrong_family_combination_fails_its_check_and_writes_nothing(built, head, tmp_path):
    """The example recordings hold no cricket or katydid, so the check also sweeps the family
    columns (`exporter.default_checks.FAMILY_SWEEP`): an odds factor 10 % off is caught."""
    home, path, _ = built
    manifest, columns, _, check, key = _manifest_and_checks(home, head)
    labels = [label["primary_label"] for label in manifest["labels"]]
    wrong = build_fusion_model(columns, head.label_ids, labels, head.mean, head.scale, head.weights, head.bias,
                               head.calibration, _odds(head, 1.1))
    target = tmp_path / "bundles" / "wrong-odds"
    files = {BIRDNET_FILE: path / BIRDNET_FILE, FUSION_FILE: wrong.SerializeToString()}
    with pytest.raises(ParityError, match="'fusion'"):
        write_bundle(target, manifest, files, key, [check])
    assert not target.exists()


def test_a_wrongly_sliced_birdnet_fails_its_check_and_writes_nothing(built, head, tmp_path):
    from exporter.birdnet.convert import convert_birdnet
    from exporter.birdnet.labels import read_birdnet_labels
    from exporter.birdnet.restrict import context_indices, restrict_to_classes

    home, path, _ = built
    manifest, _, _, check, key = _manifest_and_checks(home, head)
    indices = list(site_mapping(head).birdnet_indices)
    full = convert_birdnet(tmp_path / "full.onnx").onnx_path
    families = family_indices(head)
    shuffled = restrict_to_classes(full, tmp_path / "shuffled.onnx", indices[1:] + indices[:1],  # off by one class
                                   families=families)
    target = tmp_path / "bundles" / "shuffled"
    files = {BIRDNET_FILE: shuffled, FUSION_FILE: path / FUSION_FILE}
    with pytest.raises(ParityError, match="'logits'"):
        write_bundle(target, manifest, files, key, [check])
    assert not target.exists() and list(target.parent.iterdir()) == []
    context = context_indices(read_birdnet_labels())
    # the family columns swapped (the katydids' maximum under the crickets' label)
    swapped = restrict_to_classes(full, tmp_path / "swapped.onnx", indices, context=context, families=families[::-1])
    with pytest.raises(ParityError, match="'logits'"):
        write_bundle(tmp_path / "bundles" / "swapped", manifest,
                     {BIRDNET_FILE: swapped, FUSION_FILE: path / FUSION_FILE}, key, [check])
    # no family columns at all
    bare = restrict_to_classes(full, tmp_path / "bare.onnx", indices, context=context)
    with pytest.raises(ParityError, match="'logits'"):
        write_bundle(tmp_path / "bundles" / "bare", manifest, {BIRDNET_FILE: bare, FUSION_FILE: path / FUSION_FILE},
                     key, [check])
    assert list((tmp_path / "bundles").iterdir()) == []


def test_the_device_scores_the_families_as_the_trainer_does(built, head, shared_data, tmp_path):
    """BirdNET's family column in the bundle is the max of its species' probabilities: the engine's
    branch score against the trainer's numpy (full BirdNET, every species column) on the same
    windows, and the fused score against `EmbeddingHead.combined_scores`. Real crickets and
    katydids: the held-out Gryllus campestris (BirdNET's Fall Field Cricket 0.99), the scaly cricket
    that set BirdNET's cricket threshold, a training katydid, and the meadow grasshopper."""
    from exporter.birdnet.labels import read_birdnet_labels

    home, path, _ = built
    engine = Engine(verify_bundle(path, home.trusted_keys), threads=1)
    session, _ = birdnet_session(tmp_path)
    labels = read_birdnet_labels()
    families = {label: species_indices(labels, row["species"]) for label, row in head.birdnet_families.items()}
    windows = [w for name in ("insects/Rthoptera_gryllus_campestris_XC753101.flac",
                              "negatives/Rthoptera_hoplosphyrum_griseum_Mogoplistidae.flac",
                              "insects/Rthoptera_platycleis_grisea.flac",
                              "negatives/LIS_XC446417_Pseudochorthippus_parallelus_Acrididae.mp3")
               for w in list(file_windows(shared_data / "audio" / name))[:3]]
    best = {label: 0.0 for label in families}
    for window in windows:
        prediction = engine.predict(window)
        branch = prediction.branch_scores["birdnet"]
        trained = device_embedding(session, window.samples, window.sample_rate_hz, window.real_samples)
        family = []
        for label, species in families.items():
            mine = window_species_scores(session, window.samples, window.sample_rate_hz, species, window.real_samples)
            column = prediction.labels.index(label)
            assert abs(branch[column] - mine.max()) <= 1e-5, (window.source, label, branch[column], mine.max())
            family.append(mine.max())
            best[label] = max(best[label], float(mine.max()))
        expected = head.combined_scores(trained[None], np.array([family]))[0]
        ours = [prediction.labels.index(label) for label in head.label_ids]
        np.testing.assert_allclose(prediction.scores[ours], expected, atol=1e-5)
    assert best["52884"] >= 0.98  # the Fall Field Cricket on Gryllus campestris
    gryllidae = prediction.labels.index("52884")
    assert engine.predict(windows[0]).scores[gryllidae] >= engine.manifest.threshold("52884")


def test_without_litert_it_stops_unless_told_to_rely_on_the_onnx_checks(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if the package were not installed
    home = ExplorerHome.resolve(tmp_path / "home")
    with pytest.raises(LiteRtMissing, match="--skip-litert-parity"):
        build_default_bundle(home, progress=lambda line: None)
    assert not home.bundles.exists() or not any(home.bundles.iterdir())
    result = CliRunner().invoke(cli, ["--home", str(home.root), "export", "default-bundle"])
    assert result.exit_code != 0 and "ai-edge-litert is not installed" in result.output
    result = CliRunner().invoke(cli, ["--home", str(home.root), "export", "default-bundle", "--skip-litert-parity"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((home.active_bundle() / "manifest.json").read_text())
    assert manifest["provenance"]["checks"].startswith("onnx self-checks only")
    assert {p["output"] for p in manifest["provenance"]["parity"]} == {"logits", "fusion", "context_logits"}
    assert "family columns" in manifest["provenance"]["parity"][0]["reference"]
    assert all(p["passed"] for p in manifest["provenance"]["parity"])
