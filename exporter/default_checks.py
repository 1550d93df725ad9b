"""The default bundle's branch check (exporter/default_bundle.py): the sliced BirdNET against the
original .tflite through LiteRT and against the .tflite's own classifier weights, on every
column of its outputs (site birds, family maxima, context classes), and the fusion graph
against the artefact's numpy head and combination rule (exporter/head_artefacts.py), fed what the engine feeds it.

A check that fails raises through `exporter.bundle_writer.write_bundle`, which then writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

from device.audio.resample import resample
from device.engine.engine import make_crops
from exporter.bundle_writer import BranchCheck, ParityResult
from exporter.fusion import EMBEDDING_INPUT, OUTPUT, SCORES_INPUT, fusion_reference
from exporter.head_artefacts import EmbeddingHead

BRANCH = "birdnet"
"""The sliced BirdNET's branch name in the manifest."""
FUSION_FILE = "fusion.onnx"
CHECK_WINDOWS = 4
"""3 s windows per recording for the BirdNET checks (24 over the six examples)."""
FUSION_WINDOWS = 2
"""5 s windows per recording for the fusion check."""
FUSION_TOLERANCE = 1e-5
"""Fusion ONNX vs numpy head, in probability: both run float64 on the same float32 embedding;
measured ~6e-8 (the float32 output rounding)."""
FAMILY_SWEEP = (0.0, 1e-3, 0.05, 0.3, 0.5, 0.9, 0.999, 1.0)
"""BirdNET family probabilities the fusion check also feeds with each real window's embedding:
the example recordings hold no cricket or katydid (their family scores stay below 0.01), so
real audio alone would not show a wrong odds factor; 0 and 1 are what float32 sigmoids saturate to."""
TOP5_TOLERANCE = 0.0
"""Share of windows whose top-5 site birds may differ from LiteRT's: none."""


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


def family_indices(head: EmbeddingHead) -> list[list[int]]:
    """BirdNET's class indices of each family label's species, in the head's `birdnet_families` order.

    Raises:
        ValueError: a species the artefact names is not exactly one BirdNET class (another BirdNET).
    """
    from exporter.birdnet.labels import read_birdnet_labels, species_indices

    labels = read_birdnet_labels()
    return [species_indices(labels, row["species"]) for row in head.birdnet_families.values()]


def birdnet_check(head: EmbeddingHead, indices: list[int], tflite: Path, recordings: list[Path],
                  litert_parity: bool, order: np.ndarray, context: list[int] | None = None,
                  families: list[list[int]] | None = None) -> BranchCheck:
    """The branch check: BirdNET against LiteRT and its own weights, and the fusion against numpy.

    Args:
        indices: BirdNET's class index of each site bird, in the sliced model's output order.
        order: the fusion's column order (`exporter.fusion.source_order`).
        context: BirdNET's class index of each context class (`outputs.context`), in the
            `context_logits` output's order; default `CONTEXT_CLASSES`' (what `birdnet_branch`
            declares). A graph without that output fails the check.
        families: each family column's BirdNET species (default `family_indices(head)`): the
            `logits` columns after the site birds must be the maximum of their logits.
    """
    from exporter.birdnet.convert import (
        CLASSIFIER_CHECK_TOL, EMBEDDING_NAME, INPUT_NAME, LOGITS_NAME, classifier_tensors,
    )
    from exporter.birdnet.labels import read_birdnet_labels
    from exporter.birdnet.parity import EMBEDDING_TOL, LOGITS_TOL
    from exporter.birdnet.restrict import CONTEXT_NAME, context_indices
    from exporter.birdnet.tflite_graph import read_tflite

    context = list(context) if context is not None else context_indices(read_birdnet_labels())
    families = family_indices(head) if families is None else families

    def with_families(full: np.ndarray, site: list[int]) -> np.ndarray:
        """The sliced `logits` expected from full logits [n, 6522]: site columns, then family maxima."""
        return np.concatenate([full[:, site], *(full[:, f].max(axis=1, keepdims=True) for f in families)], axis=1)

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
        every = sorted({*indices, *(i for f in families for i in f)})
        full = np.zeros((len(embedding), weights.shape[0]))
        full[:, every] = embedding.astype(np.float64) @ weights[every].T + bias[every]
        by_hand = with_families(full, indices)
        context_by_hand = embedding.astype(np.float64) @ weights[context].T + bias[context]
        results = [ParityResult(output="logits", max_abs_diff=_max_diff(logits, by_hand),
                                tolerance=CLASSIFIER_CHECK_TOL, unit="logit",
                                reference="the .tflite's classifier weights on the ONNX embedding (site and "
                                          "family columns)", **common),
                   _context_result(context_logits, context_by_hand, CLASSIFIER_CHECK_TOL,
                                   "the .tflite's classifier weights (context columns) on the ONNX embedding", common)]
        if litert_parity:
            from exporter.birdnet.runners import LiteRtBirdnet

            lite = LiteRtBirdnet(tflite)
            ref_logits, ref_embedding = zip(*(lite.run(windows[i : i + 2]) for i in range(0, len(windows), 2)))
            ref_all = np.concatenate(ref_logits)
            ref_logits = with_families(ref_all, indices)
            ref_embedding = np.concatenate(ref_embedding)
            top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
            ref_top = np.argsort(-ref_logits, axis=1, kind="stable")[:, :5]
            results += [
                ParityResult(output="logits", max_abs_diff=_max_diff(logits, ref_logits),
                             tolerance=LOGITS_TOL, unit="logit",
                             reference="LiteRT on the original .tflite (site columns, family maxima)", **common),
                ParityResult(output="embedding", max_abs_diff=float(np.abs(embedding - ref_embedding).max()),
                             tolerance=EMBEDDING_TOL, unit="activation", reference="LiteRT on the original .tflite",
                             **common),
                ParityResult(output="logits/top5", max_abs_diff=float(np.mean((top != ref_top).any(axis=1))) if top.shape == ref_top.shape
                             else float("inf"),
                             tolerance=TOP5_TOLERANCE, unit="share of windows",
                             reference="LiteRT's top-5 site birds and families, in order", **common),
                _context_result(context_logits, ref_all[:, context], LOGITS_TOL,
                                "LiteRT on the original .tflite (context columns)", common),
            ]
        results.append(_fusion_result(onnx_path, head, recordings, order, names, len(indices)))
        return results

    return BranchCheck(BRANCH, run)


