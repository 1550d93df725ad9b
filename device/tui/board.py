"""The tour board: the current tour's species as the main screen lists them.

Plain Python (no Textual), so it is tested on its own and rebuilt the same way from the
live channel and from the database. Detections arrive as events ('open', 'update',
'close') and fold into one row per species; a reload from the log (`reset`) gives the
same rows, which is how the screen catches up after its channel dropped events.

Times: "now" is the audio clock, the end of the newest window heard, when there is one.
On a live microphone that is the wall clock less a few seconds; on a recording it is the
recording's own time, so a replay marks what was calling *in the recording*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

from device.domain import Detection
from device.naming import TaxonName, taxon_name

if TYPE_CHECKING:
    from device.bundle.labels import TrainingSupport

CALLING_NOW_S = 60.0
"""A species heard this recently (or with an event still open) is marked as calling now."""
NEW_FOR_S = 120.0
"""A species whose first detection of the tour is this recent is highlighted as new: long
enough for a guide who was talking to the group to look down and still see it."""
RECENT_DETECTIONS = 50
"""Detections per species kept for the detail screen; the log keeps them all."""


@dataclass(frozen=True)
class Kind:
    """A species' class as a guide says it: a word and a symbol, so no colour is needed."""

    label: str
    symbol: str


KINDS = {
    "aves": Kind("bird", "▲"),
    "amphibia": Kind("frog", "◆"),
    "insecta": Kind("insect", "✱"),
    "mammalia": Kind("mammal", "●"),
}
OTHER_KIND = Kind("other", "■")


def kind_of(class_name: str | None) -> Kind:
    """'Aves' -> bird, 'Amphibia' -> frog, 'Insecta' -> insect, 'Mammalia' -> mammal, else other."""
    return KINDS.get((class_name or "").strip().lower(), OTHER_KIND)


@dataclass
class HeardDetection:
    """One detection as the board knows it."""

    detection: Detection
    status: str
    """'open' while the event grows, then 'closed'."""
    verdict: str | None = None
    """The guide's latest verdict: 'confirm', 'reject' or None."""

    @property
    def detection_id(self) -> str:
        return self.detection.detection_id


@dataclass
class SpeciesRow:
    """Everything the main screen shows about one species of the tour."""

    label: str
    common_name: str
    scientific_name: str
    class_name: str
    training: "TrainingSupport | None" = None
    """How much audio taught the bundle this label (`device.bundle.labels.TrainingSupport`);
    None when the manifest says nothing (or the label's facts came from the log)."""
    detections: list[HeardDetection] = field(default_factory=list)
    """Oldest first, at most RECENT_DETECTIONS (the counts below cover them all)."""
    heard: int = 0
    """Detection events of the tour not rejected by a guide (the summary's rule)."""
    rejected: int = 0
    best_confidence: float = 0.0
    first_heard_on: datetime | None = None
    last_heard_on: datetime | None = None
    _older: "_Older | None" = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> Kind:
        return kind_of(self.class_name)

    @property
    def name(self) -> TaxonName:
        """How the screen names the label: a family as a family ("a cicada", "family Cicadidae")."""
        return taxon_name(self.scientific_name, self.common_name, self.class_name, self.label)

    @property
    def few_training(self) -> int | None:
        """The label's training recordings when the manifest marks them few, else None."""
        return self.training.recordings if self.training is not None and self.training.few else None

    @property
    def latest(self) -> HeardDetection | None:
        return self.detections[-1] if self.detections else None

    def calling_now(self, now: datetime) -> bool:
        if any(d.status == "open" for d in self.detections[-3:]):
            return True
        return self.last_heard_on is not None and (now - self.last_heard_on).total_seconds() <= CALLING_NOW_S

    def is_new(self, now: datetime) -> bool:
        return self.first_heard_on is not None and (now - self.first_heard_on).total_seconds() <= NEW_FOR_S

    def confidence_history(self) -> list[float]:
        return [d.detection.confidence for d in self.detections]


class LabelFacts(NamedTuple):
    """What the screen knows of a label: its names and class, and its training support."""

    common_name: str
    scientific_name: str
    class_name: str
    training: "TrainingSupport | None" = None


SpeciesInfo = Callable[[str], "LabelFacts | tuple[str, str, str] | None"]
"""label -> `LabelFacts` (or a plain (common, scientific, class) tuple), None for an unknown label."""


