"""A signed bundle from trained heads' artefact folders (`explorer export bundle --from ...`).

Each "explorer-head-onnx/1" folder (trainer/onnx_export.py) becomes one branch: the body behind
the device's own front end (exporter/head_branch.py), proven against torch on the artefact's real
reference windows (relative logit error < 1e-4, same top-1) before anything is written, then
offered int8 by measurement (exporter/head_quantize.py: kept fp32 unless int8 holds parity and
is faster). Each branch states its measured cost (`branches[].cost`), so the device can run the
subset its budget allows.

Fusion: the max over branches per label (a label's probability is the most confident branch's;
thresholds per label are the highest any head tuned for it, since the max can only raise a
score). With `with_default`, the default bundle's BirdNET branch and its ONNX fusion (BirdNET's
birds plus the embedding head's frogs) join: a new fusion graph runs the default fusion inside
it and takes the max with the heads' scores. With `fusion_dir`, a trained `meta_mlp`
("explorer-meta-onnx/1", exporter/meta_fusion.py) is the fusion instead: proven against torch
first, its absent branches fixed off, and the default model one of its inputs when it was
trained with it.
"""

from __future__ import annotations

import copy
import csv
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from device.bundle.verify import VerifiedBundle, sha256_file, verify_bundle
from exporter.bundle_writer import BranchCheck, ParityError, ParityResult, write_bundle
from exporter.frontend import make_model
from exporter.head_branch import HeadArtefact, branch_parity, compose_branch, load_artefact, run_outputs, session, top1_agreement
from exporter.head_quantize import MIN_TOP1_AGREEMENT, QuantReport, fp32_cost, measure_branch, write_report
from exporter.manifest_builder import branch_entry, build_manifest, labels_from_taxonomy
from exporter.meta_fusion import DefaultSource, build_meta_fusion, fusion_parity, load_meta, meta_parity, meta_thresholds

FUSION_FILE = "fusion_heads.onnx"
META_FUSION_FILE = "fusion_meta.onnx"
LICENSE = "CC BY-NC-SA 4.0"
ATTRIBUTION = ("Heads trained by explorer-train on BirdCLEF 2025 data (CC BY-NC-SA 4.0 / Kaggle BirdCLEF 2025 "
               "terms) and the El Silencio shared recordings; see provenance.heads for each head's data and run.")
DEFAULT_THRESHOLD = 0.5


def _branch_names(artefacts: Sequence[HeadArtefact]) -> list[str]:
    """One branch name per artefact: the head's name, numbered when two heads share it."""
    names, seen = [], {}
    for a in artefacts:
        seen[a.name] = seen.get(a.name, 0) + 1
        names.append(a.name if seen[a.name] == 1 else f"{a.name}_{seen[a.name]}")
    return names


def _int8_check(name: str, artefact: HeadArtefact, report: QuantReport) -> Callable[[Path], list[ParityResult]]:
    """An int8 branch cannot match torch to 1e-4: it is held to the gate it passed instead."""

    def run(path: Path) -> list[ParityResult]:
        logits = run_outputs(session(path), artefact.waveform, ["logits"])[0]
        common = dict(branch=name, windows=len(artefact.waveform),
                      recordings=tuple(sorted({Path(r).name for r in artefact.recordings})))
        results = [ParityResult(output="logits", max_abs_diff=1.0 - top1_agreement(logits, artefact.logits),
                                tolerance=1.0 - MIN_TOP1_AGREEMENT, unit="fraction of windows whose top-1 differs",
                                reference="torch top-1 (int8 branch)", **common)]
        if report.metric_change is not None:
            results.append(ParityResult(output="scores", max_abs_diff=max(0.0, -report.metric_change), tolerance=0.005,
                                        unit="macro ROC-AUC lost", reference="the fp32 branch", windows=report.windows,
                                        recordings=common["recordings"], branch=name))
        return results

    return run


