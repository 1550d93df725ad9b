"""`explorer-train`: the trainer's own entry point (the trainer role installs the `train` extra;
the device never does).

`cache` decodes training audio once, `evaluate` scores submissions; the training commands
(`fit`, `retrain`, `tune`, `onnx`) live in trainer/train_cmds.py. Each command imports its heavy
modules (torch, mlflow, ray) only when it runs, so `--help` is quick.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from trainer.submission import SubmissionError


@click.group()
def cli() -> None:
    """El Silencio Acoustic Explorer: training and evaluation."""


@cli.command()
@click.option("--birdclef", "birdclef_root", type=click.Path(path_type=Path, file_okay=False),
              help="A BirdCLEF 2025 folder: train.csv, taxonomy.csv, train_audio/<label>/..., train_soundscapes/.")
@click.option("--list", "lists", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="A plain labelled list (path,label[,...], e.g. the guides' confirmed clips); repeatable.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The cache folder (created; a rerun adds only what is missing).")
@click.option("--workers", type=int, default=1, show_default=True, help="Decoding processes.")
def cache(birdclef_root, lists, out, workers):
    """Decode every clip once into a memory-mappable 32 kHz int16 cache that epochs read.

    \b
    Example: the BirdCLEF 2025 download, then the guides' confirmed clips, into one cache
      explorer-train cache --birdclef ~/birdclef-2025 --out ~/cache/birdclef --workers 8
      explorer-train cache --list confirmed.csv --out ~/cache/birdclef

    Killed, it resumes where it stopped; a clip that cannot be decoded is skipped, counted and
    listed (also in OUT/skipped.jsonl), never silently; the exit code is then 1.
    """
    from trainer.audio_cache import build_cache, items_from_examples
    from trainer.birdclef import BirdclefError, load_birdclef, soundscape_examples
    from trainer.labelled import read_examples

    if not birdclef_root and not lists:
        raise click.UsageError("give --birdclef FOLDER or --list CSV (or both)")
    try:
        examples = []
        if birdclef_root:
            data = load_birdclef(birdclef_root)
            click.echo(data.summary(), err=True)
            examples += data.examples + soundscape_examples(data)
        for path in lists:
            examples += read_examples(path)
        report = build_cache(out, items_from_examples(examples), workers=workers, bar=True)
    except (BirdclefError, ValueError, OSError) as exc:
        click.echo(f"explorer-train cache: {exc}", err=True)
        sys.exit(2)
    click.echo(report.summary())
    for skipped in report.skipped:
        click.echo(f"skipped {skipped.clip_id}: {skipped.reason}", err=True)
    sys.exit(1 if report.skipped else 0)


def read_thresholds(path: Path, labels: list[str]) -> dict[str, float]:
    """Per-label thresholds from a bundle's manifest.json (`thresholds.default` and `per_label`)
    or a CSV with columns label,threshold (every label then needs a row)."""
    if path.suffix == ".json":
        raw = json.loads(path.read_text(encoding="utf-8"))["thresholds"]
        return {label: float(raw.get("per_label", {}).get(label, raw["default"])) for label in labels}
    with open(path, newline="", encoding="utf-8") as handle:
        given = {row["label"]: float(row["threshold"]) for row in csv.DictReader(handle)}
    missing = [label for label in labels if label not in given]
    if missing:
        raise SubmissionError(f"{path}: no threshold for labels {missing[:5]} ({len(missing)} in all)")
    return given


def read_taxa(path: Path) -> dict[str, str]:
    """label -> class name from a BirdCLEF taxonomy.csv (primary_label, class_name)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["primary_label"]: row["class_name"] for row in csv.DictReader(handle)}


