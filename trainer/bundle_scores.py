"""`explorer-train score-bundle`: a device bundle's scores on a fit's validation rows, as a run folder.

`explorer-train fit-meta` trains the fusion on each branch's `RUN_DIR/validation.npz`. The
default model (BirdNET and its embedding head, fused) is no fit, so nothing wrote its scores
on those rows, and a meta could not learn a `birdnet` branch. This command writes them: each
validation row's window, exactly the samples `fit` read from the audio cache
(`cache.window(clip_id, start, window_samples)`), becomes a float32 32 kHz WAV; the device's
own `explorer analyze` scores them in one process per batch (a folder argument), and the CSV
is read back by row id (`<stem>_5`). OUT_RUN_DIR/validation.npz then holds the run's rows
unchanged (clip_ids, starts, targets, labels, primary) with `scores` = the bundle's
probabilities for the run's labels in the run's order, so `read_runs` accepts it beside the
run it came from.

Why a subprocess: the trainer does not import the device's runtime (only its resampler and
crop rule), and `explorer analyze` is the device's path end to end (its front end, its crops,
its fusion), which is what the fused bundle will run. The scores come through the CSV's six
decimals (a rounding of at most 5e-7, far under any calibration effect).

A window longer than the device's 5 s analysis window would come back as several rows, so it is
refused; a shorter one is zero-padded by the device as the last window of a file is.

`OUT_RUN_DIR/score_bundle.json` records what was scored, by which bundle, and which labels (if
any, with `--absent-as-zero`) the bundle does not score and were written as 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

SCORES = "validation.npz"
INFO = "score_bundle.json"
FORMAT = "explorer-bundle-scores/1"
RATE = 32_000
"""The audio cache's rate (trainer/audio_cache.py): the WAVs are the cached samples at it."""
ANALYSIS_WINDOW = 160_000
"""The device's submission window (5 s at 32 kHz, device/analysis.py): one CSV row per WAV."""
DEFAULT_WINDOW = ANALYSIS_WINDOW
"""Used when the run folder holds no checkpoint to read `window_samples` from (the real heads' 5 s)."""
WINDOWS_PER_CALL = 2000
"""WAVs per `explorer analyze` process: bounds the temporary disk (640 KB each as float32),
while one process start (bundle load, ~1-2 s) is spread over many windows."""


@dataclass
class BundleScores:
    """What `score_bundle` wrote."""

    path: Path
    """OUT_RUN_DIR/validation.npz."""
    rows: int
    labels: list[str]
    absent: list[str] = field(default_factory=list)
    """Run labels the bundle does not score, written as 0 (`absent_as_zero`)."""
    window_samples: int = DEFAULT_WINDOW
    bundle: str = ""
    seconds: float = 0.0
    bundle_branches: list[str] = field(default_factory=list)
    """The bundle's branch names (from its manifest; empty when analyze's default home chose it)."""


def run_window_samples(run_dir: Path) -> tuple[int, str]:
    """(window_samples, where it came from): the run's checkpoint config, else the 5 s default."""
    for name in ("best.pt", "last.pt"):
        path = Path(run_dir) / name
        if path.is_file():
            from trainer.checkpoint import read_checkpoint

            config = read_checkpoint(path)["config"]
            if "window_samples" in config:
                return int(config["window_samples"]), f"{path} config"
    return DEFAULT_WINDOW, "default (no checkpoint in the run folder)"


def bundle_dir_of(bundle: Path | None, home: Path | None) -> Path | None:
    """The bundle folder analyze will use, when it is known here: `bundle`, or the one
    `home/bundles/ACTIVE` names (device/home.py's pointer); None leaves it to analyze's default home."""
    if bundle is not None:
        return Path(bundle)
    if home is not None:
        pointer = Path(home) / "bundles" / "ACTIVE"
        if not pointer.is_file():
            raise FileNotFoundError(f"{home}: no active bundle ({pointer} missing); install one or pass --bundle")
        return Path(home) / "bundles" / pointer.read_text(encoding="utf-8").strip()
    return None


def manifest_labels(bundle_dir: Path) -> tuple[list[str], dict]:
    """(label ids, manifest) from the bundle's manifest.json (the documented schema v1).

    Raises:
        FileNotFoundError: no manifest.json there.
        ValueError: it is not JSON or has no labels.
    """
    path = Path(bundle_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no bundle manifest there")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        labels = [str(x["primary_label"]) for x in manifest["labels"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: no readable labels ({type(exc).__name__}: {exc})") from None
    return labels, manifest


