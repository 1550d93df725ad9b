"""Real signed bundles that misbehave: the demo bundle re-signed with one change.

Each variant is a copy of a verified bundle whose manifest or graph was altered and which was
signed again by the same key, so it verifies on a home that trusts that key: what the engine
then does with it is exactly what it would do with a bundle shipped that way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable


def _rewire_scores(model_path: Path, scores_output: str, make_nodes) -> None:
    """Rename the node output `scores_output` to `<it>_clean` and append `make_nodes(clean)`,
    which must produce `scores_output` again."""
    import onnx

    model = onnx.load(model_path)
    for node in model.graph.node:
        node.output[:] = [f"{scores_output}_clean" if name == scores_output else name for name in node.output]
    model.graph.node.extend(make_nodes(f"{scores_output}_clean"))
    onnx.save(model, model_path)


def poison_scores(model_path: Path, scores_output: str) -> None:
    """Multiply the graph's `scores_output` by NaN: the graph loads and runs, every score is NaN."""
    import onnx
    from onnx import helper

    nan = helper.make_tensor("nan", onnx.TensorProto.FLOAT, [], [float("nan")])
    _rewire_scores(model_path, scores_output, lambda clean: [
        helper.make_node("Constant", [], ["nan_value"], value=nan),
        helper.make_node("Mul", [clean, "nan_value"], [scores_output]),
    ])


def break_scores(model_path: Path, scores_output: str) -> None:
    """Gather the scores through an out-of-range index: the graph loads (same shapes) but every
    run raises in onnxruntime, as a graph using a kernel this device mis-executes would."""
    import onnx
    from onnx import helper

    output = next(o for o in onnx.load(model_path).graph.output if o.name == scores_output)
    width = output.type.tensor_type.shape.dim[-1].dim_value
    index = helper.make_tensor("index", onnx.TensorProto.INT64, [width], [*range(width - 1), 99])
    _rewire_scores(model_path, scores_output, lambda clean: [
        helper.make_node("Constant", [], ["bad_index"], value=index),
        helper.make_node("Gather", [clean, "bad_index"], [scores_output], axis=1),
    ])


SPOILERS = {"nan": poison_scores, "fail": break_scores}


def _pin(folder: Path, branch: dict) -> None:
    branch["sha256"] = hashlib.sha256((folder / branch["file"]).read_bytes()).hexdigest()


def bundle_variant(source: Path, folder: Path, private_key: Path, version: str, *, nan_branch: int | None = None,
                   optional_branch: str | None = None, edit: Callable[[dict], None] | None = None) -> Path:
    """A copy of the bundle at `source` as `version`, re-signed with `private_key`.

    Args:
        nan_branch: Index of a branch whose scores become NaN (its sha256 is pinned again).
        optional_branch: Add an OPTIONAL copy of the first branch, "tiny_b" (the first stays the
            only required one), that is "ok", gives "nan" scores or "fail"s on every run.
        edit: Changes the decoded manifest in place (before signing).
    """
    shutil.copytree(source, folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["version"] = version
    if nan_branch is not None:
        branch = raw["branches"][nan_branch]
        poison_scores(folder / branch["file"], branch["outputs"]["scores"]["name"])
        _pin(folder, branch)
    if optional_branch is not None:
        first = raw["branches"][0]
        extra = json.loads(json.dumps(first))
        extra["name"], extra["file"] = "tiny_b", "tiny_b.onnx"
        extra["outputs"]["mel"] = None
        shutil.copy(folder / first["file"], folder / extra["file"])
        if optional_branch in SPOILERS:
            SPOILERS[optional_branch](folder / extra["file"], extra["outputs"]["scores"]["name"])
        _pin(folder, extra)
        raw["branches"].append(extra)
        raw["fusion"]["required_branches"] = [first["name"]]
    if edit is not None:
        edit(raw)
    (folder / "manifest.json").write_text(json.dumps(raw, indent=2))
    from exporter.signing import sign_manifest

    sign_manifest(folder, private_key)
    return folder


def home_variant(home, folder: Path, version: str, **changes) -> Path:
    """`bundle_variant` of `home`'s active bundle, signed with its dev key (which `home` trusts)."""
    return bundle_variant(home.active_bundle(), folder, home.signing_keys / "dev-local.key", version, **changes)
