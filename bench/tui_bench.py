"""The guide's screen under a long day: four hours of real recordings, replayed through the TUI.

    python -m bench.tui_bench                 # 4 h of audio, the demo bundle, 100x30 screen
    python -m bench.tui_bench --hours 0.5     # a quick look
    python -m bench.tui_bench --model default # against the BirdNET-based default model

Real recordings from ../shared/data (frogs, a tinamou, the El Silencio soundscape) are
decoded once, brought to 32 kHz and played back to back, as one long source, as fast as
the pipeline takes them (a file's backpressure, not a microphone's pace). The real app runs
headless over the real pipeline and Store, polling its channel as it does on a terminal.

Printed every `--every` seconds: audio replayed, speed over real time, the process's RSS,
and CPU seconds of the UI thread (Textual's event loop: polling, folding, rendering) and of
the rest of the process (the pipeline's threads and onnxruntime's), with the engine's own
time beside them. Memory should stay flat after warm-up (every queue, the board's
detections per species and the spectrogram are bounded), and the UI's CPU should be a
small fraction of inference's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "audio"
RATE = 32000
BLOCK_S = 1.0
RECORDINGS = (
    "birdclef_train_audio/2.ogg",
    "colombian_frogs/Boana_boans.wav",
    "elsilencio_soundscape/H02_20230420_074000.ogg",
    "birds/Cryp.soui.wav",
    "colombian_frogs/Engystomops_pustulosus.wav",
    "birdclef_train_audio/4.ogg",
    "colombian_frogs/Rhinella_horribilis.wav",
    "colombian_frogs/Leucostethus_fraterdanieli.wav",
    "birdclef_train_audio/3.ogg",
)


def load_recordings() -> list[np.ndarray]:
    import soundfile as sf

    from device.audio.resample import resample

    out = []
    for relative in RECORDINGS:
        audio, rate = sf.read(SHARED / relative, dtype="float32", always_2d=True)
        out.append(resample(audio.mean(axis=1), rate, RATE))
    return out


class ReplaySource:
    """Real recordings back to back until `seconds` of audio, as one contiguous source."""

    def __init__(self, recordings: list[np.ndarray], seconds: float, start: datetime):
        self.name = "replay:shared-data"
        self.sample_rate_hz = RATE
        self._recordings = recordings
        self._total = int(seconds * RATE)
        self._start = start
        self._closed = threading.Event()

    def blocks(self):
        from device.audio.types import AudioBlock

        block = int(BLOCK_S * RATE)
        offset = 0
        index = 0
        while offset < self._total and not self._closed.is_set():
            audio = self._recordings[index % len(self._recordings)]
            index += 1
            for at in range(0, len(audio), block):
                if offset >= self._total or self._closed.is_set():
                    return
                part = audio[at : at + block][: self._total - offset]
                yield AudioBlock(part, RATE, offset, self._start + timedelta(seconds=offset / RATE))
                offset += len(part)

    def close(self) -> None:
        self._closed.set()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def thread_cpu_s(native_id: int) -> float:
    """User + system CPU seconds of one thread of this process (Linux /proc)."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scratch_home(model: str):
    from device.home import ExplorerHome

    home = ExplorerHome.resolve(tempfile.mkdtemp(prefix="explorer-tui-bench-")).ensure()
    if model == "default":
        from exporter.default_bundle import build_default_bundle

        build_default_bundle(home, progress=lambda *_: None)
    else:
        from exporter.demo_bundle import build_demo_bundle

        build_demo_bundle(home)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--size", default="100x30", help="terminal size the app renders at")
    parser.add_argument("--model", choices=("demo", "default"), default="demo",
                        help="the tiny demo bundle (UI against a very cheap model: the worst case for the UI's share) "
                             "or the default El Silencio bundle (BirdNET)")
    parser.add_argument("--live", type=float, default=0.0, metavar="SECONDS",
                        help="instead of the replay: a real frog recording paced as live audio for SECONDS "
                             "(the UI's cost at the pace of the trail, where the screen idles between windows)")
    args = parser.parse_args()
    from device.config import ClipSettings, Settings
    from device.engine.loader import load_engine
    from device.tui.run import TuiRuntime

    width, height = (int(v) for v in args.size.split("x"))
    home = scratch_home(args.model)
    engine = load_engine(home, None, 1)
    recordings = load_recordings()
    print(f"{len(recordings)} real recordings ({sum(len(r) for r in recordings) / RATE:.0f} s), replayed to "
          f"{args.hours:g} h; bundle {engine.manifest.name} {engine.manifest.version}; cores {os.cpu_count()}")
    # Clips off: this measures the screen against inference, not FLAC encoding on this disk.
    settings = Settings(clips=ClipSettings(enabled=False))
    if args.live:
        from device.audio.files import FileSource

        source = FileSource(REPO / "examples" / "birdclef_train_2.ogg", realtime=True)
    else:
        source = ReplaySource(recordings, args.hours * 3600, datetime(2024, 3, 12, 5, 30, tzinfo=timezone.utc))
    runtime = TuiRuntime(home, settings, engine, source, live=bool(args.live), tour_name="Four-hour bench")
    app = runtime.app()
    samples = []

    async def run() -> None:
        async with app.run_test(size=(width, height)) as pilot:
            ui_tid = threading.get_native_id()
            started = time.monotonic()
            ui0, all0 = thread_cpu_s(ui_tid), time.process_time()  # after start-up (imports, CSS)
            next_at = started + args.every
            print(f"\n{'wall s':>7} {'audio h':>8} {'speed':>7} {'RSS MB':>7} {'UI CPU s':>9} "
                  f"{'pipeline CPU s':>14} {'engine s':>9} {'UI/engine':>10}")
            while True:
                done = runtime.pipeline.wait(timeout=0)
                now = time.monotonic()
                if now >= next_at or done:
                    status = runtime.pipeline.status()
                    ui = thread_cpu_s(ui_tid) - ui0
                    pipeline_cpu = time.process_time() - all0 - ui
                    wall = now - started
                    row = (wall, status.audio_s / 3600, status.audio_s / wall, rss_mb(), ui, pipeline_cpu, status.inference_s)
                    samples.append(row)
                    print(f"{row[0]:7.0f} {row[1]:8.2f} {row[2]:6.0f}x {row[3]:7.1f} {row[4]:9.2f} {row[5]:14.2f} "
                          f"{row[6]:9.2f} {row[4] / max(1e-9, row[6]):9.1%}", flush=True)
                    next_at += args.every
                if done:
                    break
                if args.live and now - started >= args.live:
                    runtime.pipeline.stop()
                await pilot.pause(0.2)
            await pilot.pause(1.0)  # the last poll: everything on screen
            print(f"\non screen: {app.board.species_count} species, status: {app.status.windows_inferred} windows, "
                  f"{app.status.windows_dropped} dropped, {app.status.ui_events_dropped} UI events dropped")

    asyncio.run(run())
    status = runtime.close()
    warm = samples[max(1, len(samples) // 10)]
    last = samples[-1]
    print(f"\n{status.audio_s / 3600:.2f} h of audio in {last[0]:.0f} s ({status.audio_s / last[0]:.0f}x real time), "
          f"{status.windows_inferred} windows, {status.windows_dropped} dropped, {status.detections_closed} detections")
    print(f"RSS: {samples[0][3]:.1f} MB at start, {warm[3]:.1f} MB after warm-up ({warm[1]:.2f} h), "
          f"{last[3]:.1f} MB at the end; peak {max(s[3] for s in samples):.1f} MB")
    print(f"UI thread CPU {last[4]:.1f} s; pipeline threads (capture, inference, writer, onnxruntime) {last[5]:.1f} s; "
          f"engine time {last[6]:.1f} s: the UI costs {last[4] / last[6]:.1%} of inference "
          f"({last[4] / last[5]:.1%} of the pipeline's CPU); polling and folding {app.ui_cpu_s:.1f} s over "
          f"{app.poll_count} polls, the rest is Textual redrawing; the UI used {last[4] / last[0]:.1%} of one core")
    shutil.rmtree(home.root, ignore_errors=True)


if __name__ == "__main__":
    main()
