"""The phone view's app (one per browser tab, started by textual-serve): `python -m device.tui.viewer`.

It shows what the device's own screen shows, read from the device's state file (status,
level, spectrogram, tour) and from the log. It cannot start or stop tours nor play clips;
it reviews (confirm/reject) only when the device was served with --serve-review, and only
after the phone typed the token shown on the device.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from pathlib import Path

import numpy as np

from device.tui.app import ExplorerApp
from device.tui.feed import UNCHANGED, FeedUpdate
from device.tui.melstrip import pool_rows
from device.tui.run import species_lookup
from device.tui.status import DeviceStatus, Level

log = logging.getLogger(__name__)


class SnapshotFeed:
    """The device's state file and the log's change counter, read without waiting on anything."""

    live_controls = False

    def __init__(self, state_path: Path, store):
        self.state_path = Path(state_path)
        self.store = store
        self._mtime = None
        self._data_version = None
        self._tour_id = UNCHANGED

    def read_state(self) -> dict | None:
        try:
            mtime = self.state_path.stat().st_mtime_ns
            if mtime == self._mtime:
                return None
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet, or replaced between stat and read
            return None
        self._mtime = mtime
        return state

    def poll(self) -> FeedUpdate:
        update = FeedUpdate()
        # PRAGMA data_version moves whenever another connection (the device) commits.
        version = self.store.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            update.lost_events = 0 if self._data_version is None else 1
            self._data_version = version
        state = self.read_state()
        if state is None:
            return update
        update.status = DeviceStatus.from_dict(state.get("status") or {})
        if state.get("level"):
            update.level = Level(**state["level"])
        picture = state.get("spectrogram")
        if picture:
            data = np.frombuffer(base64.b64decode(picture["data"]), dtype=np.uint8)
            update.spectrogram = data.reshape(picture["rows"], picture["width"]).astype(np.float32) / 255
        tour_id = state.get("tour_id")
        if tour_id != self._tour_id:
            update.tour_id = self._tour_id = tour_id
        return update

    def set_tour(self, tour_id) -> None:
        pass  # the device decides tours

    def stop(self) -> None:
        pass

    def finished(self, timeout: float = 0.0) -> bool:
        return True


class ViewerApp(ExplorerApp):
    """The guide's screen, fed from the device's state file, showing the published spectrogram."""

    def melstrip_image(self, width: int, rows: int):
        image = self.external_image
        if image is None:
            return np.zeros((rows, width), np.float32)
        shown = image[:, -width:] if image.shape[1] >= width else np.pad(image, ((0, 0), (width - image.shape[1], 0)))
        if rows == shown.shape[0]:
            return shown
        return pool_rows(shown, rows)


def species_from_log(store, manifest=None):
    """label -> `LabelFacts` from the log's label facts, or first from `manifest` (the device's
    active bundle, which alone says how much audio taught each label)."""
    return species_lookup(manifest, store)


def active_manifest(home):
    """The manifest of the home's active bundle, or None (none installed, or unreadable: the
    view then names labels from the log and shows no "few training recordings" mark).

    The device may run another bundle (`explorer run --bundle`); the mark then follows the
    active one, which is the bundle a guide's device runs unless told otherwise.
    """
    from device.bundle.manifest import BundleError, read_manifest

    bundle_dir = home.active_bundle()
    if bundle_dir is None:
        return None
    try:
        return read_manifest(bundle_dir)
    except (BundleError, OSError, ValueError) as exc:
        log.warning("phone view: the active bundle's manifest is unreadable (%s); names come from the log", exc)
        return None


def main(argv: list[str] | None = None) -> int:
    from device.home import ExplorerHome
    from device.store import Store

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", required=True)
    parser.add_argument("--state", required=True, help="the device's state file (see device.tui.serve)")
    parser.add_argument("--review-token-file", help="sha256 of the review token; without it the view is read-only")
    args = parser.parse_args(argv)
    home = ExplorerHome.resolve(args.home)
    token_sha256 = None
    if args.review_token_file:
        token_sha256 = Path(args.review_token_file).read_text(encoding="utf-8").strip()
    store = Store.open(home.database)
    try:
        active = store.active_tour()
        app = ViewerApp(
            SnapshotFeed(Path(args.state), store), store, species_from_log(store, active_manifest(home)), active,
            can_review=token_sha256 is not None, can_play=False, review_token_sha256=token_sha256,
        )
        app.run()
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
