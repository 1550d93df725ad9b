"""`explorer analyze`: recordings in, a BirdCLEF submission CSV out."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from device.cli.common import home_of

from device.audio.files import AUDIO_EXTENSIONS


def expand_inputs(paths: tuple[str, ...]) -> list[Path]:
    """Files as given; directories expanded to the audio files they hold, sorted."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()))
        else:
            files.append(path)
    return files


@click.command()
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False), help="Bundle directory (default: the active one).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="The CSV to write.")
@click.option("--threads", type=int, default=0, show_default=True, help="onnxruntime threads in all (0: the bundle's hints).")
@click.pass_context
def analyze(ctx: click.Context, audio: tuple[str, ...], bundle_dir: str | None, out_path: str, threads: int) -> None:
    """Score recordings in 5 s windows and write the BirdCLEF submission format.

    One row per non-overlapping 5 s window, row_id = <file stem>_<end second>, then one column
    per label of the bundle in manifest order (probabilities in [0, 1]). A file that cannot be
    read, or was recorded below the lowest rate the bundle can use, is reported and skipped; the
    others are still written, and the exit code is 1. A cell the bundle could not score (a
    branch gave NaN or failed) is left empty, never 0; the summary names those rows.

    Example:

        explorer analyze examples/H02_20230420_074000.ogg --out submission.csv
    """
    from device.analysis import analyze_file, row_id, write_submission
    from device.audio.types import AudioError
    from device.bundle.manifest import BundleError
    from device.engine.loader import load_engine

    try:
        engine = load_engine(home_of(ctx), bundle_dir, threads)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    rows, failed, unscored = [], [], []
    for path in expand_inputs(audio):
        file_rows, file_unscored = [], []
        try:
            for i, prediction in enumerate(analyze_file(engine, path)):
                file_rows.append((row_id(path, i), prediction.scores))
                if prediction.unscored_branches:
                    file_unscored.append((row_id(path, i), prediction.unscored_branches))
        except (AudioError, OSError) as exc:
            failed.append(path)
            click.echo(f"skipped {path}: {exc}", err=True)
            continue
        rows.extend(file_rows)
        unscored.extend(file_unscored)
        click.echo(f"{path}: {len(file_rows)} windows", err=True)
    write_submission(Path(out_path), engine.labels, rows)
    click.echo(f"wrote {len(rows)} rows x {len(engine.labels)} labels to {out_path}", err=True)
    if unscored:
        click.echo(unscored_summary(unscored), err=True)
    if failed:
        sys.exit(1)


ROW_IDS_SHOWN = 20
"""Row ids listed by name when windows could not be scored; past this a count (the CSV shows every one)."""


def unscored_summary(unscored: list[tuple[str, tuple[str, ...]]]) -> str:
    """The summary line for windows a branch gave NaN/infinity on or failed on: how many,
    which branches, and their row ids (their cells are empty in the CSV)."""
    branches = sorted({name for _, names in unscored for name in names})
    ids = [rid for rid, _ in unscored]
    shown = ", ".join(ids[:ROW_IDS_SHOWN]) + (f" and {len(ids) - ROW_IDS_SHOWN} more" if len(ids) > ROW_IDS_SHOWN else "")
    return (
        f"warning: {len(ids)} windows could not be scored ({', '.join(branches)} gave NaN/infinity or failed); "
        f"their cells are empty, not 0: {shown}"
    )