def _max_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """Max |got - expected|; infinite when the shapes differ (a graph missing the family columns)."""
    return float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")


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
                   names: list[str], birds: int) -> ParityResult:
    """Fusion graph vs numpy, fed exactly what the engine feeds it on real 5 s windows (`birds`:
    the site birds before the family columns)."""
    birdnet, fusion = _session(onnx_path), _session(onnx_path.parent / FUSION_FILE)
    bird_scores, embeddings = [], []
    for samples, rate, valid in _device_windows(recordings):
        crops = make_crops(resample(samples, rate, 48_000), 144_000, round(valid * 48_000 / rate))
        logits, embedding = birdnet.run(["logits", "embedding"], {"waveform": crops})
        bird_scores.append((1.0 / (1.0 + np.exp(-logits))).max(axis=0))
        embeddings.append(embedding.mean(axis=0))
    bird_scores = np.stack(bird_scores).astype(np.float32)
    embeddings = np.stack(embeddings).astype(np.float32)
    combined = [(birds + f, head.label_ids.index(label), row["odds_factor"])
                for f, (label, row) in enumerate(head.birdnet_families.items())]
    real = len(bird_scores)
    if combined:  # the same windows again with each family column swept over FAMILY_SWEEP
        swept = np.repeat(bird_scores, len(FAMILY_SWEEP), axis=0)
        swept[:, birds:birds + len(combined)] = np.tile(np.array(FAMILY_SWEEP, np.float32), real)[:, None]
        bird_scores = np.concatenate([bird_scores, swept])
        embeddings = np.concatenate([embeddings, np.repeat(embeddings, len(FAMILY_SWEEP), axis=0)])
    width = {i.name: i.shape[-1] for i in fusion.get_inputs()}[SCORES_INPUT]
    if width != bird_scores.shape[1]:  # a BirdNET graph without (or with other) family columns
        return ParityResult(branch=BRANCH, output="fusion", max_abs_diff=float("inf"), tolerance=FUSION_TOLERANCE,
                            unit="probability", reference=f"the fusion graph takes {width} BirdNET scores, the "
                            f"BirdNET graph gives {bird_scores.shape[1]}", windows=real, recordings=tuple(names))
    fused = fusion.run([OUTPUT], {SCORES_INPUT: bird_scores, EMBEDDING_INPUT: embeddings})[0]
    reference = fusion_reference(bird_scores, head.scores(embeddings), order, combined)
    error = float(np.abs(fused - reference).max()) if fused.shape == reference.shape else float("inf")
    return ParityResult(branch=BRANCH, output="fusion", max_abs_diff=error,
                        tolerance=FUSION_TOLERANCE, unit="probability",
                        reference="numpy EmbeddingHead.scores + BirdNET pass-through + the families' combination"
                                  + (f" ({real} real windows, then with the family columns at {list(FAMILY_SWEEP)})"
                                     if combined else ""),
                        windows=real,
                        recordings=tuple(names))
