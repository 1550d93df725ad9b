"""The status line: microphone, bundle, real-time factor and drops, sync, disk, battery.

Each fact is a short labelled item ("RTF 0.01", "dropped 0"), never a coloured dot alone,
packed into as many lines as the width needs (two on an 80-column terminal). Windows the
bundle could not score (NaN or a failed branch), and clips the privacy filter withheld, get an
item only when there are any.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path

from rich.text import Text
from textual.widget import Widget

from device.tui.status import DeviceStatus

SEPARATOR = " │ "


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def source_words(status: DeviceStatus) -> str:
    """'mic pulse: capturing' / 'file 3.ogg: ended'."""
    if status.source.startswith("mic:"):
        name = f"mic {status.source[4:]}"
    else:
        name = f"file {Path(status.source).name}" if status.source else "no source"
    return f"{name}: {status.source_state}"


def status_items(status: DeviceStatus, tz: tzinfo | None) -> list[tuple[str, str]]:
    """(text, style) items in reading order; style '' or 'warning' (a problem worth a look)."""
    warn = "warning"
    items = [
        (("⚠ " if status.source_state in ("reconnecting", "stopped") and status.live else "") + source_words(status),
         warn if status.source_state == "reconnecting" else ""),
        (status.bundle or "no bundle", ""),
        (f"RTF {status.rtf:.3f}", warn if status.rtf >= 1.0 else ""),
        (f"dropped {status.windows_dropped}", warn if status.windows_dropped else ""),
    ]
    if status.windows_unscored or status.branch_failures:  # rare: only then does the line grow
        failures = f" ({status.branch_failures} branch failures)" if status.branch_failures else ""
        items.append((f"⚠ {status.windows_unscored} windows not scored{failures}", warn))
    if status.clips_withheld:  # the privacy filter at work, not a problem: no warning style
        items.append((clips_withheld_words(status.clips_withheld), ""))
    # "pending" in the guide's words: everything the server has not confirmed yet (device-side
    # pending + sent-unconfirmed); "last" is the last receipt. A broker's PUBACK alone never
    # brings it to 0.
    if status.pending_sync is None:
        items.append(("sync: unknown", warn))
    else:
        last = status.last_sync_on.astimezone(tz).strftime("%H:%M") if status.last_sync_on else "never"
        if status.sync_error:  # the words a guide can act on; the full reason is in the log
            items.append((f"⚠ sync {status.pending_sync} pending, last {last}: {sync_problem(status.sync_error)}", warn))
        else:
            items.append((f"sync {status.pending_sync} pending, last {last}", ""))
    if status.clip_disk_free_bytes is not None:
        low = status.clip_disk_free_bytes < 200_000_000
        items.append((("⚠ " if low else "") + f"clips disk {human_bytes(status.clip_disk_free_bytes)} free", warn if low else ""))
    if status.battery_percent is not None:
        low = status.battery_percent <= 15
        items.append((("⚠ " if low else "") + f"battery {status.battery_percent}%", warn if low else ""))
    if status.error:
        items.append((f"⚠ error: {status.error}", warn))
    return items


def clips_withheld_words(count: int) -> str:
    """'3 clips withheld for privacy': detections kept without audio because people were talking
    (the run report's words)."""
    return f"{count} clip{'' if count == 1 else 's'} withheld for privacy"


def sync_problem(error: str) -> str:
    """A sync worker's error in a few words for the trail."""
    lowered = error.lower()
    if "refused the connection" in lowered or "not authorized" in lowered or "refuses our messages" in lowered:
        return "broker refuses this device"
    if "tls" in lowered or "certificate" in lowered:
        return "TLS problem"
    return "no connection"


def pack(items: list[tuple[str, str]], width: int) -> list[list[tuple[str, str]]]:
    """Items into lines no wider than `width` (an item longer than a line gets its own)."""
    lines: list[list[tuple[str, str]]] = [[]]
    used = 0
    for text, style in items:
        extra = len(text) + (len(SEPARATOR) if lines[-1] else 0)
        if lines[-1] and used + extra > width:
            lines.append([])
            used, extra = 0, len(text)
        lines[-1].append((text, style))
        used += extra
    return lines


class StatusBar(Widget):
    DEFAULT_CSS = """
    StatusBar { height: auto; }
    """
    COMPONENT_CLASSES = {"status-bar--warning"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.status = DeviceStatus()
        self.tz: tzinfo | None = None
        self.shown: list[tuple[str, str]] = status_items(self.status, None)

    def show(self, status: DeviceStatus, tz: tzinfo | None) -> None:
        """Repaint only when the words change (most status fields move every window, their
        rounded text rarely does), and lay the screen out again only when the line count does."""
        self.status, self.tz = status, tz
        items = status_items(status, tz)
        if items == self.shown:
            return
        width = max(20, self.size.width)
        relayout = len(pack(items, width)) != len(pack(self.shown, width))
        self.shown = items
        self.refresh(layout=relayout)

    def _lines(self, width: int) -> list[list[tuple[str, str]]]:
        return pack(status_items(self.status, self.tz), max(20, width))

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self._lines(width))

    def render(self) -> Text:
        warning = self.get_component_rich_style("status-bar--warning")
        text = Text()
        for n, line in enumerate(self._lines(self.size.width)):
            if n:
                text.append("\n")
            for i, (item, style) in enumerate(line):
                if i:
                    text.append(SEPARATOR)
                text.append(item, style=warning if style == "warning" else "")
        return text


def format_clock(moment: datetime | None, tz: tzinfo | None, seconds: bool = False) -> str:
    """A time of day in the device's zone ('07:40' / '07:40:12'), '-' for none."""
    if moment is None:
        return "-"
    return moment.astimezone(tz).strftime("%H:%M:%S" if seconds else "%H:%M")