def _default_parts(default_dir: Path, trusted: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The verified default bundle's manifest dict and its files (BirdNET and the fusion)."""
    verified = verify_bundle(default_dir, trusted)
    raw = copy.deepcopy(verified.manifest.raw)
    if raw["fusion"]["kind"] != "onnx":
        raise ValueError(f"{default_dir}: expected the default bundle's ONNX fusion, found {raw['fusion']['kind']!r}")
    files = {b["file"]: Path(default_dir) / b["file"] for b in raw["branches"]}
    files[raw["fusion"]["file"]] = Path(default_dir) / raw["fusion"]["file"]
    return raw, files


def combined_fusion(default_fusion: onnx.ModelProto, default_labels: Sequence[str],
                    heads: Sequence[tuple[str, Sequence[str]]], manifest_labels: Sequence[str]) -> onnx.ModelProto:
    """The default fusion graph with the heads' scores: inputs the default fusion's, then
    `<branch>_scores` per head; output `scores` = per manifest label the max over its sources."""
    inner = onnx.compose.add_prefix(default_fusion, "default/")
    sources = [list(default_labels)] + [list(labels) for _, labels in heads]
    offsets = np.cumsum([0] + [len(s) for s in sources])
    columns: dict[str, list[int]] = {}
    for offset, labels in zip(offsets, sources):
        for i, label in enumerate(labels):
            columns.setdefault(label, []).append(int(offset) + i)
    missing = [label for label in manifest_labels if label not in columns]
    if missing:
        raise ValueError(f"manifest labels {missing[:5]} are scored by no source")
    slots = max(len(c) for c in columns.values())
    inits, nodes = [], list(inner.graph.node)
    inits += list(inner.graph.initializer)
    head_inputs = [helper.make_tensor_value_info(f"{name}_scores", TensorProto.FLOAT, ["batch", len(labels)])
                   for name, labels in heads]
    nodes.append(helper.make_node("Concat", [inner.graph.output[0].name, *(i.name for i in head_inputs)],
                                  ["heads/sources"], axis=1))
    picked = []
    for s in range(slots):  # a label with fewer sources repeats its first: the max is unchanged
        index = np.array([columns[label][s] if s < len(columns[label]) else columns[label][0]
                          for label in manifest_labels], np.int64)
        inits.append(numpy_helper.from_array(index, f"heads/slot{s}"))
        nodes.append(helper.make_node("Gather", ["heads/sources", f"heads/slot{s}"], [f"heads/picked{s}"], axis=1))
        picked.append(f"heads/picked{s}")
    nodes.append(helper.make_node("Max", picked, ["scores"]) if len(picked) > 1
                 else helper.make_node("Identity", picked, ["scores"]))
    graph = helper.make_graph(
        nodes, "default_plus_heads", [*inner.graph.input, *head_inputs],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(manifest_labels)])], inits)
    return make_model(graph, f"the default fusion plus {len(heads)} heads, max per label over "
                             f"{len(manifest_labels)} manifest labels")


