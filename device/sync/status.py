"""What the device says about itself: the retained status (device/contracts/status.py).

The worker publishes a status on every connect, every `[sync] status_interval_s`, and at once
when something a person would act on changes: the bundle, the outbox's pending or unconfirmed
count crossing between zero and non-zero, or more windows dropped. Online and offline are the
connection's own business (the will, and the goodbye at a clean stop: device/sync/session.py).

A status source (`Callable[[], Status]`) gives what only the run knows (bundle, real-time
factor, windows dropped, clip disk, battery); `compose` adds what the sync side knows itself
(the outbox counts, the last detection, the release) and is all `explorer sync` has. Every read
here is a snapshot or a syscall, cheap enough to run on each worker wake.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from device.domain import Status, utc_now

log = logging.getLogger(__name__)

POWER_SUPPLY = Path("/sys/class/power_supply")
PACKAGE = "elsilencio-explorer"
"""The distribution whose version is the release a status reports."""


@functools.cache
def release() -> str:
    """The explorer release this device runs (its package version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def battery_percent(root: Path = POWER_SUPPLY) -> int | None:
    """Charge of the first battery sysfs reports (a UPS HAT's fuel gauge), or None without one."""
    try:
        supplies = sorted(root.iterdir())
    except OSError:
        return None
    for supply in supplies:
        try:
            if (supply / "type").read_text().strip() != "Battery":
                continue
            return int((supply / "capacity").read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def disk_free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk holding `folder` (its parent before it exists), or None."""
    folder = Path(folder)
    try:
        return shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        return None


def run_status_source(device_id: str, bundle_name: str, bundle_version: str, clips_dir: Path,
                      pipeline: Callable[[], object | None]) -> Callable[[], Status]:
    """The status source of a run (device/session.py): `pipeline()` returns the running
    Pipeline or None (its `status()` is a copy under a short lock, safe from any thread)."""

    def source() -> Status:
        running = pipeline()
        snapshot = running.status() if running is not None else None
        rtf = getattr(snapshot, "rtf", None)
        return Status(
            device_id=device_id, online=True, published_on=utc_now(), release=release(),
            bundle_name=bundle_name, bundle_version=bundle_version,
            rtf=float(rtf) if rtf is not None and math.isfinite(rtf) and rtf >= 0 else None,
            windows_dropped=getattr(snapshot, "windows_dropped", None),
            clip_disk_free_bytes=disk_free_bytes(clips_dir), battery_percent=battery_percent(),
        )

    return source


def compose(device_id: str, source: Status | None, pending: int | None, unconfirmed: int | None,
            last_detection: datetime | None, online: bool = True) -> Status:
    """The status to publish: the source's facts (or none), with the sync side's own."""
    base = source or Status(device_id=device_id, online=online, published_on=utc_now(), release=release())
    return dataclasses.replace(
        base, device_id=device_id, online=online, published_on=utc_now(), release=base.release or release(),
        outbox_pending=pending, outbox_unconfirmed=unconfirmed,
        last_detection_on=base.last_detection_on or last_detection,
    )


def offline(status: Status) -> Status:
    """The same status saying offline: the last will, and the goodbye of a clean stop."""
    return dataclasses.replace(status, online=False, published_on=utc_now())


def change_key(status: Status) -> tuple:
    """What a person would act on: a new value here publishes a status at once."""
    return (status.online, status.bundle_name, status.bundle_version, bool(status.outbox_pending),
            bool(status.outbox_unconfirmed), status.windows_dropped or 0)


class StatusSchedule:
    """When the next status is due: on a change of `change_key`, or `interval_s` after the last."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._key: tuple | None = None
        self._at = -math.inf

    def due(self, status: Status) -> bool:
        return change_key(status) != self._key or self.seconds_left() <= 0

    def published(self, status: Status) -> None:
        self._key = change_key(status)
        self._at = self._clock()

    def forget(self) -> None:
        """A new connection: the next status goes at once (the broker may hold the will's)."""
        self._key, self._at = None, -math.inf

    def seconds_left(self) -> float:
        return max(0.0, self._at + self.interval_s - self._clock())
