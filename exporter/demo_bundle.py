"""The demo bundle: the tiny head from exporter/artefacts/, signed with a local key, made active.

It runs on a fresh clone in a couple of seconds and needs no shared data: the head's
weights are committed (rebuilt by `python -m trainer.tiny_head`), the graph is assembled
from them and from the front-end parameters stored beside them, and the parity checks
run on the recordings in the repository's examples/ folder (falling back to the shared
data folder where examples/ lacks them).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

from device.audio.resample import resample
from device.bundle.manifest import BundleError
from device.bundle.verify import verify_bundle
from device.home import ExplorerHome
from exporter.bundle_writer import BranchCheck, ParityResult, write_bundle
from exporter.frontend import LogMelParams, log_mel_reference
from exporter.head_artefacts import POOLING, TinyHead, cut_windows, pool_features, sigmoid
from exporter.linear_head import build_linear_head_model
from exporter.manifest_builder import branch_entry, build_manifest
from exporter.signing import generate_keypair, load_private_key, public_bytes, trust_raw_key

REPO = Path(__file__).resolve().parents[1]
ARTEFACT = Path(__file__).resolve().parent / "artefacts" / "demo_head.npz"
NAME = "demo-tiny"
BASE_VERSION = "0.1.0"
BRANCH = "tiny"
ONNX_FILE = "demo_tiny.onnx"
DEV_KEY_NAME = "dev-local"
LICENSE = "CC BY-NC-SA 4.0"
ATTRIBUTION = (
    "Demo model derived from the recordings listed in the project's shared data recordings.csv: "
    "BirdCLEF 2025 train audio (xeno-canto recordings, recordist M.S. Hoogmoed; CC BY-NC-SA 4.0 / "
    "Kaggle BirdCLEF terms) and the El Silencio soundscape (BirdCLEF 2025); Colombian frog "
    "advertisement calls from colombianfrogs/sounds (Grupo Herpetologico de Antioquia, IAvH-CSA); "
    "Little Tinamou XC154190 via NatureSounds (xeno-canto); scikit-maad, seewave and other example "
    "recordings as negatives. Non-commercial, share-alike."
)
SCORES_TOLERANCE = 1e-5
"""ONNX vs the numpy model, in probability; measured ~1e-7 (float32 output rounding)."""
MEL_TOLERANCE_DB = 1e-3
"""ONNX log-mel vs numpy float64 rfft; measured ~4e-6 dB (see exporter/frontend.py)."""
CHECK_WINDOWS_PER_RECORDING = 2

# The example recordings, by their name in examples/ and their path in the shared data.
EXAMPLES = {
    "H02_20230420_074000.ogg": "audio/elsilencio_soundscape/H02_20230420_074000.ogg",
    "birdclef_train_1.ogg": "audio/birdclef_train_audio/1.ogg",
    "birdclef_train_2.ogg": "audio/birdclef_train_audio/2.ogg",
    "birdclef_train_3.ogg": "audio/birdclef_train_audio/3.ogg",
    "birdclef_train_4.ogg": "audio/birdclef_train_audio/4.ogg",
    "spinetail.wav": "audio/birds/spinetail.wav",
}


def example_recordings(examples_dir: Path = REPO / "examples", shared_data: Path = REPO.parent / "shared" / "data") -> list[Path]:
    """The example recordings, each from examples/ when present, else from the shared data.

    Raises:
        FileNotFoundError: none of them can be found in either place.
    """
    found = []
    for name, shared in EXAMPLES.items():
        for candidate in (Path(examples_dir) / name, Path(shared_data) / shared):
            if candidate.is_file():
                found.append(candidate)
                break
    if not found:
        raise FileNotFoundError(f"no example recordings in {examples_dir} or {shared_data}")
    return found


def _check_windows(recordings: list[Path], params: LogMelParams, window: int) -> tuple[np.ndarray, list[str]]:
    """The first few whole windows of each recording (only as much audio as that is decoded)."""
    windows, names = [], []
    for path in recordings:
        info = sf.info(path)
        seconds = CHECK_WINDOWS_PER_RECORDING * window / params.sample_rate_hz
        frames = min(info.frames, int(seconds * info.samplerate) + info.samplerate)
        audio, rate = sf.read(path, frames=frames, dtype="float32", always_2d=True)
        audio = resample(audio.mean(axis=1), rate, params.sample_rate_hz)
        cut = cut_windows(audio, window, window)[:CHECK_WINDOWS_PER_RECORDING]
        windows.extend(cut)
        names.append(path.name)
    return np.stack(windows), names


def head_check(head: TinyHead, recordings: list[Path]) -> BranchCheck:
    """Compare the branch ONNX with numpy (float64 rfft log-mel + TinyHead) on real windows."""
    params = LogMelParams.from_manifest(head.front_end)

    def run(onnx_path: Path) -> list[ParityResult]:
        windows, names = _check_windows(recordings, params, head.window_samples)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        scores, embedding, mel = session.run(["scores", "embedding", "mel"], {"waveform": windows})
        reference_mel = log_mel_reference(windows, params)
        reference_embedding = pool_features(reference_mel)
        reference_scores = sigmoid(head.logits(reference_embedding))
        common = dict(branch=BRANCH, windows=len(windows), recordings=tuple(names))
        return [
            ParityResult(output="mel", max_abs_diff=float(np.abs(mel - reference_mel).max()), tolerance=MEL_TOLERANCE_DB,
                         unit="dB", reference="numpy float64 rfft log-mel", **common),
            ParityResult(output="scores", max_abs_diff=float(np.abs(scores - reference_scores).max()),
                         tolerance=SCORES_TOLERANCE, unit="probability",
                         reference="numpy TinyHead on the numpy log-mel", **common),
            ParityResult(output="scores", max_abs_diff=float(np.abs(scores - head.scores(mel)).max()),
                         tolerance=SCORES_TOLERANCE, unit="probability",
                         reference="numpy TinyHead on the graph's own mel", **common),
            ParityResult(output="embedding", max_abs_diff=float(np.abs(embedding - reference_embedding).max()),
                         tolerance=MEL_TOLERANCE_DB, unit="dB", reference="numpy mean/max pooling", **common),
        ]

    return BranchCheck(BRANCH, run)


def activate_installed(home: ExplorerHome, target: Path) -> bool:
    """Make an already installed bundle active again if it still verifies; False if none is there.

    A bundle's version carries the hash of what it was built from, so an existing directory of
    that name is the same build: re-verifying it is enough, rebuilding would only cost time.

    Raises:
        BundleError: the directory is there but no longer verifies (tampered, or signed by a key
            this home no longer trusts).
    """
    if not target.exists():
        return False
    try:
        verify_bundle(target, home.trusted_keys)
    except BundleError as exc:
        raise BundleError(f"{target}: installed but no longer verifies ({exc}); remove it and rebuild") from None
    home.set_active_bundle(target)
    return True


def development_key(home: ExplorerHome) -> Path:
    """The home's local signing key (made on first use), its public key trusted by the home."""
    private = home.signing_keys / (DEV_KEY_NAME + ".key")
    if not private.is_file():
        private, _public = generate_keypair(home.signing_keys, DEV_KEY_NAME)
    trust_raw_key(public_bytes(load_private_key(private)), home.trusted_keys, DEV_KEY_NAME)
    return private


