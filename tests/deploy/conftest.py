"""The sync tests' fixtures (a store with queued detections) for the deploy tests."""

from tests.device.sync.conftest import store  # noqa: F401  (a pytest fixture, used by name)
