"""Privacy decisions per window: a person talking keeps no audio; a loud engine hears nothing.

The detector asks `PrivacyFilter.judge` about every window before it merges it (device/detect/
merge.py applies the verdict to the open events):

- **private**: the window's "Human vocal" context score is over `[privacy] human_vocal_threshold`
  (device/config.py says how 0.05 was chosen on real speech). A detection in or next to such a
  window (the window before it opened, any window while it is open, the one that closed it) gets
  `clip_withheld = "privacy"`: it is stored and synced, its clip is never written.
  Fail closed: a bundle that declares "Human vocal" but could not score it on a window (a failed
  branch, NaN) makes that window private too; it promised to tell and could not. A bundle with
  no "Human vocal" output cannot tell at all: nothing is withheld, and the detector logs so once.
- **loud** (only with `[privacy] suppress_while_loud`): one of `loud_classes` is over
  `loud_threshold`; the window is treated as hearing nothing, so no detection opens in it and
  open ones are not extended by it. A class the bundle lacks never suppresses (an option, not a
  guarantee: fail open).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from device.config import PrivacySettings
from device.domain import Prediction

log = logging.getLogger(__name__)

HUMAN_VOCAL = "Human vocal"
"""The context output the privacy filter reads (BirdNET V2.4's class of that name)."""


@dataclass(frozen=True)
class Verdict:
    """What the privacy filter says about one window."""

    private: bool = False
    """A person was heard (or could not be ruled out): no audio of it, or next to it, is kept."""
    loud: str | None = None
    """The loud class that suppresses detections in this window, or None."""


class PrivacyFilter:
    """Judges windows by their context scores (`Prediction.context`)."""

    def __init__(self, settings: PrivacySettings, context_labels: tuple[str, ...]):
        """
        Args:
            settings: the device's `[privacy]` section.
            context_labels: the context outputs the running engine declares
                (`Engine.context_labels`): what a window's scores could hold.
        """
        self.settings = settings
        self.hears_people = HUMAN_VOCAL in context_labels
        """Whether the bundle scores "Human vocal" at all (without it nothing can be withheld)."""
        self.loud_classes = tuple(name for name in settings.loud_classes if name in context_labels)
        if settings.enabled and not self.hears_people:
            log.warning("[privacy] is on, but the bundle has no %r output: clips are kept as heard "
                        "(a bundle with BirdNET's context outputs can withhold them)", HUMAN_VOCAL)

    def judge(self, prediction: Prediction) -> Verdict:
        settings, context = self.settings, prediction.context
        private = False
        if settings.enabled and self.hears_people:
            score = context.get(HUMAN_VOCAL)
            private = score is None or score > settings.human_vocal_threshold
        loud = None
        if settings.suppress_while_loud:
            loud = next((name for name in self.loud_classes if context.get(name, 0.0) > settings.loud_threshold), None)
        return Verdict(private=private, loud=loud)
