"""The sync tests' fixtures (a real broker, a device store with queued detections) for the server's."""

from tests.device.sync.conftest import broker, store  # noqa: F401  (pytest fixtures, used by name)
