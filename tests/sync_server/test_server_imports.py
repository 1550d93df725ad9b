"""The server speaks the device's contracts (payload, domain) and never imports its runtime."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "sync_server"
CONTRACTS = {"device.sync.payload", "device.domain"}


def device_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "device")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "device":
            names.add(node.module)
    return names


def test_sync_server_imports_only_the_device_contracts():
    used = {str(path.relative_to(SERVER.parent)): sorted(device_imports(path) - CONTRACTS) for path in SERVER.rglob("*.py")}
    assert {k: v for k, v in used.items() if v} == {}
    assert any(device_imports(path) for path in SERVER.rglob("*.py"))  # it does use the payload contract