def build_bundle_from(
    artefact_dirs: Sequence[Path], out_dir: Path, private_key: Path, *, taxonomy: Path, name: str = "explorer-heads",
    version: str = "1.0.0", int8: bool = True, with_default: Path | None = None, trusted: Path | None = None,
    report_dir: Path | None = None, progress: Callable[[str], None] = print, fusion_dir: Path | None = None,
) -> VerifiedBundle:
    """Compose, prove, quantize by measurement, sign and verify a bundle of trained heads.

    Args:
        artefact_dirs: "explorer-head-onnx/1" folders, one branch each.
        private_key: the signer's ed25519 key.
        taxonomy: BirdCLEF taxonomy.csv for the manifest's label entries.
        int8: try static int8 per branch (kept only where the gate passes).
        with_default: a default bundle directory whose BirdNET branch and fusion join (verified
            against the trust list `trusted` first).
        report_dir: where quantization.json/.md go (default: beside `out_dir`).
        fusion_dir: an "explorer-meta-onnx/1" folder (or a fit-meta run folder): the bundle is
            fused by that meta_mlp over the branches it has (exporter/meta_fusion.py).

    Raises:
        ParityError: a composed branch disagrees with torch (nothing written).
        ArtefactError: an artefact folder is incomplete or inconsistent.
    """
    out_dir = Path(out_dir)
    artefacts = [load_artefact(Path(d)) for d in artefact_dirs]
    if not artefacts:
        raise ValueError("no head artefacts given")
    names = _branch_names(artefacts)
    meta = load_meta(Path(fusion_dir)) if fusion_dir is not None else None
    fusion_results = [meta_parity(meta)] if meta is not None else []
    for parity in fusion_results:
        if not parity.passed:
            raise ParityError([parity])
        progress("  " + parity.describe())
    reports: list[QuantReport] = []
    branches, files, checks, head_info = [], {}, [], {}
    with tempfile.TemporaryDirectory(prefix="bundle-from-") as tmp:
        for branch, artefact in zip(names, artefacts):
            fp32 = Path(tmp) / f"{branch}.onnx"
            onnx.save(compose_branch(artefact), str(fp32))
            parity = branch_parity(artefact, fp32, branch)
            failed = [p for p in parity if not p.passed]
            if failed:
                raise ParityError(failed)
            progress("  " + "; ".join(p.describe() for p in parity))
            if int8:
                report, chosen = measure_branch(branch, fp32, Path(tmp) / "int8", artefact.waveform, artefact.targets)
            else:
                report, chosen = fp32_cost(branch, fp32, artefact.waveform[0]), fp32
            reports.append(report)
            progress(f"  {branch}: {report.precision} ({report.reason})")
            entry = branch_entry(name=branch, file=f"{branch}.onnx", front_end=artefact.info["front_end"],
                                 window_samples=artefact.window_samples, labels=artefact.labels, activation="none",
                                 embedding_dim=artefact.embedding_dim, mel=artefact.is_mel, precision=report.precision)
            if not artefact.is_mel:
                entry["input"]["front_end"] = None  # the body takes the waveform itself: no front end to state
            entry["cost"] = report.cost()
            branches.append(entry)
            files[entry["file"]] = chosen
            checks.append(BranchCheck(branch, _int8_check(branch, artefact, report) if report.precision == "int8"
                                      else lambda path, a=artefact, b=branch: branch_parity(a, path, b)))
            head_info[branch] = {k: artefact.info.get(k) for k in ("name", "input_kind", "metrics", "provenance", "config")}
        label_ids = list(dict.fromkeys(label for a in artefacts for label in a.labels))
        thresholds: dict[str, float] = {}
        for a in artefacts:
            for label, value in (a.info.get("thresholds") or {}).items():
                thresholds[label] = max(float(value), thresholds.get(label, 0.0))
        fusion, default_threshold, labels = None, DEFAULT_THRESHOLD, None
        if with_default is not None:
            if trusted is None:
                raise ValueError("with_default needs `trusted`, the trust list the default bundle is verified against")
            raw, default_files = _default_parts(Path(with_default), Path(trusted))
            default_labels = [entry["primary_label"] for entry in raw["labels"]]
            known = set(default_labels)
            extra = labels_from_taxonomy(taxonomy, [lid for lid in label_ids if lid not in known])
            order = {row: i for i, row in enumerate(_taxonomy_order(taxonomy))}
            labels = sorted([*raw["labels"], *extra], key=lambda e: order.get(e["primary_label"], len(order)))
            manifest_ids = [e["primary_label"] for e in labels]
            heads = [(b["name"], b["outputs"]["scores"]["labels"]) for b in branches]
            default_model = onnx.load(str(default_files[raw["fusion"]["file"]]))
            if meta is None:
                graph = combined_fusion(default_model, default_labels, heads, manifest_ids)
            else:
                source = DefaultSource(default_model, default_labels, raw["fusion"]["inputs"][0]["branch"])
                graph, present = build_meta_fusion(meta, heads, manifest_ids, source)
            files.update({n: p for n, p in default_files.items() if n != raw["fusion"]["file"]})
            files[FUSION_FILE if meta is None else META_FUSION_FILE] = graph.SerializeToString()
            branches = [*raw["branches"], *branches]
            fusion = {"kind": "onnx", "file": FUSION_FILE if meta is None else META_FUSION_FILE, "sha256": None,
                      "inputs": [*raw["fusion"]["inputs"], *({"branch": n, "output": "scores"} for n in names)],
                      "output": "scores", "required_branches": [b["name"] for b in branches]}
            default_threshold = raw["thresholds"]["default"]
            for label, value in raw["thresholds"].get("per_label", {}).items():
                thresholds[label] = max(float(value), thresholds.get(label, 0.0))
            for label in label_ids:
                thresholds.setdefault(label, DEFAULT_THRESHOLD)
            checks += [BranchCheck(b["name"], _default_check(b["name"], raw)) for b in raw["branches"]]
        elif meta is not None:
            labels = labels_from_taxonomy(taxonomy, label_ids)
            manifest_ids = [e["primary_label"] for e in labels]
            heads = [(b["name"], b["outputs"]["scores"]["labels"]) for b in branches]
            graph, present = build_meta_fusion(meta, heads, manifest_ids)
            fusion_results.append(fusion_parity(graph, meta, heads, manifest_ids))
            if not fusion_results[-1].passed:
                raise ParityError(fusion_results[-1:])
            progress("  " + fusion_results[-1].describe())
            files[META_FUSION_FILE] = graph.SerializeToString()
            fusion = {"kind": "onnx", "file": META_FUSION_FILE, "sha256": None, "output": "scores",
                      "inputs": [{"branch": n, "output": "scores"} for n in names], "required_branches": list(names)}
        fused_by = ("max over branches per label" if with_default is None else
                    "the default bundle's fusion, then max with every head per label")
        if meta is not None:
            fused_by = meta_provenance(meta, present, with_default is not None)
            default_ids = set(default_labels) if with_default is not None else set()
            outside = with_default is not None and source.branch not in meta.branches
            for label, value in meta_thresholds(meta, present).items():
                # Where the default model stays outside the meta, the label's score is the max of both.
                thresholds[label] = max(value, thresholds.get(label, 0.0)) if outside and label in default_ids else value
        manifest = build_manifest(
            name=name, version=version, labels=labels or labels_from_taxonomy(taxonomy, label_ids), branches=branches,
            license=LICENSE, attribution=ATTRIBUTION, default_threshold=default_threshold,
            per_label_thresholds=thresholds, fusion=fusion,
            provenance={"training_run": "explorer-train (see heads)", "heads": head_info,
                        "quantization": [r.as_dict() for r in reports],
                        "fusion": fused_by, "fusion_parity": [p.as_dict() for p in fusion_results]},
        )
        report_dir = Path(report_dir) if report_dir else out_dir.parent / f"{out_dir.name}-report"
        write_report(reports, report_dir)
        verified = write_bundle(out_dir, manifest, files, private_key, checks)
    return verified


