"""The domain objects that flow through the device pipeline.

One object per concept (see ARCHITECTURE.md): a `Window` of audio, the `Prediction`
the engine makes for it, and the `Detection` event that merges consecutive windows.
Database rows (device/store) and MQTT payloads (device/contracts/) are built from
these by explicit functions at the edges, never by serialising them wholesale.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


FAMILY_SUFFIX = "idae"
"""The zoological family ending (ICZN art. 29.2). The label space names three insect labels by
family (48124 Tettigoniidae, 52884 Gryllidae, 50186 Cicadidae): a screen, a page or an export
names those as families, never as if they were a species."""


def taxon_rank(scientific_name: str | None) -> str | None:
    """'species' for a binomial (or finer), 'family' for a one-word name ending in -idae,
    'genus' for another one-word name, None when there is no name."""
    words = (scientific_name or "").split()
    if not words:
        return None
    if len(words) >= 2:
        return "species"
    return "family" if words[0].lower().endswith(FAMILY_SUFFIX) else "genus"


def iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC text with millisecond precision and a trailing Z (the `_on` column format)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_utc(text: str) -> datetime:
    """Parse what `iso_utc` writes (and any ISO-8601 text with an offset) into aware UTC."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class Window:
    """A span of mono audio cut from a source, at the source's native sample rate."""

    samples: np.ndarray
    """float32 mono samples in [-1, 1]; zero-padded when the source ended early."""
    sample_rate_hz: int
    """The rate `samples` is at (the source's native rate, before per-branch resampling)."""
    start_s: float
    """Offset of the first sample from the start of the source, in seconds."""
    started_on: datetime
    """Wall-clock UTC time of the first sample."""
    source: str
    """What the audio came from: a file path, or `mic:<device name>`."""
    valid_samples: int = -1
    """How many samples are real audio (the rest is padding); -1 means all of them."""
    index: int = 0
    """Sequence number of the window within its source."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz

    @property
    def end_s(self) -> float:
        """Offset of the last real sample's end (zero padding is not audio heard)."""
        return self.start_s + self.real_samples / self.sample_rate_hz

    @property
    def ended_on(self) -> datetime:
        return self.started_on + timedelta(seconds=self.real_samples / self.sample_rate_hz)

    @property
    def real_samples(self) -> int:
        return len(self.samples) if self.valid_samples < 0 else self.valid_samples


@dataclass(frozen=True)
class Prediction:
    """The engine's output for one window: fused scores plus what each branch said."""

    window: Window
    labels: tuple[str, ...]
    """primary_label of each score, in bundle manifest order."""
    scores: np.ndarray
    """Fused probability per label, float32 in [0, 1]; NaN where the window could not be
    scored (see `unscored_branches`), never a made-up 0."""
    branch_scores: dict[str, np.ndarray]
    """Per-branch probabilities over the bundle's labels (NaN where a branch does not score a
    label); unscored branches are absent."""
    inference_s: float = 0.0
    """Wall time the engine spent on this window (all branches and fusion)."""
    mel: np.ndarray | None = None
    """The log-mel the first mel-producing branch saw ([bands, frames], dB), for display."""
    embedding: np.ndarray | None = None
    unscored_branches: tuple[str, ...] = ()
    """Branches left out of this window's fusion because they gave NaN/infinity or failed
    (and "fusion" when the fusion graph's own output was not finite). Empty: fully scored."""
    failed_branches: tuple[str, ...] = ()
    """The unscored branches whose run raised (the rest gave non-finite scores)."""
    context: dict[str, float] = field(default_factory=dict)
    """Context scores (the bundle's `outputs.context`: "Human vocal", "Engine", ...) -> probability,
    max over crops. Never labels: the privacy filter reads them and detections keep them. Empty
    when the bundle has none; a score that was not finite is absent, never 0."""


CLIP_WITHHELD_REASONS = ("privacy",)
"""Why a detection has no clip and never will (`Detection.clip_withheld`): 'privacy', a person was
heard talking in or next to it (device/detect/privacy.py)."""


