"""The layering docs/ARCHITECTURE.md states ("Who may import whom"), checked on the source.

The Pi installs only the device extra, so device/ must never import a trainer-side stack; and
within the repository every arrow points down: device/ is the bottom layer, its contracts sit
below its runtime, and the two top floors (the CLI and the screen) are reached by nothing below
them. Each check lists its offenders as {file: [imported names]}.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from tests.import_scan import REPO, imported_names, offenders, python_files, under, unused_allowances

HEAVY = ("torch", "torchvision", "timm", "mlflow", "librosa", "tensorflow", "onnx")
# `onnx` (the graph library) is the exporter's; the device needs only onnxruntime.

TOP_FLOORS = ("device.cli", "device.tui")

CLI_STARTS_THE_SCREEN = {
    ("device/cli/run_cmd.py", "device.tui.run"): (
        "`explorer run` on a terminal hands the run to the screen (device.tui.run.run_tui), "
        "imported inside the command only when the screen is wanted"
    ),
}


# (folder, names it must never import, the allowed edges) per arrow of "Who may import whom".
ARROWS = {
    "device imports no heavy stack": ("device", HEAVY, {}),
    # No exemption needed: device/cli/main.py names exporter.cli in a string, loaded only by `explorer export`.
    "device imports no other package": ("device", ("trainer", "exporter", "sync_server"), {}),
    "store imports neither sync nor a top floor": ("device/store", ("device.sync", *TOP_FLOORS), {}),
    "sync imports no top floor": ("device/sync", TOP_FLOORS, {}),
    "screen never imports the cli": ("device/tui", ("device.cli",), {}),
    "cli reaches the screen only to start it": ("device/cli", ("device.tui",), CLI_STARTS_THE_SCREEN),
    "exporter imports no device top floor": ("exporter", TOP_FLOORS, {}),
    "trainer imports no device top floor": ("trainer", TOP_FLOORS, {}),
    # One direction between the model packages: the trainer imports the exporter (BirdNET's
    # conversion, labels, the front end, the head artefact format), the exporter reads what the
    # trainer writes as files (exporter/head_artefacts.py) and never imports it.
    "exporter imports no trainer": ("exporter", ("trainer",), {}),
    # The trained torch heads reach it the same way: ONNX artefacts with torch's own outputs
    # (trainer/onnx_export.py), or `python -m trainer.cli onnx` in a process of its own.
    "exporter imports no training stack": ("exporter", ("torch", "torchvision", "timm", "mlflow", "ray"), {}),
}


@pytest.mark.parametrize("arrow", list(ARROWS))
def test_imports_point_down(arrow):
    folder, forbidden, allowed = ARROWS[arrow]
    found = offenders(folder, forbidden, allowed)
    assert found == {}, f"{arrow}; offenders: {found}"


def test_the_scan_sees_relative_and_lazy_imports(tmp_path):
    module = tmp_path / "device" / "store" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import json\nfrom .outbox import enqueue\n\n\ndef later():\n    from .. import sync\n    from ..tui.app import ExplorerApp\n"
    )
    assert imported_names(module, tmp_path) == {
        "json", "device.store.outbox.enqueue", "device.sync", "device.tui.app.ExplorerApp",
    }


def test_every_allowed_edge_is_still_used():
    assert unused_allowances(CLI_STARTS_THE_SCREEN) == []


def test_the_contracts_import_only_the_domain_and_the_standard_library():
    foreign = {}
    for path in python_files("device/contracts"):
        bad = sorted(
            name for name in imported_names(REPO / path)
            if not under(name, ("device.domain", "device.contracts"))
            and name.split(".")[0] not in sys.stdlib_module_names
        )
        if bad:
            foreign[str(path)] = bad
    assert foreign == {}, f"imports beyond the domain and the standard library: {foreign}"


@pytest.mark.parametrize("package", ["exporter", "trainer"])
def test_the_model_side_never_imports_the_device_top_floors(package):
    found = offenders(package, TOP_FLOORS)
    assert found == {}, f"imports against the layering: {found}"


def test_importing_every_device_module_loads_no_heavy_stack():
    modules = [".".join(path.with_suffix("").parts).removesuffix(".__init__") for path in python_files("device")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def run_light_command(args: list[str]) -> subprocess.CompletedProcess:
    """Run `explorer ARGS` as the console script does; report on stderr, after the command has
    exited, whether onnxruntime was ever imported."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('onnxruntime loaded:', 'onnxruntime' in sys.modules, file=sys.stderr))\n"
        "from device.cli.main import cli\n"
        f"cli({args!r}, prog_name='explorer')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_tour_list_runs_without_onnxruntime(tmp_path):
    result = run_light_command(["--home", str(tmp_path / "home"), "tour", "list"])
    assert result.returncode == 0, result.stderr
    assert "No tours yet" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "onnxruntime loaded: False", result.stderr


@pytest.mark.parametrize("command", [["bundle", "path"], ["bundle", "list"]])
def test_bundle_lookups_run_without_onnxruntime(command, device_home):
    result = run_light_command(["--home", str(device_home.root), *command])
    assert result.returncode == 0, result.stderr
    active = device_home.active_bundle()
    assert active is not None and active.name in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "onnxruntime loaded: False", result.stderr


def test_the_device_extra_installs_no_heavy_stack():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["device"]
    names = {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in requirements}
    assert not names & {"torch", "torchvision", "timm", "mlflow", "librosa", "tensorflow", "onnx", "tflite"}
