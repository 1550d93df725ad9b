"""`explorer-train fit-meta`: the `meta_mlp` fusion trained on the branches' validation scores.

Each branch's run folder holds `validation.npz` (trainer/fit.py: the best epoch's scores on the
validation rows, with clip ids, starts, targets and labels). Runs fitted with the same seed on
the same examples share those rows; runs that do not are refused, by name, since the fusion
must see every branch's score of the same window. The rows are split by recording group (the
clip id's path, before "#") into meta-train and meta-held-out, so the calibration printed and
stored is measured on windows the fusion never fitted. The run folder gets `best.pt` (the
checkpoint format, "head": "meta_mlp") and `fusion/`, the "explorer-meta-onnx/1" artefact
that `explorer export bundle --fusion` reads.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

SCORES = "validation.npz"
HELD_OUT = 0.3
"""The share of recording groups kept out of the fusion's training, to measure calibration on."""
REFERENCE_ROWS = 32
"""Rows (held-out first) stored in the checkpoint for the ONNX parity reference (real scores, small)."""


@dataclass
class RunScores:
    """The branches' validation scores over the rows they share."""

    labels: list[str]
    clip_ids: np.ndarray
    starts: np.ndarray
    targets: np.ndarray
    primary: list[str | None]
    scores: dict[str, np.ndarray]


def read_runs(runs: dict[str, Path]) -> RunScores:
    """Every branch's `RUN_DIR/validation.npz`, checked to cover the same rows and labels.

    Raises:
        FileNotFoundError: a run folder without validation.npz (named).
        ValueError: runs whose labels, rows (clip_ids, starts) or targets differ (both named).
    """
    if not runs:
        raise ValueError("no branches given (--branch NAME=RUN_DIR)")
    loaded = {}
    for name, run in runs.items():
        path = Path(run) / SCORES
        if not path.is_file():
            raise FileNotFoundError(f"branch {name}: {path} missing (a fit's run folder holds it)")
        with np.load(path) as saved:
            loaded[name] = {k: saved[k] for k in ("scores", "targets", "labels", "primary", "clip_ids", "starts")}
    first, *rest = loaded
    base = loaded[first]
    for name in rest:
        other = loaded[name]
        if [str(x) for x in other["labels"]] != [str(x) for x in base["labels"]]:
            raise ValueError(f"branches {first} ({runs[first]}) and {name} ({runs[name]}) have different labels; "
                             "the fusion needs one label list")
        same_rows = (len(other["clip_ids"]) == len(base["clip_ids"]) and (other["clip_ids"] == base["clip_ids"]).all()
                     and (other["starts"] == base["starts"]).all())
        if not same_rows:
            raise ValueError(f"branches {first} ({runs[first]}) and {name} ({runs[name]}) have different validation "
                             "rows (clip_ids, starts); fit them with the same seed on the same examples")
        if not np.array_equal(other["targets"], base["targets"]):
            raise ValueError(f"branches {first} and {name} have different targets on the same rows "
                             "(another secondary_weight?)")
    return RunScores([str(x) for x in base["labels"]], base["clip_ids"], base["starts"],
                     np.asarray(base["targets"], np.float32), [str(p) or None for p in base["primary"]],
                     {name: np.asarray(v["scores"], np.float32) for name, v in loaded.items()})