def _analyze(folder: Path, out_csv: Path, bundle: Path | None, home: Path | None, threads: int) -> None:
    command = [sys.executable, "-m", "device.cli.main", "analyze", str(folder), "--out", str(out_csv),
               "--threads", str(threads)]
    if bundle is not None:
        command += ["--bundle", str(bundle)]
    env = dict(os.environ)
    if home is not None:
        env["EXPLORER_HOME"] = str(home)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise RuntimeError(f"explorer analyze failed (exit {done.returncode}) on {folder}:\n{tail}")


def score_bundle(run_dir: Path, cache_dir: Path, out_dir: Path, *, bundle: Path | None = None,
                 home: Path | None = None, name: str = "birdnet", absent_as_zero: bool = False,
                 threads: int = 0, windows_per_call: int = WINDOWS_PER_CALL, progress=None) -> BundleScores:
    """Write `out_dir/validation.npz`: the bundle's scores on `run_dir`'s validation rows.

    Args:
        run_dir: a fit's run folder (its validation.npz; best.pt for the window length).
        cache_dir: the audio cache the fit read (`explorer-train cache`).
        out_dir: the new run folder (not `run_dir`: its validation.npz is the head's).
        bundle / home: the bundle folder, or a data home whose active bundle analyze uses;
            neither: analyze's own default ($EXPLORER_HOME).
        name: the branch name fit-meta will be given (recorded; the default bundle's is "birdnet").
        absent_as_zero: write 0 for run labels the bundle does not score instead of refusing.
        progress: a callable taking one line (None: quiet).

    Raises:
        FileNotFoundError: no validation.npz, cache, manifest or active bundle (named).
        ValueError: out_dir is run_dir, windows longer than 5 s, or labels the bundle does not
            score without `absent_as_zero` (named).
        RuntimeError: explorer analyze failed (its error's tail).
    """
    from trainer.audio_cache import AudioCache
    from trainer.submission import read_predictions

    import soundfile as sf

    say = progress or (lambda line: None)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ValueError(f"--out {out_dir} is the run folder itself; its validation.npz is the head's own scores")
    source = run_dir / SCORES
    if not source.is_file():
        raise FileNotFoundError(f"{source}: missing (a fit's run folder holds it)")
    with np.load(source) as saved:
        arrays = {k: saved[k] for k in ("scores", "targets", "labels", "primary", "clip_ids", "starts")}
    labels = [str(x) for x in arrays["labels"]]
    window, window_from = run_window_samples(run_dir)
    if window > ANALYSIS_WINDOW:
        raise ValueError(f"{run_dir}: windows of {window} samples ({window_from}) are longer than the device's "
                         f"{ANALYSIS_WINDOW}-sample analysis window; analyze would split each into several rows")
    where = bundle_dir_of(bundle, home)
    bundle_info = {"dir": str(where) if where else "(analyze's default home)"}
    if where is not None:
        known, manifest = manifest_labels(where)
        bundle_info.update(name=manifest.get("name"), version=manifest.get("version"),
                           branches=[b.get("name") for b in manifest.get("branches", [])])
        lacking = [label for label in labels if label not in known]
        if lacking and not absent_as_zero:
            raise ValueError(f"the bundle at {where} does not score the run's labels {lacking}; "
                             "pass --absent-as-zero to write 0 for them")
    cache = AudioCache(Path(cache_dir))
    clip_ids, starts = [str(c) for c in arrays["clip_ids"]], [int(s) for s in arrays["starts"]]
    missing = sorted({c for c in clip_ids if c not in cache})
    if missing:
        raise FileNotFoundError(f"{len(missing)} validation clip(s) are not in the audio cache at {cache_dir}: "
                                f"{missing[:5]}")
    n = len(clip_ids)
    found: dict[str, np.ndarray] = {}
    scored_labels: list[str] | None = None
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="score-bundle-") as tmp:
        for first in range(0, n, max(1, windows_per_call)):
            rows = range(first, min(n, first + max(1, windows_per_call)))
            folder = Path(tmp) / f"batch{first:07d}"
            folder.mkdir()
            for k in rows:
                sf.write(folder / f"w{k:07d}.wav", cache.window(clip_ids[k], starts[k], window), RATE, subtype="FLOAT")
            out_csv = Path(tmp) / f"batch{first:07d}.csv"
            _analyze(folder, out_csv, bundle, home, threads)
            ids, columns, scores = read_predictions(out_csv)
            if scored_labels is None:
                scored_labels = columns
            found.update(zip(ids, scores))
            shutil.rmtree(folder)
            say(f"scored {rows.stop}/{n} windows ({time.monotonic() - began:.1f} s)")
    wanted = [f"w{k:07d}_5" for k in range(n)]
    lost = [w for w in wanted if w not in found]
    if lost:
        raise RuntimeError(f"explorer analyze wrote no row for {len(lost)} window(s), e.g. {lost[:3]}")
    assert scored_labels is not None
    absent = [label for label in labels if label not in scored_labels]
    if absent and not absent_as_zero:
        raise ValueError(f"the bundle does not score the run's labels {absent}; pass --absent-as-zero to write 0")
    table = np.stack([found[w] for w in wanted])
    columns = [scored_labels.index(label) if label in scored_labels else -1 for label in labels]
    out = np.zeros((n, len(labels)), np.float32)
    for j, c in enumerate(columns):
        if c >= 0:
            out[:, j] = table[:, c]
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = out_dir / f".{Path(SCORES).stem}.tmp.npz"
    np.savez(temporary, **{**arrays, "scores": out})
    os.replace(temporary, out_dir / SCORES)
    seconds = time.monotonic() - began
    info = {"format": FORMAT, "name": name, "run": str(run_dir), "cache": str(cache_dir), "bundle": bundle_info,
            "home": str(home) if home else None, "rows": n, "labels": labels, "absent_as_zero": absent,
            "window_samples": window, "window_from": window_from, "seconds": round(seconds, 3)}
    (out_dir / INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return BundleScores(out_dir / SCORES, n, labels, absent, window, bundle_info["dir"], seconds,
                        list(bundle_info.get("branches") or []))


@click.command("score-bundle")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="A fit's run folder (its validation.npz and best.pt).")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The audio cache that fit read (explorer-train cache).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The new run folder: validation.npz (the bundle's scores) and score_bundle.json.")
@click.option("--bundle", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="The bundle folder to score with.")
@click.option("--home", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="A data home whose active bundle scores (default: $EXPLORER_HOME's).")
@click.option("--name", default="birdnet", show_default=True,
              help="The branch name to give fit-meta: the default bundle's BirdNET branch is 'birdnet'.")
@click.option("--absent-as-zero", is_flag=True,
              help="Write 0 for run labels the bundle does not score (named in the output) instead of refusing.")
@click.option("--threads", type=int, default=0, show_default=True, help="analyze's onnxruntime threads (0: the bundle's hints).")
def score_bundle_command(run_dir, cache_dir, out_dir, bundle, home, name, absent_as_zero, threads):
    """Score a fit's validation windows with a device bundle, as a branch run for fit-meta.

    Each validation row's window is taken from the audio cache, scored by `explorer analyze`,
    and written to OUT/validation.npz with the run's rows and labels, so fit-meta can train a
    fusion over the head and the bundle (the default model: BirdNET and its embedding head).

    \b
    Example: the default model as the meta's birdnet branch beside a raw_cnn fit
      explorer-train score-bundle --run runs/raw_cnn --cache cache --out runs/birdnet
      explorer-train fit-meta --branch raw_cnn=runs/raw_cnn --branch birdnet=runs/birdnet --out runs/meta
      explorer export bundle --from runs/raw_cnn/best.pt --with-default --fusion runs/meta/fusion --out bundles/fused
    """
    if bundle is not None and home is not None:
        raise click.UsageError("give --bundle or --home, not both")
    try:
        result = score_bundle(run_dir, cache_dir, out_dir, bundle=bundle, home=home, name=name,
                              absent_as_zero=absent_as_zero, threads=threads,
                              progress=lambda line: click.echo(line, err=True))
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        click.echo(f"explorer-train score-bundle: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{result.rows} validation windows of {result.window_samples} samples scored by {result.bundle} "
               f"in {result.seconds:.1f} s")
    if result.absent:
        click.echo(f"labels the bundle does not score, written as 0: {', '.join(result.absent)}")
    click.echo(f"scores: {result.path}")
    if result.bundle_branches and name not in result.bundle_branches:
        click.echo(f"note: --name {name} is none of the bundle's branches {result.bundle_branches}; export bundle "
                   "--with-default feeds the meta branch named as the default's BirdNET branch", err=True)
    click.echo(f"next: explorer-train fit-meta --branch <head>={run_dir} --branch {name}={out_dir} --out <meta run>")
