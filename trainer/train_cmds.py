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


def _source(birdclef_root: Path | None, lists: tuple[Path, ...], shared: Path | None, cache_dir: Path):
    """The options' data as a `trainer.jobs.DataSource` (JSON-able: a Ray trial or job rebuilds it)."""
    from trainer.jobs import DataSource

    if not birdclef_root and not lists and not shared:
        raise click.UsageError("no training examples: give --birdclef FOLDER, --list CSV or --shared-data DIR")
    return DataSource(cache=str(cache_dir), birdclef=str(birdclef_root) if birdclef_root else None,
                      lists=[str(p) for p in lists], shared=str(shared) if shared else None)


def _load(source):
    """(examples, soundscapes, labels, cache): the cache built or completed first, skips listed."""
    from trainer.audio_cache import AudioCache

    source.prepare(progress=True)
    for skipped in AudioCache(Path(source.cache)).skipped:
        click.echo(f"skipped {skipped.clip_id}: {skipped.reason}", err=True)
    return source.load()


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
@click.option("--pseudo-rounds", type=int, default=0, show_default=True,
              help="Noisy-student rounds on the unlabelled soundscapes after the supervised fit (trainer/pseudo.py).")
@click.option("--ray-address", default=None,
              help="Submit the fit as a job to this Ray cluster (http://head:8265): prints the job id at once; "
                   "`explorer-train job-status` polls it.")
def fit(birdclef_root, lists, shared, cache_dir, head, out, epochs, batch_size, lr, weight_decay, loss, precision,
        device, workers, patience, steps_per_epoch, seed, head_set, no_track, tracking_uri, data_dir, register_name,
        threshold, pseudo_rounds, ray_address):
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

    config = FitConfig(head=head, head_config=_settings(head_set), epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, loss=loss, precision=precision, device=device, workers=workers,
                       patience=patience, steps_per_epoch=steps_per_epoch, seed=seed, report=True)
    source = _source(birdclef_root, lists, shared, cache_dir)
    tracking = _tracking(no_track, tracking_uri, data_dir)
    if ray_address:
        _submit(ray_address, config, source, out, tracking_uri, None if no_track else data_dir)
        return
    try:
        examples, soundscapes, labels, cache = _load(source)
        taxa = _taxa(birdclef_root)
        if pseudo_rounds:
            from trainer.pseudo import noisy_student

            student = noisy_student(config, examples, cache, soundscapes, pseudo_rounds, out, labels=labels,
                                    backgrounds=soundscapes, progress=True)
            click.echo(student.table())
            return
        if tracking is None:
            from trainer.fit import fit as run_fit

            result, gate = run_fit(config, examples, cache, out, labels=labels, backgrounds=soundscapes,
                                   taxon_of=taxa), None
        else:
            from trainer.retrain import tracked_fit

            result, gate = tracked_fit(config, examples, cache, out, tracking=tracking, register=register_name,
                                       threshold=threshold, labels=labels, backgrounds=soundscapes, taxon_of=taxa)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        click.echo(f"explorer-train fit: {exc}", err=True)
        sys.exit(2)
    _print_result(result, gate)


def _submit(address: str, config, source, out: Path, tracking_uri: str | None, data_dir: Path | None) -> None:
    from dataclasses import asdict

    from trainer.jobs import FitJob, submit

    job = FitJob(config=asdict(config), data=source, out_dir=str(out), tracking_uri=tracking_uri,
                 tracking_dir=str(data_dir) if data_dir else None)
    job_id = submit(address, job)
    click.echo(f"submitted {job_id} to {address}")
    click.echo(f"poll it: explorer-train job-status --ray-address {address} {job_id}")


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
    from trainer.retrain import retrain as run_retrain

    try:
        examples, _, _, cache = _load(_source(None, lists, None, cache_dir))
        result, gate = run_retrain(source, epochs=epochs, examples=examples, cache=cache, out_dir=out, tracking=tracking_uri or data_dir, threshold=threshold,
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




@click.command(name="job-status")
@click.argument("job_id")
@click.option("--ray-address", required=True, help="The Ray cluster the job was submitted to.")
def job_status(job_id, ray_address):
    """The state of a fit submitted with `fit --ray-address`, and its MLflow run id once it has one.

    \b
    Example:
      explorer-train job-status --ray-address http://head:8265 raysubmit_XYZ
    """
    from trainer.jobs import status

    state, run_id = status(ray_address, job_id)
    click.echo(f"{job_id}: {state}" + (f", MLflow run {run_id}" if run_id else ""))


@click.command()
@with_data
@click.option("--head", required=True, help=HEAD_HELP)
@click.option("--space", required=True,
              help='The search space as JSON: {"lr": {"loguniform": [1e-4, 3e-3]}, "loss": {"choice": ["bce", "focal"]}, '
                   '"head.dropout": {"uniform": [0.1, 0.4]}} (head.<knob> sets a head setting).')
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Trial folders, Ray's state, best_config.json and trials.txt.")
@click.option("--samples", type=int, default=8, show_default=True, help="Trials drawn from the space.")
@click.option("--max-epochs", type=int, default=10, show_default=True)
@click.option("--grace-period", type=int, default=1, show_default=True, help="ASHA: epochs before a trial may be stopped.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--gpus-per-trial", type=float, default=0, show_default=True)
@click.option("--cpus-per-trial", type=float, default=1, show_default=True)
@click.option("--set", "head_set", multiple=True, metavar="KEY=VALUE", help="A head setting every trial shares.")
@click.option("--ray-address", default=None, help="A running Ray cluster (default: a local instance).")
@click.option("--tracking-uri", default=None)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=DATA_DIR, show_default=True)
def tune(birdclef_root, lists, shared, cache_dir, head, space, out, samples, max_epochs, grace_period, batch_size,
         device, gpus_per_trial, cpus_per_trial, head_set, ray_address, tracking_uri, data_dir):
    """Hyper-parameter search with Ray Tune and ASHA; every trial is an MLflow run.

    \b
    Example: eight learning rates and losses for CNN14 + MLP, one GPU each
      explorer-train tune --birdclef ~/birdclef-2025 --cache ~/cache/birdclef --head panns_mlp \\
          --set cnn14_checkpoint=$HOME/Cnn14_mAP=0.431.pth --gpus-per-trial 1 --out runs/tune \\
          --space '{"lr": {"loguniform": [1e-4, 3e-3]}, "loss": {"choice": ["bce", "focal"]}}'
    The best configuration lands in OUT/best_config.json; train it with `explorer-train fit`.
    """
    from trainer.fit import FitConfig
    from trainer.tune import parse_space
    from trainer.tune import tune as run_tune

    try:
        parsed = parse_space(json.loads(space))
    except (json.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--space") from None
    base = FitConfig(head=head, head_config=_settings(head_set), batch_size=batch_size, device=device,
                     epochs=max_epochs)
    result = run_tune(parsed, base, _source(birdclef_root, lists, shared, cache_dir), num_samples=samples,
                      max_epochs=max_epochs, grace_period=grace_period, out_dir=out, ray_address=ray_address,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, tracking_uri=tracking_uri,
                      tracking_dir=data_dir)
    click.echo(result.table())


from trainer.bundle_scores import score_bundle_command  # noqa: E402 (both modules keep torch behind their
from trainer.meta_cmd import fit_meta_command  # noqa: E402  commands, like this one)

COMMANDS = [fit, retrain, tune, job_status, onnx, fit_meta_command, score_bundle_command]