def held_out_split(clip_ids: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(meta-train rows, held-out rows) by recording group, seeded; one group at least each side.

    Raises:
        ValueError: fewer than two recording groups.
    """
    groups = np.array([str(c).split("#")[0] for c in clip_ids])
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ValueError(f"the validation rows hold {len(unique)} recording group(s); the fusion needs two at "
                         "least (one to fit, one to measure calibration on)")
    order = np.random.default_rng(seed).permutation(len(unique))
    count = min(len(unique) - 1, max(1, round(len(unique) * fraction)))
    held = {unique[i] for i in order[:count]}
    mask = np.array([g in held for g in groups])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def subset_table(meta, scores: dict[str, np.ndarray], targets: np.ndarray, labels: list[str],
                 primary: list[str | None]) -> list[dict]:
    """Per branch subset on these rows: ECE, Brier, BCE, rows, BirdCLEF metric, micro AP, thresholds."""
    from trainer.meta import calibration_by_subset, subset_scores
    from trainer.scoring import evaluate

    table = []
    for subset, cal in calibration_by_subset(meta, scores, targets).items():
        row = {"branches": list(subset), **cal, "birdclef": None, "micro_ap": None, "thresholds": {}}
        try:
            found = evaluate(subset_scores(meta, scores, subset), targets, labels, primary=primary)
            row.update(birdclef=found.birdclef, micro_ap=found.micro_ap, thresholds=dict(found.thresholds))
        except ValueError as exc:  # no class with a positive among these rows
            row["note"] = str(exc)
        table.append(row)
    return table


def raw_table(scores: dict[str, np.ndarray], targets: np.ndarray) -> list[dict]:
    """Each branch's own scores' calibration on the same rows (what the fusion is compared with)."""
    from trainer.meta import expected_calibration_error

    return [{"branch": name, "ece": expected_calibration_error(s, targets),
             "brier": float(((s.astype(np.float64) - targets) ** 2).mean())} for name, s in scores.items()]


def run_fit_meta(runs: dict[str, Path], out_dir: Path, *, epochs: int = 60, branch_dropout: float = 0.3,
                 seed: int = 0, hidden: int = 256, lr: float = 3e-3, held_out: float = HELD_OUT,
                 export: bool = True) -> dict:
    """Fit the fusion on `runs` (branch name -> run folder), write `best.pt` and `fusion/`.

    Name each branch as the bundle will: the head's name (its branch name in
    `explorer export bundle`), or the default bundle's BirdNET branch name for the default model.

    Returns:
        {"checkpoint", "fusion" (or None), "calibration" (held-out table), "raw", "history",
        "rows": (meta-train, held-out)}.
    """
    from trainer.checkpoint import save_checkpoint
    from trainer.meta import fit_meta
    from trainer.meta_export import export_meta

    data = read_runs(runs)
    train, held = held_out_split(data.clip_ids, held_out, seed)
    part = lambda rows: {b: s[rows] for b, s in data.scores.items()}  # noqa: E731
    meta, history = fit_meta(part(train), data.targets[train], data.labels, epochs=epochs, lr=lr, seed=seed,
                             branch_dropout=branch_dropout, hidden=hidden)
    primary = [data.primary[i] for i in held]
    table = subset_table(meta, part(held), data.targets[held], data.labels, primary)
    raw = raw_table(part(held), data.targets[held])
    full = next(r for r in table if len(r["branches"]) == len(data.scores))
    out_dir = Path(out_dir)
    reference_rows = np.concatenate([held, train])[:REFERENCE_ROWS]  # parity needs real rows, not unseen ones
    config = {"epochs": epochs, "branch_dropout": branch_dropout, "seed": seed, "hidden": hidden, "lr": lr,
              "held_out": held_out, "rows": [len(train), len(held)]}
    checkpoint = save_checkpoint(
        out_dir / "best.pt", meta, head="meta_mlp", epoch=epochs, history=history, fit_config=config,
        thresholds=full["thresholds"], evaluation={k: full[k] for k in ("birdclef", "micro_ap", "ece", "brier", "bce")},
        calibration=table, raw_calibration=raw, branch_runs={b: str(p) for b, p in runs.items()},
        reference_scores={b: s[reference_rows] for b, s in data.scores.items()}, stopped=True)
    fusion = export_meta(checkpoint, out_dir / "fusion") if export else None
    return {"checkpoint": checkpoint, "fusion": fusion, "calibration": table, "raw": raw, "history": history,
            "rows": (len(train), len(held))}


def _branches(pairs: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pair in pairs:
        name, sep, run = pair.partition("=")
        if not sep or not name or not run:
            raise click.BadParameter(f"{pair!r} is not NAME=RUN_DIR", param_hint="--branch")
        if name in out:
            raise click.BadParameter(f"branch {name!r} given twice", param_hint="--branch")
        out[name] = Path(run)
    return out


def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4f}"


@click.command("fit-meta")
@click.option("--branch", "pairs", multiple=True, required=True, metavar="NAME=RUN_DIR",
              help="A branch and the fit run folder holding its validation.npz; repeatable. NAME is the "
                   "branch's name in the bundle (the head's name, e.g. raw_cnn).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The run folder: best.pt (the meta_mlp checkpoint) and fusion/ (for export bundle --fusion).")
@click.option("--epochs", type=int, default=60, show_default=True)
@click.option("--branch-dropout", type=float, default=0.3, show_default=True,
              help="The chance each present branch of a training row is hidden (never all of them).")
@click.option("--hidden", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--held-out", type=float, default=HELD_OUT, show_default=True,
              help="The share of recording groups kept out of the fit, where calibration is measured.")
@click.option("--seed", type=int, default=0, show_default=True)
def fit_meta_command(pairs, out, epochs, branch_dropout, hidden, lr, held_out, seed):
    """Train the meta_mlp fusion on the branches' validation scores, with branch dropout.

    Prints, per subset of branches, the calibration (ECE, Brier) and the BirdCLEF metric on held-out
    recording groups: what the device gets when its budget runs only that subset.

    \b
    Example: two heads fitted with the same seed on the same data
      explorer-train fit-meta --branch raw_cnn=runs/raw_cnn --branch panns_mlp=runs/panns --out runs/meta
      explorer export bundle --from runs/raw_cnn/best.pt --from runs/panns/best.pt \\
          --fusion runs/meta/fusion --out bundles/fused
    """
    try:
        result = run_fit_meta(_branches(pairs), out, epochs=epochs, branch_dropout=branch_dropout, seed=seed,
                              hidden=hidden, lr=lr, held_out=held_out)
    except (ValueError, FileNotFoundError) as exc:
        click.echo(f"explorer-train fit-meta: {exc}", err=True)
        sys.exit(2)
    train, held = result["rows"]
    click.echo(f"fusion fitted on {train} rows; measured on {held} held-out rows")
    click.echo(f"{'branches':40s} {'ECE':>7s} {'Brier':>7s} {'BirdCLEF':>9s}")
    for row in result["raw"]:
        click.echo(f"{row['branch'] + ' (own scores)':40s} {_number(row['ece']):>7s} {_number(row['brier']):>7s}")
    for row in result["calibration"]:
        click.echo(f"{'+'.join(row['branches']):40s} {_number(row['ece']):>7s} {_number(row['brier']):>7s} "
                   f"{_number(row['birdclef']):>9s}")
    click.echo(f"checkpoint: {result['checkpoint']}")
    click.echo(f"fusion artefact: {result['fusion']}")