@dataclass
class Detection:
    """One detection event: consecutive windows in which the same label was heard.

    Mutable while the event is open: `extend` merges each further window into it.
    """

    label: str
    started_on: datetime
    ended_on: datetime
    confidence: float
    """Peak fused score over the event's windows."""
    branch_scores: dict[str, float]
    """Each branch's score for `label` in the peak window (NaN when the branch does not score it)."""
    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    device_id: str
    tour_id: str | None = None
    source: str = ""
    start_s: float = 0.0
    """Offset of the event's start within its source, in seconds."""
    end_s: float = 0.0
    window_count: int = 1
    detection_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    secondary: bool = False
    """True when the label was over its threshold but was not the window's top label."""
    peak_start_s: float = 0.0
    """Offset of the peak window's start within the source (the clip is cut around it)."""
    site: str | None = None
    """Where the device was: `[device] site` (None: not configured, or a detection logged
    before the device recorded places)."""
    latitude: float | None = None
    longitude: float | None = None
    """`[device] latitude/longitude` in decimal degrees (WGS84), both or neither."""
    coordinate_uncertainty_m: float | None = None
    """How far (metres) the detection may be from those coordinates (`[device]
    coordinate_uncertainty_m`; None without coordinates)."""
    context_scores: dict[str, float] = field(default_factory=dict)
    """Each context score (`Prediction.context`: "Human vocal", "Engine", ...) at its highest over
    the windows merged into the event: what else was loud while the label was heard. Never a
    label. Empty when the bundle has none, and for detections logged before they were kept."""
    clip_withheld: str | None = None
    """Why the detection has no clip and never will (one of CLIP_WITHHELD_REASONS), or None. Set
    once a person was heard in or next to the event: the clip is never written and the server
    knows not to wait for one."""

    def extend(
        self, prediction: Prediction, score: float, branch_scores: dict[str, float], secondary: bool
    ) -> None:
        """Merge one more window in which this label was heard."""
        window = prediction.window
        self.ended_on = max(self.ended_on, window.ended_on)
        self.end_s = max(self.end_s, window.end_s)
        self.window_count += 1
        self.add_context(prediction.context)
        if score > self.confidence:
            self.confidence = score
            self.branch_scores = branch_scores
            self.peak_start_s = window.start_s
        # An event is secondary only if the label never topped a window.
        self.secondary = self.secondary and secondary

    def add_context(self, context: dict[str, float]) -> None:
        """Keep each context score's highest value (a window's `Prediction.context`)."""
        for name, value in context.items():
            self.context_scores[name] = max(float(value), self.context_scores.get(name, 0.0))


@dataclass(frozen=True)
class Refusal:
    """One message the server will never store, and why (resending it would not help)."""

    kind: str
    """What was refused: 'detection', 'feedback' or 'tour'."""
    record_id: str
    """The detection or feedback id the message carried."""
    reason: str


@dataclass(frozen=True)
class Receipt:
    """What the server tells one device it has committed: only now is a message delivered.

    The device marks each named message confirmed and stops resending it; one it sent and
    never saw in a receipt is sent again after a timeout (the server's upsert makes that safe).
    """

    device_id: str
    issued_on: datetime
    stored: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Kind ('detection', 'feedback', 'tour') -> the ids whose rows the server committed (for a
    tour, the id of the state committed: `device.contracts.tour.delivery_id`)."""
    refused: tuple[Refusal, ...] = ()

    @property
    def size(self) -> int:
        """How many ids the receipt carries in all."""
        return sum(len(ids) for ids in self.stored.values()) + len(self.refused)


@dataclass(frozen=True)
class Tour:
    """A guided walk on the trail, the unit a guide's species count is reported over (stored by
    device/store/tours.py, reported to the server by device/contracts/tour.py)."""

    tour_id: str
    name: str
    guide: str | None
    started_on: datetime
    ended_on: datetime | None
    """None while the tour is active."""
    device_id: str | None = None
    """The device it was walked with (None: started by a release that did not record it, or on a
    store opened without the device's settings; such a tour is reported once its device is known)."""
    site: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    """Where the device was when the tour started (`[device] site/latitude/longitude`)."""

    @property
    def active(self) -> bool:
        return self.ended_on is None

    def duration_s(self, now: datetime | None = None) -> float:
        """Time on the trail; an active tour counts up to `now`."""
        end = self.ended_on or now or utc_now()
        return max(0.0, (end - self.started_on).total_seconds())


VERDICTS = ("confirm", "reject")
MAX_NOTE_CHARS = 2_000
"""A note is a sentence or two typed on the trail; the cap stops a stuck key filling the log."""


@dataclass(frozen=True)
class Feedback:
    """A guide's verdict on a detection: it feeds retraining, and reaches the server."""

    feedback_id: str
    detection_id: str
    verdict: str
    """'confirm' or 'reject'; a guide who changes their mind adds a new verdict."""
    note: str | None
    created_on: datetime


@dataclass(frozen=True)
class Status:
    """A device's state as it reports it (retained on the broker; the server keeps the latest)."""

    device_id: str
    online: bool
    """False in the last will the broker publishes when the device vanishes, and in the
    message a device sends as it disconnects cleanly."""
    published_on: datetime
    release: str
    """The explorer release the device runs (which payload schemas it speaks)."""
    bundle_name: str | None = None
    bundle_version: str | None = None
    outbox_pending: int | None = None
    """Messages never acknowledged (or past their receipt timeout)."""
    outbox_unconfirmed: int | None = None
    """Messages the broker acknowledged that no receipt has confirmed yet."""
    rtf: float | None = None
    windows_dropped: int | None = None
    clip_disk_free_bytes: int | None = None
    battery_percent: int | None = None
    last_detection_on: datetime | None = None
    connected_on: datetime | None = None
    """When the connection this status belongs to began (its last will carries the same): the
    server orders a device's statuses by connection first, and within one connection an
    offline status (the will, or the goodbye) outranks every online one, whatever its
    `published_on` (a will's is its connect time: MQTT fixes the will when connecting)."""