def _finite(value):
    """The metrics with NaN (a label without held-out negatives, say) as null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def demo_manifest(head: TinyHead, version: str, artefact_sha256: str) -> dict:
    label_ids = head.label_ids
    held_out = head.metrics.get("held_out", {})
    return build_manifest(
        name=NAME,
        version=version,
        labels=head.labels,
        branches=[
            branch_entry(
                name=BRANCH, file=ONNX_FILE, front_end=head.front_end, window_samples=head.window_samples,
                labels=label_ids, activation="none", embedding_dim=int(head.mean.shape[0]),
            )
        ],
        license=LICENSE,
        attribution=ATTRIBUTION,
        default_threshold=0.5,
        per_label_thresholds=dict(zip(label_ids, map(float, head.thresholds))),
        provenance={
            "training_run": "trainer.tiny_head: pooled log-mel + one-vs-rest logistic regression (numpy/scipy)",
            "data": head.training.get("data", ""),
            "artefact": {"file": "exporter/artefacts/demo_head.npz", "sha256": artefact_sha256},
            "metrics": {"held_out": _finite(held_out)},
            "rebuild": "python -m trainer.tiny_head --data ../shared/data --out exporter/artefacts/demo_head.npz",
        },
    )


def build_demo_bundle(home: ExplorerHome, artefact: Path = ARTEFACT, recordings: list[Path] | None = None) -> Path:
    """Build, sign, install and activate the demo bundle in `home`; returns its directory.

    Idempotent: the version carries the artefact's hash, so an unchanged head reuses the
    installed bundle (after verifying it) and a retrained one installs beside it.

    Raises:
        ParityError: the assembled graph disagrees with the numpy model (nothing installed).
        BundleError: an installed bundle of this version no longer verifies.
        SigningError: the home's signing keys would lie inside a git working tree.
    """
    home = home.ensure()
    artefact = Path(artefact)
    head = TinyHead.load(artefact)
    pooling = head.training.get("pooling", POOLING)
    if pooling != POOLING:
        raise ValueError(f"{artefact}: head pooled as {pooling!r}, this exporter builds {POOLING!r}")
    digest = hashlib.sha256(artefact.read_bytes()).hexdigest()
    version = f"{BASE_VERSION}+{digest[:8]}"
    target = home.bundles / f"{NAME}-{version}"
    private = development_key(home)
    if activate_installed(home, target):
        return target
    params = LogMelParams.from_manifest(head.front_end)
    model = build_linear_head_model(params, head.window_samples, head.mean, head.scale, head.weights, head.bias, pooling)
    write_bundle(
        target,
        demo_manifest(head, version, digest),
        {ONNX_FILE: model.SerializeToString()},
        private,
        [head_check(head, recordings or example_recordings())],
    )
    home.set_active_bundle(target)
    return target
