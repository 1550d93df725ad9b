"""An evaluation as a report: Markdown, the numbers as JSON, and PNG plots.

`report.md` (the metrics, the taxon slices, the 20 worst classes by AP), `metrics.json` (the
same numbers, for a machine), and three plots: per-class AP sorted, precision-recall curves
(micro-averaged, and the five worst classes), and score histograms of positive and negative
cells. The trainer keeps the folder as an MLflow artifact; `explorer-train evaluate --report DIR`
writes it for any submission. matplotlib (the `train` extra) draws the plots, headless (Agg).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trainer.scoring import Evaluation


def markdown(evaluation: Evaluation, title: str) -> str:
    e = evaluation
    lines = [f"# {title}", "", "| metric | value |", "|---|---|",
             f"| BirdCLEF 2025 metric (macro ROC AUC over {e.scored_classes} classes with a positive) | {e.birdclef:.6f} |",
             f"| mAP (micro-averaged average precision) | {e.micro_ap:.6f} |",
             f"| micro-F1 at per-class thresholds{' (tuned on these rows: optimistic)' if e.thresholds_tuned else ''} "
             f"| {e.micro_f1:.6f} |",
             f"| primary-label accuracy | {'not measured' if e.primary_accuracy is None else f'{e.primary_accuracy:.6f}'} |",
             f"| rows | {e.rows} |", ""]
    if e.slices:
        lines += ["| taxon | classes | BirdCLEF metric | mAP |", "|---|---|---|---|"]
        lines += [f"| {taxon} | {s['classes']} | {s['birdclef']:.6f} | {s['micro_ap']:.6f} |" for taxon, s in e.slices.items()]
        lines.append("")
    lines += [f"## The {len(e.worst)} worst classes by AP", "", "| class | AP |", "|---|---|"]
    lines += [f"| {label} | {ap:.6f} |" for label, ap in e.worst]
    lines += ["", "Plots: `per_class_ap.png`, `pr_curves.png`, `score_histograms.png`.", ""]
    return "\n".join(lines)


def _pr_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    hits = positive[order]
    tp = np.cumsum(hits)
    return tp / max(1, positive.sum()), tp / np.arange(1, len(hits) + 1)


def plot(evaluation: Evaluation, scores: np.ndarray, targets: np.ndarray, labels: list[str], out: Path) -> list[Path]:
    """The three PNGs into `out`.

    Raises:
        RuntimeError: matplotlib is not installed (the `train` extra has it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the report's plots need matplotlib: pip install -e '.[train]'") from None
    positive = np.asarray(targets) > 0
    scores = np.asarray(scores, dtype=np.float64)
    written = []

    ranked = sorted(evaluation.per_class_ap.items(), key=lambda item: item[1])
    figure, axes = plt.subplots(figsize=(8, max(3, 0.12 * len(ranked))))
    axes.barh([label for label, _ in ranked], [ap for _, ap in ranked], color="#3b7d4f")
    axes.set_xlabel("average precision")
    axes.set_xlim(0, 1)
    axes.tick_params(axis="y", labelsize=5)
    axes.set_title(f"Per-class AP ({len(ranked)} classes with a positive)")
    written.append(_save(figure, out / "per_class_ap.png", plt))

    figure, axes = plt.subplots(figsize=(6, 5))
    recall, precision = _pr_curve(scores.ravel(), positive.ravel())
    axes.plot(recall, precision, label=f"micro (mAP {evaluation.micro_ap:.3f})", linewidth=2)
    for label, ap in evaluation.worst[:5]:
        j = labels.index(label)
        r, p = _pr_curve(scores[:, j], positive[:, j])
        axes.plot(r, p, label=f"{label} (AP {ap:.3f})", linewidth=1)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.legend(fontsize=7)
    axes.set_title("Precision-recall")
    written.append(_save(figure, out / "pr_curves.png", plt))

    figure, axes = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    axes.hist(scores[~positive], bins=bins, alpha=0.6, label=f"negative cells ({(~positive).sum()})", log=True)
    axes.hist(scores[positive], bins=bins, alpha=0.6, label=f"positive cells ({positive.sum()})", log=True)
    axes.set_xlabel("score")
    axes.legend(fontsize=7)
    axes.set_title("Score histograms")
    written.append(_save(figure, out / "score_histograms.png", plt))
    return written


def _save(figure, path: Path, plt) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(out: Path, evaluation: Evaluation, scores: np.ndarray, targets: np.ndarray, labels: list[str],
                 title: str = "Evaluation") -> list[Path]:
    """`report.md`, `metrics.json` and the plots into `out` (created); returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(evaluation, title), encoding="utf-8")
    numbers = asdict(evaluation) | {"worst": evaluation.worst}
    (out / "metrics.json").write_text(json.dumps(numbers, indent=1, sort_keys=True), encoding="utf-8")
    return [out / "report.md", out / "metrics.json", *plot(evaluation, scores, targets, labels, out)]
