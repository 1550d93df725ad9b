"""What `explorer run` prints when it ends (headless or on the screen): the tour summary and the
pipeline's counters, then a non-zero exit when something could not be stored."""

from __future__ import annotations

import logging
from pathlib import Path

import click

log = logging.getLogger("explorer")


def report_run_end(home, tour_id: str | None, status) -> None:
    """Print the tour summary and the run's counters; raise ClickException if anything was lost.

    Raises:
        click.ClickException: the pipeline failed, or detections or clips could not be stored.
    """
    from device.store import Store, StoreError
    from device.store.summary import format_summary

    if tour_id:
        try:
            with Store.open(home.database) as store:
                click.echo(format_summary(store.tour_summary([tour_id])))
        except StoreError as exc:
            log.error("no tour summary: %s", exc)
    click.echo(
        f"{status.windows_inferred} windows, {status.audio_s:.0f} s of audio, RTF {status.rtf:.3f}, "
        f"{status.windows_dropped} dropped, {status.detections_closed} detections, {status.clips_written} clips"
    )
    if status.error:
        raise click.ClickException(status.error)
    if status.store_errors or status.clip_errors:
        raise click.ClickException(
            f"{status.store_errors} detection writes and {status.clip_errors} clips could not be stored "
            f"(disk full or failing? see {Path(home.logs) / 'explorer.log'}); everything stored before is intact"
        )
