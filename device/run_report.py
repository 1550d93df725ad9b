"""What a run of the device says when it ends, as data: the tour summary, the pipeline's
counters, and the problem (if any) that makes the run a failure.

Below both top floors: the headless CLI and the guide's screen build a `RunReport` here and
print it themselves (`explorer run` turns `problem` into exit status 1); neither imports the
other, and nothing here knows how it is shown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunReport:
    """The closing lines of one run."""

    summary: str | None
    """The tour summary as text (`format_summary`), or None when there was no tour or it
    could not be read."""
    counters: str
    """One line: windows, audio seconds, RTF, drops, detections, clips (and those withheld
    because a person was heard), and any window the engine could not score or the privacy
    filter suppressed."""
    problem: str | None
    """Why the run failed or lost something (None: a clean run). A failed pipeline thread,
    detections or clips the disk refused."""

    def lines(self) -> list[str]:
        """What to print on stdout, in order."""
        return [text for text in (self.summary, self.counters) if text]


def counters_line(status) -> str:
    """The pipeline's counters as one line a person can read (windows the bundle could not
    score, or the loud-sound option suppressed, are named only when there are any)."""
    line = (
        f"{status.windows_inferred} windows, {status.audio_s:.0f} s of audio, RTF {status.rtf:.3f}, "
        f"{status.windows_dropped} dropped, {status.detections_closed} detections, {status.clips_written} clips, "
        f"{status.clips_withheld} withheld for privacy"
    )
    if status.windows_suppressed:
        line += f", {status.windows_suppressed} windows suppressed while loud (engine, siren, gun or fireworks)"
    if status.windows_unscored or status.branch_failures:
        line += (f", {status.windows_unscored} windows not scored (NaN/infinity or a failed branch; "
                 f"{status.branch_failures} branch failures)")
    return line


def run_problem(home, status) -> str | None:
    """Why the run counts as failed, or None."""
    if status.error:
        return status.error
    if status.store_errors or status.clip_errors:
        return (
            f"{status.store_errors} detection writes and {status.clip_errors} clips could not be stored "
            f"(disk full or failing? see {Path(home.logs) / 'explorer.log'}); everything stored before is intact"
        )
    return None


def build_run_report(home, tour_id: str | None, status) -> RunReport:
    """The report of a run that logged into `tour_id` and ended with pipeline `status`."""
    from device.store import Store, StoreError
    from device.store.summary import format_summary

    summary = None
    if tour_id:
        try:
            with Store.open(home.database) as store:
                summary = format_summary(store.tour_summary([tour_id]))
        except StoreError as exc:  # a failing card costs the summary, not the report
            log.error("no tour summary: %s", exc)
    return RunReport(summary=summary, counters=counters_line(status), problem=run_problem(home, status))
