"""`explorer-train fit | retrain | tune | onnx`: the training commands (the group is trainer/cli.py).

One data path for every command: examples from a BirdCLEF folder and/or plain labelled lists,
decoded once into a cache (`explorer-train cache`, or here on first use), then `trainer.fit.fit`.
MLflow tracks every run unless `--no-track`; `--register NAME` registers the best checkpoint
through the gate (`trainer.registry.register_gated`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

DATA_DIR = Path("~/.local/share/elsilencio-explorer/training").expanduser()
"""Where MLflow's SQLite store and artifacts live by default (beside the device's data home)."""


def _examples(birdclef_root: Path | None, lists: tuple[Path, ...], shared: Path | None):
    """Every example the options name, and the soundscapes (backgrounds, pseudo-labelling)."""
    from trainer.birdclef import load_birdclef, soundscape_examples
    from trainer.labelled import examples_from_recordings, read_examples

    examples, soundscapes = [], []
    if birdclef_root:
        data = load_birdclef(birdclef_root)
        click.echo(data.summary(), err=True)
        examples += data.examples
        soundscapes += soundscape_examples(data)
    for path in lists:
        examples += read_examples(path)
    if shared:
        found = examples_from_recordings(shared)
        examples += [e for e in found if not e.background]
        soundscapes += [e for e in found if e.background]
    if not examples:
        raise click.UsageError("no training examples: give --birdclef FOLDER, --list CSV or --shared-data DIR")
    return examples, soundscapes


def _cache(root: Path, examples):
    from trainer.audio_cache import AudioCache, build_cache, items_from_examples

    report = build_cache(root, items_from_examples(examples), bar=True)
    for skipped in report.skipped:
        click.echo(f"skipped {skipped.clip_id}: {skipped.reason}", err=True)
    return AudioCache(root)


def _settings(pairs: tuple[str, ...]) -> dict:
    """`--set key=value` pairs as a dict (values parsed as JSON when they parse: 8, 0.5, true)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--set")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


data_options = [
    click.option("--birdclef", "birdclef_root", type=click.Path(path_type=Path, file_okay=False, exists=True),
                 help="A BirdCLEF 2025 folder: train.csv, taxonomy.csv, train_audio/, train_soundscapes/."),
    click.option("--list", "lists", multiple=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
                 help="A plain labelled list (path,label[,...]: the guides' confirmed clips); repeatable."),
    click.option("--shared-data", "shared", type=click.Path(path_type=Path, file_okay=False, exists=True),
                 help="A folder with recordings.csv / recordings_more.csv (the project's shared recordings)."),
    click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
                 help="The decoded-audio cache (built or completed first; see `explorer-train cache`)."),
]


def with_data(command):
    for option in reversed(data_options):
        command = option(command)
    return command


def _taxa(birdclef_root: Path | None) -> dict[str, str] | None:
    if not birdclef_root:
        return None
    from trainer.birdclef import read_taxonomy

    return {taxon.label: taxon.class_name for taxon in read_taxonomy(birdclef_root / "taxonomy.csv")}


def _tracking(no_track: bool, tracking_uri: str | None, data_dir: Path):
    return None if no_track else (tracking_uri or data_dir)


def _print_result(result, gate) -> None:
    click.echo(f"best epoch {result.best_epoch} of {result.epochs_run}: BirdCLEF metric {result.best_metric:.6f}"
               f"{' (stopped early)' if result.stopped_early else ''}")
    click.echo(f"checkpoint: {result.best_path}")
    if result.report:
        click.echo(f"report: {result.report}")
    if gate is not None:
        click.echo(f"registration: {gate.reason}")


HEAD_HELP = "raw_cnn, panns_mlp, effnet_b3_lora, resnet50 (meta_mlp trains on their scores)."


@click.command()
@with_data
@click.option("--head", required=True, help=HEAD_HELP)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The run folder: last.pt, best.pt, validation.npz, report/ (a rerun resumes from last.pt).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="The one-cycle schedule's peak.")
@click.option("--weight-decay", type=float, default=1e-2, show_default=True)
@click.option("--loss", type=click.Choice(["bce", "focal"]), default="bce", show_default=True)
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cuda or cpu.")
@click.option("--workers", type=int, default=4, show_default=True, help="DataLoader processes reading the cache.")
@click.option("--patience", type=int, default=5, show_default=True, help="Early stopping; 0 never stops early.")
@click.option("--steps-per-epoch", type=int, default=None, help="Default: one pass over the training examples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "head_set", multiple=True, metavar="KEY=VALUE",
              help="A head setting (e.g. cnn14_checkpoint=Cnn14_mAP=0.431.pth, rank=8, window_samples=160000).")
@click.option("--no-track", is_flag=True, help="Do not log the run to MLflow.")
@click.option("--tracking-uri", default=None, help="An MLflow tracking URI (default: SQLite under --data-dir).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=DATA_DIR, show_default=True,
              help="MLflow's local store and artifacts.")