def _default_check(branch: str, raw: dict[str, Any]) -> Callable[[Path], list[ParityResult]]:
    """The default bundle's own parity results, carried over, and proof the file is that bundle's byte for byte."""
    pinned = next(b["sha256"] for b in raw["branches"] if b["name"] == branch)

    def run(path: Path) -> list[ParityResult]:
        same = ParityResult(branch=branch, output="file", max_abs_diff=0.0 if sha256_file(path) == pinned else 1.0,
                            tolerance=0.0, unit="files differing", reference=f"the signed default bundle's {path.name}",
                            windows=0, recordings=())
        carried = [p for p in raw.get("provenance", {}).get("parity", []) if p.get("branch") == branch]
        if not carried:
            raise ValueError(f"the default bundle records no parity result for branch {branch!r}")
        fields = ("branch", "output", "max_abs_diff", "tolerance", "unit", "reference", "windows")
        return [same, *(ParityResult(**{k: p[k] for k in fields}, recordings=tuple(p.get("recordings", ())))
                        for p in carried)]

    return run


def _taxonomy_order(taxonomy: Path) -> list[str]:
    with open(taxonomy, newline="", encoding="utf-8") as handle:
        return [row["primary_label"] for row in csv.DictReader(handle)]


def meta_provenance(meta, present: list[str], with_default: bool) -> dict[str, Any]:
    """What the manifest says of a meta_mlp fusion: its source, the subset and its held-out calibration."""
    row = meta.calibration(present) or {}
    return {"kind": "meta_mlp", "branches": meta.branches, "present": present,
            "absent": [b for b in meta.branches if b not in present], "labels": len(meta.labels),
            "provenance": meta.info.get("provenance"), "with_default": with_default,
            "held_out_calibration": {k: row.get(k) for k in ("ece", "brier", "bce", "birdclef", "rows")},
            "labels_outside_the_meta": "the max of the sources' own scores"}