class TourBoard:
    """The species of one tour, folded from detection events; newest first."""

    def __init__(self, species_info: SpeciesInfo, tour_id: str | None = None):
        self._info = species_info
        self.tour_id = tour_id
        self._rows: dict[str, SpeciesRow] = {}
        self._where: dict[str, tuple[str, int]] = {}  # detection_id -> (label, index)
        self.audio_now: datetime | None = None
        self.version = 0
        """Bumped on every change, so a screen redraws only when something moved."""

    # -- feeding ----------------------------------------------------------------------
    def reset(self, tour_id: str | None, records: Iterable = ()) -> None:
        """Start over for `tour_id` from the log's `DetectionRecord`s (oldest first)."""
        self.tour_id = tour_id
        self._rows.clear()
        self._where.clear()
        for record in records:
            self._fold(record.detection, record.status, record.verdict)
        self.version += 1

    def apply(self, detection: Detection, state: str) -> bool:
        """Fold one channel event ('open', 'update', 'close'); False when it is not this tour's."""
        if self.tour_id is None or detection.tour_id != self.tour_id:
            return False
        known = self._where.get(detection.detection_id)
        verdict = None
        if known is not None:
            label, index = known
            verdict = self._rows[label].detections[index].verdict
        self._fold(detection, "closed" if state == "close" else "open", verdict)
        self.version += 1
        return True

    def hear_audio(self, ended_on: datetime) -> None:
        """Move the audio clock to the end of the newest window analysed."""
        if self.audio_now is None or ended_on > self.audio_now:
            self.audio_now = ended_on
            self.version += 1  # '♪ now' and '★ NEW' are measured against this clock

    def set_verdict(self, detection_id: str, verdict: str) -> bool:
        known = self._where.get(detection_id)
        if known is None:
            return False
        label, index = known
        self._rows[label].detections[index].verdict = verdict
        self._recount(self._rows[label])
        self.version += 1
        return True

    # -- reading ----------------------------------------------------------------------
    def now(self, clock: Callable[[], datetime]) -> datetime:
        return self.audio_now or clock()

    def rows(self) -> list[SpeciesRow]:
        """Species newest first: the one heard most recently on top."""
        return sorted(self._rows.values(), key=lambda r: (r.last_heard_on or datetime.min, r.label), reverse=True)

    def row(self, label: str) -> SpeciesRow | None:
        return self._rows.get(label)

    def detection(self, detection_id: str) -> HeardDetection | None:
        known = self._where.get(detection_id)
        return self._rows[known[0]].detections[known[1]] if known else None

    @property
    def species_count(self) -> int:
        return sum(1 for r in self._rows.values() if r.heard)

    # -- folding ----------------------------------------------------------------------
    def _fold(self, detection: Detection, status: str, verdict: str | None) -> None:
        row = self._rows.get(detection.label)
        if row is None:
            facts = LabelFacts(*(self._info(detection.label) or ("", "", "")))
            row = self._rows[detection.label] = SpeciesRow(detection.label, facts.common_name, facts.scientific_name,
                                                           facts.class_name, facts.training)
        heard = HeardDetection(detection, status, verdict)
        known = self._where.get(detection.detection_id)
        if known is not None:
            row.detections[known[1]] = heard
        else:
            row.detections.append(heard)
            self._where[detection.detection_id] = (row.label, len(row.detections) - 1)
            if len(row.detections) > RECENT_DETECTIONS:
                # Memory stays flat over a long day: fold the oldest into a tally.
                gone = row.detections.pop(0)
                self._where.pop(gone.detection_id, None)
                row._older = (row._older or _Older()).add(gone)
                for i, d in enumerate(row.detections):
                    self._where[d.detection_id] = (row.label, i)
        self._recount(row)

    @staticmethod
    def _recount(row: SpeciesRow) -> None:
        older = row._older or _Older()
        kept = [d for d in row.detections if d.verdict != "reject"]
        row.heard = older.heard + len(kept)
        row.rejected = older.rejected + len(row.detections) - len(kept)
        pool = kept if row.heard else row.detections  # all rejected: still say when it was heard
        starts = [d.detection.started_on for d in pool] + ([older.first] if older.first else [])
        ends = [d.detection.ended_on for d in pool] + ([older.last] if older.last else [])
        row.best_confidence = max([d.detection.confidence for d in kept] + [older.best])
        row.first_heard_on = min(starts) if starts else None
        row.last_heard_on = max(ends) if ends else None


@dataclass
class _Older:
    """What the board remembers of a species' detections past RECENT_DETECTIONS."""

    heard: int = 0
    rejected: int = 0
    best: float = 0.0
    first: datetime | None = None
    last: datetime | None = None

    def add(self, gone: HeardDetection) -> "_Older":
        if gone.verdict == "reject":
            self.rejected += 1
            return self
        det = gone.detection
        self.heard += 1
        self.best = max(self.best, det.confidence)
        self.first = det.started_on if self.first is None else min(self.first, det.started_on)
        self.last = det.ended_on if self.last is None else max(self.last, det.ended_on)
        return self
