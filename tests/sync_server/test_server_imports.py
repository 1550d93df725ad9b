"""The server speaks the device's contracts and runs its engine, never its runtime or top floors."""

from __future__ import annotations

from tests.import_scan import REPO, imported_names, python_files, under

CONTRACTS = {"device.contracts", "device.domain", "device.bundle", "device.engine", "device.analysis", "device.audio",
             "device.home", "device.detect.decide", "device.naming"}
"""What sync_server/ may import from device/ (docs/ARCHITECTURE.md, "Who may import whom"): the
wire payloads, the domain objects, the bundle format, and for /analyze the same data-home
layout, decoding, windows, engine, thresholds and submission writer the Pi runs; and how a label
is named to a person (device.naming), so a family reads the same on the Pi and in the exports."""


def device_imports(path) -> set[str]:
    return {name for name in imported_names(REPO / path) if under(name, ["device"])}


def test_sync_server_imports_only_the_device_contracts():
    used = {str(path): sorted(name for name in device_imports(path) if not under(name, CONTRACTS))
            for path in python_files("sync_server")}
    found = {k: v for k, v in used.items() if v}
    assert found == {}, f"sync_server imports device/ beyond {sorted(CONTRACTS)}: {found}"
    assert any(device_imports(path) for path in python_files("sync_server"))  # it does use the payload contract
