"""What `explorer run` does with a terminal (or with --serve): the device behind the guide's screen.

`TuiRuntime` is `run_headless`'s structure with a screen in front: the `DeviceSession`
(store recovered, bundle recorded, a tour opened when none is active), the pipeline on its
three threads, the feed the screen reads, and, on the way out, the flush and the clean
close of the log. Tests drive the same object through Textual's pilot.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from device.tui.app import ExplorerApp
from device.tui.board import LabelFacts
from device.tui.feed import LiveFeed
from device.tui.status import StatusCollector

log = logging.getLogger("explorer")


def species_lookup(manifest, store):
    """label -> `LabelFacts`: the running bundle first (names, class and the manifest's training
    support, for the "few training recordings" mark), then every bundle the log knows (names and
    class only: the log keeps no training support)."""
    names = {label.primary_label: LabelFacts(label.common_name, label.scientific_name, label.class_name, label.training)
             for label in manifest.labels} if manifest is not None else {}
    try:
        catalog = store.label_catalog()
    except Exception:  # an unreadable catalog only costs names of labels from older bundles
        catalog = None

    def lookup(label: str):
        if label in names:
            return names[label]
        info = catalog.get(label) if catalog is not None else None
        return LabelFacts(info.common_name, info.scientific_name, info.class_name) if info else None

    return lookup


class TuiRuntime:
    """One run of the device with a screen: session, source, pipeline, feed, and the app over them."""

    def __init__(self, home, settings, engine, source, live: bool, tour_name: str | None = None, ui_queue=None):
        """Open the session and start listening (the pipeline runs from here on).

        Args:
            source: An opened `AudioSource` (see `device.session.open_source`).
            live: Whether the source is live (drops instead of backpressure).
            tour_name: Name of the tour opened when none is active.
            ui_queue: A replacement UI channel (tests shrink it to show drops cost no window).
        """
        from device.session import DeviceSession

        self.home = home
        self.engine = engine
        self.source = source
        self.live = live
        self.session = DeviceSession(home, settings, engine)
        self.store = self.session.store
        tour_id = self.session.ensure_tour(tour_name)
        self.tour = self.store.tour(tour_id)
        self.pipeline = self._start(source, live, tour_id, ui_queue)
        self.collector = StatusCollector(self.pipeline, source, self.store, home.clips, live, sync=self.session.sync)
        self.feed = LiveFeed(self.pipeline, self.collector)
        self.closed = False

    def _start(self, source, live, tour_id, ui_queue):
        return self.session.start(source, live, tour_id, ui_queue=ui_queue)

    def app(self, **options) -> ExplorerApp:
        """The guide's screen over this run (options: see `ExplorerApp`)."""

        def started(tour) -> None:
            self.session.own_tour = True  # stopped at exit, like the tour the session opened

        return ExplorerApp(
            self.feed, self.store, species_lookup(self.engine.manifest, self.store), self.tour,
            on_tour_started=started, **options,
        )

    def close(self):
        """Stop listening, let the pipeline store what it holds, stop our tour, close the log.

        Returns the pipeline's last status (for the closing lines).
        """
        if not self.closed:
            self.closed = True
            self.session.finish()
        return self.pipeline.status()


@contextlib.contextmanager
def terminal_logging_muted(muted: bool):
    """While the screen owns the terminal, log lines go to the log file only (they would
    scribble over the screen); the handlers come back after."""
    root = logging.getLogger()
    removed = []
    if muted:
        for handler in list(root.handlers):
            if type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
                root.removeHandler(handler)
                removed.append(handler)
    try:
        yield
    finally:
        for handler in removed:
            root.addHandler(handler)


def run_tui(home, settings, engine, source_spec: str, realtime: bool, *, screen: bool = True,
            serve: bool = False, serve_host: str = "0.0.0.0", serve_port: int = 8765,
            serve_review: bool = False, sunlight: bool = False):
    """`explorer run` with the guide's screen (`screen`) and/or the phone view (`serve`).

    Returns the run's `RunReport` (the caller prints it once the screen is gone).

    Raises:
        AudioError: the source cannot be opened (before anything starts).
    """
    from device.run_report import build_run_report
    from device.session import open_source

    source, live = open_source(source_spec, settings, realtime, engine.min_sample_rate_hz)
    runtime = TuiRuntime(home, settings, engine, source, live)
    manifest = engine.manifest
    log.info("listening to %s with %s %s (%d labels)", source.name, manifest.name, manifest.version, len(engine.labels))
    publisher = server = None
    last_tour_id = runtime.tour.tour_id
    try:
        if serve:
            from device.tui.serve import StatePublisher, start_server

            publisher = StatePublisher.for_home(home)
            server, token = start_server(home, publisher.path, serve_host, serve_port, serve_review)
            if token:  # the device's own screen never asks for it; a phone must type it
                log.warning("phone view at %s: reviewing from a phone needs the token %s", server.url, token)
            else:
                log.info("phone view (read-only) at %s", server.url)
        app = runtime.app(publisher=publisher, sunlight=sunlight)
        app.handle_sigterm = True
        with terminal_logging_muted(screen):
            app.run(headless=not screen)
        last_tour_id = app.last_tour_id()
    finally:
        if server is not None:
            server.stop()
        status = runtime.close()
        if publisher is not None:
            publisher.remove()
    return build_run_report(home, last_tour_id, status)

