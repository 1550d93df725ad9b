"""The Pi installs only the device extra: device/ must never import a trainer-side stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

DEVICE = Path(__file__).resolve().parents[2] / "device"
HEAVY = ("torch", "torchvision", "timm", "mlflow", "librosa", "tensorflow", "onnx")
# `onnx` (the graph library) is the exporter's; the device needs only onnxruntime.


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_device_module_imports_a_heavy_stack():
    offenders = {
        str(path.relative_to(DEVICE.parent)): sorted(imported_modules(path) & set(HEAVY))
        for path in DEVICE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_device_never_imports_the_other_packages():
    upward = {
        str(path.relative_to(DEVICE.parent)): sorted(imported_modules(path) & {"trainer", "exporter", "sync_server"})
        for path in DEVICE.rglob("*.py")
        if path.name != "main.py"  # the CLI maps `export` to exporter.cli by name, imported only when invoked
    }
    assert {k: v for k, v in upward.items() if v} == {}


def test_importing_every_device_module_loads_no_heavy_stack():
    modules = sorted(
        ".".join(path.relative_to(DEVICE.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in DEVICE.rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [["tour", "list"], ["bundle", "path"]])
def test_light_commands_do_not_load_onnxruntime(command, tmp_path):
    code = (
        "import sys\n"
        "from device.cli.main import cli\n"
        f"try:\n    cli.main({['--home', str(tmp_path), *command]!r}, standalone_mode=False)\n"
        "except Exception:\n    pass\n"
        "print('onnxruntime' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_the_device_extra_installs_no_heavy_stack():
    import tomllib

    project = tomllib.loads((DEVICE.parent / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["device"]
    names = {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in requirements}
    assert not names & {"torch", "torchvision", "timm", "mlflow", "librosa", "tensorflow", "onnx", "tflite"}
