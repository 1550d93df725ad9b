"""The phone view: the guide's screen in a browser on the same network, through textual-serve.

textual-serve starts one process per browser tab, so the tab cannot hold the pipeline: the
device's own app publishes a small state file (status, level, spectrogram, tour) once a
second, and each tab runs `python -m device.tui.viewer`, which reads that file and the
log (SQLite in WAL mode lets it read while the device writes). The view is read-only by
default. With `--serve-review`, confirm/reject are enabled behind a token: a random one is
made at start and shown on the device; only its sha256 is written to disk (0600), and a
phone must type the token before its first verdict.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
import shlex
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0
"""The state file is rewritten at most this often: a phone needs no more, and the file
lives in RAM (/dev/shm) where there is one, so it costs the SD card nothing."""
IMAGE_WIDTH = 120
IMAGE_ROWS = 8
"""The spectrogram sent to the phone view: wider than a phone's terminal, ~1 KB."""
TOKEN_BYTES = 9
"""A 12-character token: short enough to type on a phone, 72 bits against guessing."""


def state_dir(home) -> Path:
    """Where the state file lives: RAM when the system has /dev/shm, else the data home."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        tag = hashlib.sha256(str(Path(home.root).resolve()).encode()).hexdigest()[:12]
        return shm / f"elsilencio-explorer-{os.getuid()}-{tag}"
    return Path(home.root) / "run"


class StatePublisher:
    """Writes what the phone view shows, atomically, at most once per PUBLISH_EVERY_S."""

    def __init__(self, path: Path, every_s: float = PUBLISH_EVERY_S):
        self.path = Path(path)
        self.every_s = every_s
        self._at = -1e9
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    @classmethod
    def for_home(cls, home) -> "StatePublisher":
        return cls(state_dir(home) / "state.json")

    def publish(self, app, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._at < self.every_s:
            return False
        self._at = now
        level = app.level
        state = {
            "written_on": time.time(),
            "tour_id": app.tour.tour_id if app.tour else None,
            "status": app.status.to_dict(),
            "level": None if level is None else level.__dict__,
            "spectrogram": {
                "rows": IMAGE_ROWS,
                "width": IMAGE_WIDTH,
                "data": base64.b64encode(app.melstrip.to_bytes(IMAGE_WIDTH, IMAGE_ROWS)).decode("ascii"),
            },
            "quitting": app.quitting,
        }
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(state), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk costs the phone view, never the device
            log.warning("phone view: could not write %s: %s", self.path, exc)
            return False
        return True

    def remove(self) -> None:
        for path in (self.path, self.path.with_suffix(".tmp")):
            path.unlink(missing_ok=True)


def write_token(directory: Path) -> tuple[str, Path]:
    """Make a review token; store only its sha256 (mode 0600). Returns (token, digest file)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    path = Path(directory) / "review-token.sha256"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(hashlib.sha256(token.encode("utf-8")).hexdigest())
    return token, path


def viewer_command(home, state_path: Path, token_file: Path | None) -> str:
    """The shell command textual-serve runs for each browser tab."""
    parts = [sys.executable, "-m", "device.tui.viewer", "--home", str(home.root), "--state", str(state_path)]
    if token_file is not None:
        parts += ["--review-token-file", str(token_file)]
    return shlex.join(parts)


VIEWER_EXIT_S = 5.0
"""How long a closed tab's viewer process may take to quit before it is killed."""


def reap_viewer_processes() -> None:
    """Make textual-serve wait for each tab's viewer process after telling it to quit.

    textual-serve's AppService.stop() sends "quit" but never awaits the process, so its pipes
    stay open until garbage collection, which may come after the loop has closed ("Event loop
    is closed" at exit), and a viewer that ignores "quit" would live on. Installed once, on
    textual-serve's own module, which only the phone view uses.
    """
    import textual_serve.server as serve_module
    from textual_serve.app_service import AppService

    if getattr(serve_module.AppService, "reaps_its_process", False):
        return

    class ReapingAppService(AppService):
        reaps_its_process = True

        async def stop(self) -> None:
            await AppService.stop(self)
            process = self._process
            if process is None:
                return
            try:
                await asyncio.wait_for(process.wait(), VIEWER_EXIT_S)
            except asyncio.TimeoutError:
                log.warning("phone view: viewer %s did not quit in %.0f s; killing it", process.pid, VIEWER_EXIT_S)
                process.kill()
                await process.wait()

    serve_module.AppService = ReapingAppService


class WebServer:
    """textual-serve's server on its own thread and event loop (the device's screen keeps the main one)."""

    def __init__(self, command: str, host: str, port: int, title: str = "El Silencio Acoustic Explorer"):
        from textual_serve.server import Server

        reap_viewer_processes()

        class PhoneServer(Server):
            # The page's websocket URL is built from how the phone reached us, so an
            # address bound as 0.0.0.0 still works from the phone (textual-serve would
            # otherwise send ws://0.0.0.0:port).
            async def handle_index(self, request):
                self.public_url = f"{request.scheme}://{request.host}"
                return await Server.handle_index(self, request)

        self.server = PhoneServer(command, host=host, port=port, title=title)
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="explorer-phone-view", daemon=True)

    def start(self, timeout: float = 10.0) -> "WebServer":
        self._thread.start()
        self._ready.wait(timeout)
        if self._error is not None:
            raise OSError(f"phone view: cannot serve on {self.host}:{self.port}: {self._error}")
        return self

    def _run(self) -> None:
        from aiohttp import web

        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def serve() -> None:
            self._stopped = asyncio.Event()
            runner = web.AppRunner(await self.server._make_app())
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, self.port).start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                await runner.cleanup()
                return
            self._ready.set()
            await self._stopped.wait()
            await runner.cleanup()

        try:
            loop.run_until_complete(serve())
            # Let the viewer processes' tasks end here, not in a closed loop later.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            self._ready.set()
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=10)


def start_server(home, state_path: Path, host: str, port: int, review: bool) -> tuple[WebServer, str | None]:
    """Serve the phone view; with `review`, make the token a phone must type. Returns (server, token)."""
    token = token_file = None
    if review:
        token, token_file = write_token(Path(state_path).parent)
    server = WebServer(viewer_command(home, Path(state_path), token_file), host, port).start()
    return server, token

