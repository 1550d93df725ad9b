"""`explorer run`: the live device (headless here; the TUI when attached to a terminal)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click

from device.cli.common import home_of, settings_of
from device.naming import taxon_name

log = logging.getLogger("explorer")

STATUS_EVERY_S = 30.0
"""How often a headless live run logs its status line (RTF, drops, detections, clips withheld)."""


def configure_logging(home, verbose: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        handlers.append(logging.FileHandler(home.logs / "explorer.log", encoding="utf-8"))
    except OSError:
        pass  # a full or read-only card must not stop the device
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def detection_printer(manifest):
    """A callback printing each closed detection as one line a person can read."""
    names = {label.primary_label: label for label in manifest.labels}

    def print_detection(detection) -> None:
        label = names.get(detection.label)
        species = (taxon_name(label.scientific_name, label.common_name, label.class_name, label.primary_label)
                   .text_with(label.class_name) if label else detection.label)
        when = detection.started_on.strftime("%H:%M:%S")
        kind = "also heard" if detection.secondary else "heard"
        click.echo(
            f"{when} {kind} {species}  confidence {detection.confidence:.2f}  "
            f"{detection.start_s:.1f}-{detection.end_s:.1f} s ({detection.window_count} windows)"
        )

    return print_detection


@click.command()
@click.option("--source", default="mic", show_default=True, help="mic, a microphone name or index, an audio FILE, or a DIR to watch.")
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False), help="Bundle directory (default: the active one).")
@click.option("--headless", is_flag=True, help="No screen: log detections to stdout (the default without a terminal).")
@click.option("--realtime", is_flag=True, help="Pace a FILE as if it were live (drops and latency as on the trail).")
@click.option("--hop", "hop_s", type=float, help="Seconds between window starts (config: [audio] hop_s).")
@click.option("--threads", type=int, help="onnxruntime threads in all (config: [inference] threads).")
@click.option("--device-id", help="This device's id (config: [device] id).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="With a DIR source: where result CSVs go.")
@click.option("--once", is_flag=True, help="With a DIR source: analyse what is there, then exit.")
@click.option("--serve", is_flag=True, help="Also show the screen to phones on this network (read-only; textual-serve).")
@click.option("--serve-port", type=int, default=8765, show_default=True, help="With --serve: the web port.")
@click.option("--serve-review", is_flag=True, help="With --serve: allow confirm/reject from a phone, behind a token shown here.")
@click.option("--verbose", is_flag=True)
@click.pass_context
def run(ctx, source, bundle_dir, headless, realtime, hop_s, threads, device_id, out_dir, once, serve, serve_port,
        serve_review, verbose) -> None:
    """Listen and name who is calling: detections go to the local log, with clips.

    A FILE source runs until the recording ends, then prints the tour summary. A live source
    runs until Ctrl-C. A tour is started when none is active, and stopped on exit.

    Example:

        explorer run --source examples/H02_20230420_074000.ogg --headless
    """
    from device.bundle.manifest import BundleError
    from device.config import ConfigError
    from device.engine.loader import load_engine

    home = home_of(ctx)
    configure_logging(home, verbose)
    try:
        settings = settings_of(ctx).with_overrides(
            audio={"hop_s": hop_s}, inference={"threads": threads}, device={"id": device_id}
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    screen = not headless and sys.stdout.isatty()
    try:
        engine = load_engine(home, bundle_dir, settings.inference.threads)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    if Path(source).is_dir():
        from device.watch_runner import run_watch_folder

        with stop_signals() as stop:
            run_watch_folder(home, settings, engine, Path(source), Path(out_dir) if out_dir else home.watch_output,
                             once, stop=stop)
        return
    if screen or serve:
        from device.audio.types import AudioError
        from device.tui.run import run_tui

        try:
            report = run_tui(home, settings, engine, source, realtime, screen=screen, serve=serve,
                             serve_port=serve_port, serve_review=serve_review)
        except AudioError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        report = run_headless(home, settings, engine, source, realtime)
    print_run_report(report)


def print_run_report(report) -> None:
    """Print a `RunReport`; a run that failed or lost something exits 1 with its reason."""
    for text in report.lines():
        click.echo(text)
    if report.problem:
        raise click.ClickException(report.problem)


@contextlib.contextmanager
def stop_signals():
    """SIGINT/SIGTERM set the returned Event instead of raising KeyboardInterrupt mid-setup.

    A KeyboardInterrupt that lands while a microphone stream is open but the pipeline is not yet
    running would unwind past the stream, and PortAudio's callback thread can then hang the
    interpreter's exit. With a flag, every path shuts down in order: stop, flush, close.
    """
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("stopping (signal %d): flushing the pipeline", signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_headless(home, settings, engine, source_spec: str, realtime: bool):
    """Run without a screen until the source ends or a signal; return the `RunReport`."""
    from device.audio.types import AudioError
    from device.run_report import build_run_report
    from device.session import DeviceSession, open_source

    with stop_signals() as stop:
        try:
            source, live = open_source(source_spec, settings, realtime, engine.min_sample_rate_hz)
        except AudioError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            session = DeviceSession(home, settings, engine)
            tour_id = session.ensure_tour()
            pipeline = session.start(source, live, tour_id, on_detection=detection_printer(engine.manifest))
        except BaseException:
            source.close()
            raise
        manifest = engine.manifest
        log.info("listening to %s with %s %s (%d labels)", source.name, manifest.name, manifest.version, len(engine.labels))
        next_status = time.monotonic() + STATUS_EVERY_S
        while not pipeline.wait(timeout=0.25):
            if stop.is_set():
                pipeline.stop()
            elif live and time.monotonic() >= next_status:
                next_status += STATUS_EVERY_S
                s = pipeline.status()
                mic = s.microphone
                log.info(
                    "%s: %d windows, RTF %.3f, %d dropped, %d detections, %d clips withheld for privacy%s%s",
                    s.source_state, s.windows_inferred, s.rtf, s.windows_dropped, s.detections_closed,
                    s.clips_withheld,
                    f", level {mic.level_dbfs:.0f} dBFS, {mic.clipped_samples} clipped, {mic.reconnects} reconnects"
                    if mic is not None else "",
                    f", {s.windows_unscored} windows not scored ({s.branch_failures} branch failures)"
                    if s.windows_unscored or s.branch_failures else "",
                )
        session.finish()
    return build_run_report(home, tour_id, pipeline.status())
