"""The phone view: the device publishes its state, a viewer tab reads it and the log.

Read-only unless served with review enabled, and then only after the phone typed the
token; the web page is served by textual-serve with a websocket address the phone can reach.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from pathlib import Path

from device.store import Store
from device.tui.serve import StatePublisher, WebServer, viewer_command, write_token
from device.tui.viewer import SnapshotFeed, ViewerApp, species_from_log
from tests.device.tui.tui_helpers import drive, settle
from tests.helpers import query


def published_run(runtime_factory, trail_recording, tmp_path):
    """The device's app after the trail, with its state file written."""
    runtime = runtime_factory(trail_recording)
    publisher = StatePublisher(tmp_path / "view" / "state.json")
    app = runtime.app(publisher=publisher)

    async def scenario(pilot):
        assert runtime.pipeline.wait(60)
        await settle(pilot, app)
        publisher.publish(app, force=True)

    drive(app, scenario)
    return runtime, app, publisher


def test_a_read_only_view_shows_the_tour_and_refuses_to_change_it(runtime_factory, trail_recording, device_home, tmp_path):
    runtime, device_app, publisher = published_run(runtime_factory, trail_recording, tmp_path)
    store = Store.open(device_home.database)
    viewer = ViewerApp(SnapshotFeed(publisher.path, store), store, species_from_log(store), None, can_review=False, can_play=False)
    seen = {}

    async def scenario(pilot):
        await settle(pilot, viewer)
        seen["tour"] = viewer.tour.tour_id if viewer.tour else None
        seen["species"] = {row.label for row in viewer.board.rows()}
        seen["status"] = viewer.status
        seen["image"] = viewer.melstrip_image(40, 6)
        await pilot.press("c", "r", "t")

    drive(viewer, scenario)
    store.close()
    assert seen["tour"] == runtime.tour.tour_id
    assert seen["species"] == {row.label for row in device_app.board.rows()}
    assert seen["status"].windows_inferred == 29 and seen["status"].bundle.startswith("demo-tiny")
    assert seen["image"].shape == (6, 40) and seen["image"].max() > 0.5
    assert query(device_home.database, "SELECT count(*) FROM feedback")[0][0] == 0
    assert query(device_home.database, "SELECT count(*) FROM tour")[0][0] == 1


def test_reviewing_from_a_phone_needs_the_token(runtime_factory, trail_recording, device_home, tmp_path):
    runtime, device_app, publisher = published_run(runtime_factory, trail_recording, tmp_path)
    token, token_file = write_token(publisher.path.parent)
    assert token_file.stat().st_mode & 0o777 == 0o600 and token not in token_file.read_text()
    store = Store.open(device_home.database)
    viewer = ViewerApp(SnapshotFeed(publisher.path, store), store, species_from_log(store), None,
                       can_review=True, can_play=False, review_token_sha256=token_file.read_text().strip())
    seen = {}

    async def scenario(pilot):
        await settle(pilot, viewer)
        seen["target"] = viewer.board.rows()[0].latest.detection_id
        await pilot.press("c")
        await pilot.press(*"wrong-token", "enter")
        seen["after_wrong"] = query(device_home.database, "SELECT count(*) FROM feedback")[0][0]
        await pilot.press("c")
        await pilot.press(*token, "enter")
        await pilot.pause()

    drive(viewer, scenario)
    store.close()
    assert seen["after_wrong"] == 0
    assert query(device_home.database, "SELECT detection_id, verdict FROM feedback") == [(seen["target"], "confirm")]
    assert hashlib.sha256(token.encode()).hexdigest() == token_file.read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_and_the_viewer_process_are_served(runtime_factory, trail_recording, device_home, tmp_path):
    from aiohttp import ClientSession, WSMsgType

    runtime, device_app, publisher = published_run(runtime_factory, trail_recording, tmp_path)
    port = free_port()
    server = WebServer(viewer_command(device_home, publisher.path, None), "127.0.0.1", port).start()

    async def visit():
        async with ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as page:
                html = await page.text()
            received = b""
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws?width=80&height=24") as ws:
                while b"Morning walk" not in received:
                    message = await asyncio.wait_for(ws.receive(), timeout=30)
                    if message.type == WSMsgType.BINARY:
                        received += message.data
                    elif message.type == WSMsgType.TEXT:
                        received += message.data.encode()
                    else:
                        break
        return html, received

    try:
        html, received = asyncio.run(visit())
    finally:
        server.stop()
    assert f"ws://127.0.0.1:{port}/ws" in html  # built from the address the phone used
    assert b"Morning walk" in received  # the viewer tab drew the device's tour
    assert viewer_processes(publisher.path) == []  # the closed tab's viewer was waited for


def viewer_processes(state_path) -> list[int]:
    """Pids of running viewer processes reading `state_path`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"device.tui.viewer" in cmdline and str(state_path).encode() in cmdline:
            found.append(int(entry.name))
    return found