@cli.command()
@click.option("--predictions", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="A submission CSV: row_id, then one probability column per label (explorer analyze writes one).")
@click.option("--truth", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The truth: row_id plus 0/1 label columns, or row_id, primary_label[, secondary_labels].")
@click.option("--thresholds", type=click.Path(path_type=Path, dir_okay=False),
              help="Per-label thresholds for micro-F1: a bundle's manifest.json or a label,threshold CSV "
                   "(default: tuned on these rows, and the report says so).")
@click.option("--taxonomy", type=click.Path(path_type=Path, dir_okay=False),
              help="taxonomy.csv (primary_label, class_name) for the Aves/Amphibia/Insecta/Mammalia slices.")
@click.option("--absent-as-zero", is_flag=True, help="Score a truth label the predictions lack as 0 on every row.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write report.md, metrics.json and PNG plots here.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of lines.")
def evaluate(predictions, truth, thresholds, taxonomy, absent_as_zero, report_dir, as_json):
    """Score a submission CSV against the truth: the BirdCLEF 2025 metric and the design's others.

    \b
    Example: the default bundle on two example recordings, scored against what they hold
    (the frog Allobates femoralis, 21211, calls through the first; nothing named in the second):
      explorer analyze examples/birdclef_train_2.ogg examples/H02_20230420_074000.ogg --out sub.csv
      awk -F, 'NR==1{print "row_id,primary_label"} NR>1{print $1 "," ($1 ~ /^birdclef_train_2_/ ? "21211" : "")}' \\
          sub.csv > truth.csv
      explorer-train evaluate --predictions sub.csv --truth truth.csv

    The first line printed is the BirdCLEF 2025 metric with six decimals: ROC AUC per class over
    the classes with a positive row, averaged (Kaggle's reference). An empty cell in the
    predictions (a window the bundle could not score) is refused, never read as 0.
    """
    from trainer.report import write_report
    from trainer.scoring import evaluate as score
    from trainer.submission import align

    try:
        scored = align(predictions, truth, absent_as_zero=absent_as_zero)
        given = read_thresholds(thresholds, scored.labels) if thresholds else None
        taxa = read_taxa(taxonomy) if taxonomy else None
        result = score(scored.scores, scored.targets, scored.labels, thresholds=given,
                       primary=scored.primary if any(scored.primary) else None, taxon_of=taxa)
    except (SubmissionError, ValueError, KeyError, OSError) as exc:
        click.echo(f"explorer-train evaluate: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({"birdclef": round(result.birdclef, 6), "scored_classes": result.scored_classes,
                               "micro_ap": result.micro_ap, "micro_f1": result.micro_f1,
                               "thresholds_tuned": result.thresholds_tuned,
                               "primary_accuracy": result.primary_accuracy, "rows": result.rows,
                               "slices": result.slices, "worst": result.worst}, indent=1))
    else:
        click.echo(f"BirdCLEF 2025 metric: {result.birdclef:.6f} (macro ROC AUC over {result.scored_classes} "
                   f"classes with a positive row, {result.rows} rows)")
        click.echo(f"mAP (micro): {result.micro_ap:.6f}")
        tuned = " (thresholds tuned on these rows: optimistic)" if result.thresholds_tuned else ""
        click.echo(f"micro-F1: {result.micro_f1:.6f}{tuned}")
        if result.primary_accuracy is not None:
            click.echo(f"primary-label accuracy: {result.primary_accuracy:.6f}")
        for taxon, s in result.slices.items():
            click.echo(f"{taxon}: BirdCLEF {s['birdclef']:.6f}, mAP {s['micro_ap']:.6f} over {s['classes']} classes")
        click.echo("worst classes by AP: " + ", ".join(f"{label} {ap:.3f}" for label, ap in result.worst[:5]))
    if report_dir:
        for path in write_report(report_dir, result, scored.scores, scored.targets, scored.labels,
                                 title=f"Evaluation of {predictions.name} against {truth.name}"):
            click.echo(f"wrote {path}", err=True)


def _training_commands() -> None:
    """fit and retrain (trainer/train_cmds.py), tune and onnx join the group here."""
    from trainer import train_cmds

    for command in train_cmds.COMMANDS:
        cli.add_command(command)


_training_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
