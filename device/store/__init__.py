"""The device's local log: tours, detections, clips, feedback and the outbox, in one SQLite file.

Use `Store.open(home.database)` (with `device=settings.device` where tours are started or
stopped, so they are reported as this device); one Store per thread (see device.store.store).
"""

from device.store.bundles import LabelCatalog, LabelInfo
from device.store.clips import Clip, ClipBudgetResult
from device.store.database import NotFoundError, StoreError, TourActiveError
from device.store.detections import DetectionRecord, detection_to_row, row_to_detection
from device.store.feedback import Feedback
from device.store.outbox import OutboxMessage
from device.store.store import Store
from device.store.summary import SpeciesTally, TourStats, TourSummary
from device.store.tours import Tour
from device.store.watched import WatchedFile

__all__ = [
    "Clip",
    "ClipBudgetResult",
    "DetectionRecord",
    "Feedback",
    "LabelCatalog",
    "LabelInfo",
    "NotFoundError",
    "OutboxMessage",
    "SpeciesTally",
    "Store",
    "StoreError",
    "Tour",
    "TourActiveError",
    "TourStats",
    "TourSummary",
    "WatchedFile",
    "detection_to_row",
    "row_to_detection",
]
