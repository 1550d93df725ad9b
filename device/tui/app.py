"""`ExplorerApp`: the guide's screen. Polls the feed, keeps the models, owns the app keys.

Every `POLL_S` the app takes what arrived on its feed (never waiting: see feed.py), folds
detections into the `TourBoard`, appends the spectrogram columns, and tells the screen on
top to redraw what changed. Screens read `app.board`, `app.status`, `app.level` and the
mel strip, and talk to storage through `app.store` (the UI thread's own Store).

Themes: 'explorer-forest' (dark, the default) and 'explorer-sunlight' (black on white,
for a screen in full sun); `b` switches. Neither carries meaning by colour alone: every
mark is also a word or a symbol (★ NEW, ♪ now, ✓ yes, ✗ no, ⚠, ▲ bird...).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import signal
import time
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.theme import Theme

from device.domain import utc_now
from device.tui.board import TourBoard
from device.tui.feed import UNCHANGED
from device.tui.melstrip import MelStrip
from device.tui.messages import FeedTick
from device.tui.status import DeviceStatus, Level

log = logging.getLogger(__name__)

STYLES = Path(__file__).parent / "styles"
POLL_S = 0.25
"""How often the screen takes from its channel: 4 updates a second look live, and cost
the UI a few ms a second on a Pi (bench/tui_bench.py measures it)."""
MARKS_EVERY_S = 5.0
"""How often rows are redrawn with nothing new, so '♪ now' and '★ NEW' fade on time."""
FLUSH_TIMEOUT_S = 60.0
"""Longest wait at quit for the pipeline to analyse and store what it captured."""

FOREST = Theme(
    name="explorer-forest",
    primary="#7FB77E",
    secondary="#4E7D5B",
    accent="#F2C14E",
    warning="#F2C14E",
    error="#FF6B6B",
    success="#7FB77E",
    foreground="#E8EDE4",
    background="#111A14",
    surface="#17231B",
    panel="#22342A",
    dark=True,
    variables={
        "spectro-0": "#111A14", "spectro-1": "#2F5D3A", "spectro-2": "#5E9E5A",
        "spectro-3": "#C8D86A", "spectro-4": "#FFF6C2", "new-species": "#F2C14E",
    },
)
SUNLIGHT = Theme(
    name="explorer-sunlight",
    primary="#000000",
    secondary="#000000",
    accent="#000000",
    warning="#000000",
    error="#000000",
    success="#000000",
    foreground="#000000",
    background="#FFFFFF",
    surface="#FFFFFF",
    panel="#FFFFFF",
    dark=False,
    luminosity_spread=0.0,
    text_alpha=1.0,
    variables={
        "spectro-0": "#FFFFFF", "spectro-1": "#000000", "spectro-2": "#000000",
        "spectro-3": "#000000", "spectro-4": "#000000", "new-species": "#000000",
        "footer-key-foreground": "#000000", "footer-description-foreground": "#000000",
        "block-cursor-background": "#000000", "block-cursor-foreground": "#FFFFFF",
        "block-cursor-text-style": "bold",
    },
)


class ExplorerApp(App[None]):
    """The guide's screen over one feed (the live pipeline, or the phone view's state file)."""

    TITLE = "El Silencio Acoustic Explorer"
    handle_sigterm = False
    """Set by `explorer run`: SIGTERM (systemd stopping the service) quits like `q`, without asking."""
    CSS_PATH = STYLES / "global.tcss"
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("b", "toggle_sunlight", "Bright", show=False),
    ]
    ENABLE_COMMAND_PALETTE = False

    def __init__(
        self,
        feed,
        store,
        species_info: Callable[[str], tuple[str, str, str] | None],
        tour=None,
        *,
        clock: Callable[[], datetime] = utc_now,
        tz: tzinfo | None = None,
        sunlight: bool = False,
        can_review: bool = True,
        can_play: bool = True,
        review_token_sha256: str | None = None,
        on_tour_started: Callable[[object], None] | None = None,
        publisher=None,
        poll_s: float = POLL_S,
    ):
        """
        Args:
            feed: `LiveFeed` (the device) or the phone view's feed; polled, never waited on.
            store: This thread's own `Store` (tours, feedback, summaries).
            species_info: label -> (common, scientific, class) from the bundle's labels.
            tour: The active tour when the screen opens (its detections are loaded).
            clock: Wall-clock UTC now (tests fix it so snapshots are stable).
            tz: The zone times are shown in (None: the device's local zone).
            sunlight: Start in the high-contrast theme.
            can_review: Confirm/reject allowed (the phone view: only with a token).
            can_play: Clips can be played here (only on the device itself).
            review_token_sha256: When set, a review needs the token whose sha256 this is.
            on_tour_started: Called with each tour this screen starts (the session stops
                it at exit, like a tour `explorer run` started itself).
            publisher: Receives the app after each poll (the phone view's state file).
        """
        super().__init__()
        self.feed = feed
        self.store = store
        self.clock = clock
        self.tz = tz
        self.sunlight = sunlight
        self.can_control = bool(getattr(feed, "live_controls", False))
        self.can_review = can_review
        self.can_play = can_play
        self._token_sha256 = review_token_sha256
        self.review_unlocked = review_token_sha256 is None
        self.on_tour_started = on_tour_started
        self.publisher = publisher
        self.poll_s = poll_s
        self.board = TourBoard(species_info)
        self.melstrip = MelStrip()
        self.status = DeviceStatus()
        self.level: Level | None = None
        self.external_image = None
        """The phone view's spectrogram, published by the device (see ViewerApp)."""
        self.tour = tour
        self.quitting = False
        self.poll_count = 0
        self.ui_cpu_s = 0.0
        """CPU seconds this app spent polling and folding (the benchmark reads it)."""
        self._marks_at = time.monotonic()
        self._last_tour_id = tour.tour_id if tour else None
        self.register_theme(FOREST)
        self.register_theme(SUNLIGHT)
        self.theme = SUNLIGHT.name if sunlight else FOREST.name

    # -- lifecycle ----------------------------------------------------------------------
    def on_mount(self) -> None:
        from device.tui.screens.main import MainScreen

        if self.handle_sigterm:
            # Without a screen (served only) Ctrl-C is the way out, so it flushes too.
            signals = (signal.SIGTERM, signal.SIGINT) if self.is_headless else (signal.SIGTERM,)
            for signum in signals:
                try:
                    asyncio.get_running_loop().add_signal_handler(signum, self.shut_down)
                except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                    log.warning("signal %d will not flush the pipeline: no handler here", signum)
        self.reload_board()
        self.poll()
        self.push_screen(MainScreen())
        self.set_interval(self.poll_s, self.poll, name="feed")

    def melstrip_image(self, width: int, rows: int):
        return self.melstrip.image(width, rows)

    def poll(self) -> None:
        """Take what the feed holds (never waiting) and tell the screen on top what changed."""
        started = time.thread_time()
        update = self.feed.poll()
        board_version, strip_version = self.board.version, self.melstrip.version
        for prediction in update.predictions:
            window = prediction.window
            self.board.hear_audio(window.ended_on)
            if prediction.mel is not None:
                self.melstrip.push(prediction.mel, window.source, window.start_s, window.duration_s)
        for detection, state in update.detections:
            self.board.apply(detection, state)
        if update.spectrogram is not None:
            self.external_image = update.spectrogram
            self.melstrip.version += 1
        if update.tour_id is not UNCHANGED:
            self.tour = self.store.tour(update.tour_id) if update.tour_id else None
            self.reload_board()
        if update.lost_events > 0:
            log.info("the screen fell behind: %d UI events dropped; reloading the tour from the log", update.lost_events)
            self.reload_board()
        if update.status is not None:
            self.status = update.status
        if update.level is not None:
            self.level = update.level
        self.poll_count += 1
        if self.publisher is not None:
            self.publisher.publish(self)
        self.ui_cpu_s += time.thread_time() - started
        self.refresh_screens(board_changed=self.board.version != board_version,
                             spectrogram_changed=self.melstrip.version != strip_version)

    def refresh_screens(self, board_changed: bool = True, spectrogram_changed: bool = False) -> None:
        if self.screen_stack:
            self.screen.post_message(FeedTick(board_changed, spectrogram_changed))

    def marks_due(self) -> bool:
        """True every MARKS_EVERY_S: time alone changes '♪ now' and '★ NEW'."""
        if time.monotonic() - self._marks_at >= MARKS_EVERY_S:
            self._marks_at = time.monotonic()
            return True
        return False

    # -- tours --------------------------------------------------------------------------
    def reload_board(self) -> None:
        """Rebuild the board from the log (at start, on a new tour, after lost UI events)."""
        tour_id = self.tour.tour_id if self.tour else None
        records = self.store.detection_records(tour_id=tour_id) if tour_id else []
        self.board.reset(tour_id, records)

    def use_tour(self, tour, started_here: bool = False) -> None:
        """Point the pipeline and the board at `tour` (None: listening without a tour)."""
        self.tour = tour
        if tour is not None:
            self._last_tour_id = tour.tour_id
        self.feed.set_tour(tour.tour_id if tour else None)
        self.reload_board()
        if started_here and self.on_tour_started is not None:
            self.on_tour_started(tour)
        self.refresh_screens()

    def last_tour_id(self) -> str | None:
        return self._last_tour_id

    # -- review ---------------------------------------------------------------------------
    def unlock_review(self, token: str) -> bool:
        if self._token_sha256 is None:
            return True
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        self.review_unlocked = hmac.compare_digest(digest, self._token_sha256)
        return self.review_unlocked

    # -- app keys -------------------------------------------------------------------------
    def action_help(self) -> None:
        from device.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_sunlight(self) -> None:
        self.sunlight = not self.sunlight
        self.theme = SUNLIGHT.name if self.sunlight else FOREST.name

    async def action_quit(self) -> None:
        """Ask, then stop listening, let the pipeline store what it holds, and exit."""
        from device.tui.screens.dialogs import YesNoDialog

        if self.quitting:
            return
        question = "Stop listening and quit? Everything heard so far is kept." if self.can_control else "Close this view?"

        def answered(yes: bool | None) -> None:
            if yes:
                self.shut_down()

        self.push_screen(YesNoDialog(question, "Quit", "Stay"), answered)

    def shut_down(self) -> None:
        """Stop the feed and exit once the pipeline has flushed (in a worker: the UI stays live)."""
        if self.quitting:
            return
        self.quitting = True
        self.feed.stop()
        if not self.can_control:
            self.exit()
            return
        self.notify("Storing what was heard…", timeout=FLUSH_TIMEOUT_S)

        def flush() -> None:
            if not self.feed.finished(timeout=FLUSH_TIMEOUT_S):
                log.error("the pipeline did not finish within %.0f s of quitting", FLUSH_TIMEOUT_S)
            self.call_from_thread(self.exit)

        self.run_worker(flush, thread=True, name="flush")
