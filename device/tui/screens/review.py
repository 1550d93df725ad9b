"""What the main and detail screens do when a guide reviews or plays a detection.

Both go through the screen's app: its own Store (opened on the UI thread) for the verdict,
the board so every screen shows it at once, and the token gate of the phone view.
"""

from __future__ import annotations

from textual.screen import Screen

from device.store import StoreError
from device.tui.playback import output_device, play_clip
from device.tui.screens.dialogs import TokenDialog
from device.tui.widgets.status_bar import format_clock

VERDICT_DONE = {"confirm": "Confirmed", "reject": "Rejected"}


def record_verdict(screen: Screen, detection_id: str, verdict: str) -> None:
    """Store a guide's verdict on a detection (asking a phone viewer for the token first)."""
    app = screen.app
    if not app.can_review:
        app.notify("This view is read-only: review on the device, or serve with --serve-review.", severity="warning")
        return
    if not app.review_unlocked:

        def unlocked(token: str | None) -> None:
            if token and app.unlock_review(token):
                record_verdict(screen, detection_id, verdict)
            elif token:
                app.notify("That token is not the one shown on the device.", severity="error")

        app.push_screen(TokenDialog(), unlocked)
        return
    heard = app.board.detection(detection_id)
    try:
        app.store.add_feedback(detection_id, verdict)
    except (StoreError, ValueError) as exc:
        app.notify(f"Not stored: {exc}", severity="error")
        return
    app.board.set_verdict(detection_id, verdict)
    if heard is not None:
        row = app.board.row(heard.detection.label)
        name = row.name.heading if row else heard.detection.label  # "Little Tinamou", "a cicada"
        when = format_clock(heard.detection.started_on, app.tz, seconds=True)
        app.notify(f"{VERDICT_DONE[verdict]}: {name} heard at {when}")
    app.refresh_screens()


def play_detection(screen: Screen, detection_id: str) -> None:
    """Play the detection's clip in a worker thread; say why not when it cannot."""
    app = screen.app
    if not app.can_play:
        app.notify("Clips play on the device itself, not in this view.", severity="warning")
        return
    try:
        clips = app.store.list_clips(detection_id)
    except StoreError as exc:
        app.notify(f"No clip: {exc}", severity="error")
        return
    if not clips:
        app.notify("No clip yet: it is saved when the detection ends (or retention removed it).")
        return
    speaker = output_device()
    if speaker is None:
        app.notify("No speaker or audio output is connected.", severity="warning")
        return
    path = clips[-1].path

    def play() -> None:
        try:
            play_clip(path)
        except Exception as exc:  # a clip removed meanwhile, a busy card
            app.call_from_thread(app.notify, f"Could not play the clip: {exc}", severity="error")

    app.notify(f"Playing on {speaker}")
    app.run_worker(play, thread=True, exclusive=True, group="playback")
