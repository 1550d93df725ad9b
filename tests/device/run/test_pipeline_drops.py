"""When inference falls behind live audio, the oldest windows are dropped and every drop counted."""

from __future__ import annotations

from device.audio.files import FileSource
from device.config import Settings
from device.engine.loader import load_engine
from device.pipeline import Pipeline

LONG = "audio/birdclef_unlabeled/SampleAudio.ogg"  # 382 s


class Recorder(Pipeline):
    """The real pipeline, noting which windows reached inference (for the assertion only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inferred: list[int] = []
        predict = self.engine.predict

        def noting(window):
            self.inferred.append(window.index)
            return predict(window)

        self.engine.predict = noting


def run_pipeline(device_home, shared_data, live: bool) -> Recorder:
    engine = load_engine(device_home, None, threads=1)
    settings = Settings().with_overrides(audio={"queue_windows": 2})
    # Read as fast as the disk allows: to a live-policy pipeline this is a source far faster than inference.
    source = FileSource(shared_data / LONG, block_s=5.0)
    pipeline = Recorder(engine, source, settings, device_home.database, device_home.clips, live=live)
    pipeline.start()
    assert pipeline.wait(timeout=300)
    return pipeline


def test_a_live_source_faster_than_inference_drops_oldest_windows_and_counts_them(device_home, shared_data):
    pipeline = run_pipeline(device_home, shared_data, live=True)
    status = pipeline.status()
    assert status.windows_dropped > 0
    assert status.windows_captured == status.windows_inferred + status.windows_dropped
    assert len(pipeline.inferred) == status.windows_inferred
    assert pipeline.inferred == sorted(pipeline.inferred)
    assert pipeline.inferred[-1] == status.windows_captured - 1  # the newest window is never the one dropped
    assert status.rtf > 0 and status.error is None


def test_a_file_source_waits_instead_of_dropping(device_home, shared_data):
    pipeline = run_pipeline(device_home, shared_data, live=False)
    status = pipeline.status()
    assert status.windows_dropped == 0
    assert pipeline.inferred == list(range(status.windows_captured))
    assert abs(status.rtf - status.inference_s / status.audio_s) < 1e-9