@click.option("--register", "register_name", default=None,
              help="Register the best checkpoint under this model name, if it passes the gate.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="The gate: the lowest validation BirdCLEF metric a registered model may have.")
def fit(birdclef_root, lists, shared, cache_dir, head, out, epochs, batch_size, lr, weight_decay, loss, precision,
        device, workers, patience, steps_per_epoch, seed, head_set, no_track, tracking_uri, data_dir, register_name,
        threshold):
    """Train one head on cached audio, tracked in MLflow; register it if it clears the gate.

    \b
    Example: CNN14 (the public PANNs checkpoint) with an MLP head on BirdCLEF 2025, on one GPU
      explorer-train cache --birdclef ~/birdclef-2025 --out ~/cache/birdclef --workers 8
      explorer-train fit --birdclef ~/birdclef-2025 --cache ~/cache/birdclef --head panns_mlp \\
          --set cnn14_checkpoint=$HOME/Cnn14_mAP=0.431.pth --out runs/panns --register panns
    Several GPUs: the same command under `torchrun --nproc-per-node 4 -m trainer.cli fit ...`.
    A quick run on the project's shared recordings (CPU, minutes):
      explorer-train fit --shared-data ../shared/data --cache /tmp/cache --head raw_cnn \\
          --epochs 2 --batch-size 8 --steps-per-epoch 20 --device cpu --out /tmp/run
    """
    from trainer.fit import FitConfig
    from trainer.retrain import tracked_fit

    examples, soundscapes = _examples(birdclef_root, lists, shared)
    cache = _cache(cache_dir, examples + soundscapes)
    config = FitConfig(head=head, head_config=_settings(head_set), epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, loss=loss, precision=precision, device=device, workers=workers,
                       patience=patience, steps_per_epoch=steps_per_epoch, seed=seed, report=True)
    examples = [e for e in examples if e.clip_id in cache]
    backgrounds = [e for e in soundscapes if e.clip_id in cache]
    try:
        tracking = _tracking(no_track, tracking_uri, data_dir)
        if tracking is None:
            from trainer.fit import fit as run_fit

            result, gate = run_fit(config, examples, cache, out, backgrounds=backgrounds,
                                   taxon_of=_taxa(birdclef_root)), None
        else:
            result, gate = tracked_fit(config, examples, cache, out, tracking=tracking, register=register_name,
                                       threshold=threshold, backgrounds=backgrounds, taxon_of=_taxa(birdclef_root))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        click.echo(f"explorer-train fit: {exc}", err=True)
        sys.exit(2)
    _print_result(result, gate)


@click.command()
@click.option("--from", "source", required=True,
              help="models:/<name>/<version>, models:/<name>@<alias> (or /<alias>), or a checkpoint file.")
@click.option("--epochs", type=int, required=True, help="Epochs of fine-tuning on the new data.")
@click.option("--data", "lists", multiple=True, required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="A labelled list of the new data (the guides' confirmed clips); repeatable.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--lr", type=float, default=None, help="Default: the source run's.")
@click.option("--tracking-uri", default=None)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=DATA_DIR, show_default=True)
@click.option("--threshold", type=float, default=0.5, show_default=True)
def retrain(source, epochs, lists, cache_dir, out, lr, tracking_uri, data_dir, threshold):
    """Fine-tune a registered model on new data, log it as a child run and gate its registration.

    \b
    Example: the production panns model on this month's confirmed clips
      explorer-server export --format labelled --out confirmed/   # on the server
      explorer-train retrain --from models:/panns@production --epochs 3 \\
          --data confirmed/labelled.csv --cache ~/cache/confirmed --out runs/panns-2026-12
    """
    from trainer.labelled import read_examples
    from trainer.retrain import retrain as run_retrain

    examples = [e for path in lists for e in read_examples(path)]
    cache = _cache(cache_dir, examples)
    try:
        result, gate = run_retrain(source, epochs=epochs, examples=[e for e in examples if e.clip_id in cache],
                                   cache=cache, out_dir=out, tracking=tracking_uri or data_dir, threshold=threshold,
                                   fit_config_overrides={"lr": lr} if lr else None)
    except (ValueError, KeyError, LookupError, FileNotFoundError) as exc:
        click.echo(f"explorer-train retrain: {exc}", err=True)
        sys.exit(2)
    _print_result(result, gate)


@click.command()
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The artefact folder: body.onnx, head.json, reference.npz (format explorer-head-onnx/1).")
@click.option("--audio", multiple=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Real recordings the reference windows are cut from (default: the shared recordings).")
@click.option("--windows", type=int, default=8, show_default=True,
              help="Reference windows: the exporter's parity check and int8 gate run on them.")
@click.option("--tracking-uri", default=None, help="For a models:/ SOURCE (default: SQLite under --data-dir).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=DATA_DIR, show_default=True)
def onnx(source, out, audio, windows, tracking_uri, data_dir):
    """Export a trained head (a checkpoint or a registered model) as an ONNX artefact the exporter reads.

    
    Example: the production panns model into a signed bundle with the default model's BirdNET
      explorer-train onnx models:/panns@production --out artefacts/panns --windows 64
      explorer export bundle --from artefacts/panns --with-default --out bundles/panns
    (`explorer export bundle --from models:/panns@production` runs this command itself.)

    The torch outputs on the reference windows go into the artefact, so the exporter proves
    onnxruntime computes what torch computed without importing torch.
    """
    from trainer.onnx_export import export_checkpoint
    from trainer.registry import RegistryError, resolve

    try:
        checkpoint = Path(source)
        if source.startswith("models:/"):
            checkpoint = resolve(source, tracking_uri or data_dir, dst=out.parent / f".{out.name}-checkpoint")
        path = export_checkpoint(checkpoint, out, reference_audio=list(audio) or None, windows=windows)
    except (RegistryError, ValueError, KeyError, FileNotFoundError) as exc:
        click.echo(f"explorer-train onnx: {exc}", err=True)
        sys.exit(2)
    click.echo(f"wrote {path}")


COMMANDS = [fit, retrain, onnx]
