"""`explorer sync`: send what the server has not confirmed now, or say where each message stands."""

from __future__ import annotations

import click

from device.cli.common import home_of, settings_of

REFUSALS_SHOWN = 10
WAIT_S = 10.0
"""How long a sync by hand waits for receipts by default: an ingest at work answers within a
second; longer means it is down or backlogged, and the messages stay unconfirmed (not lost)."""


@click.command()
@click.option("--host", help="Broker host (config: [sync] host).")
@click.option("--port", type=int, help="Broker port (config: [sync] port).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=WAIT_S, show_default=True,
              help="Seconds to wait for the server's receipts after sending.")
@click.option("--status", "status_only", is_flag=True,
              help="Only print pending, sent-unconfirmed, confirmed and refused counts; connect to nothing.")
def sync(host, port, wait_s, status_only) -> None:
    """Send every message the server has not confirmed, then wait for its receipts.

    A message is delivered when the server's receipt names it, not when the broker
    acknowledges it. This sends at once everything not yet confirmed or refused (even what
    the broker acknowledged within the receipt timeout), waits up to --wait seconds for the
    receipts, and prints how many were confirmed, are still unconfirmed (sent again later),
    stay pending (not acknowledged) or were refused for good. Then it sends the clips the
    server should have (judged or asked for) within `[sync] clip_budget_mb_per_day`, for up
    to --wait seconds more; an unfinished clip goes on next time. Works whether or not `[sync]
    enabled` is set: a device kept offline can be synced by hand back in coverage. Exits 1,
    naming the broker and the reason, when it cannot connect; nothing is lost.

    Example:

        explorer sync --host sync.example.org --port 8883 --wait 30
    """
    from device.config import ConfigError
    from device.store import Store
    from device.sync.by_hand import sync_by_hand
    from device.sync.publisher import SyncError, destination_of

    ctx = click.get_current_context()
    home = home_of(ctx)
    try:
        settings = settings_of(ctx).with_overrides(sync={"host": host, "port": port})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    destination = destination_of(settings.sync)
    timeout_s = settings.sync.receipt_timeout_s
    store = Store.open(home.database)
    try:
        if status_only:
            print_status(store, destination, timeout_s, settings.sync)
            return
        try:
            report = sync_by_hand(store, settings.sync, settings.device.id, wait_s)
        except SyncError as exc:
            counts = store.outbox_open_counts(destination, timeout_s)
            raise click.ClickException(f"{exc}; {counts.not_confirmed} message(s) the server has not confirmed "
                                       f"stay in the outbox ({counts.pending} pending)") from None
        drain = report.drain
        click.echo(f"sent {drain.ok} of {drain.attempted} to {destination}; {drain.failed} failed")
        click.echo(f"{report.confirmed} confirmed, {report.unconfirmed} still unconfirmed, {report.pending} pending, "
                   f"{report.refused} refused (waited {report.waited_s:.1f} s for receipts)")
        if report.unconfirmed:
            click.echo(f"the server has not confirmed {report.unconfirmed} yet: they are sent again after "
                       f"{timeout_s:.0f} s without a receipt, or by the next `explorer sync`")
        if report.clip_chunks or report.clips_complete:
            click.echo(f"clips: {report.clip_chunks} chunk(s) sent ({size_text(report.clip_bytes)}), "
                       f"{report.clips_complete} now complete on the server")
        click.echo(clips_line(store, settings.sync))
    finally:
        store.close()
    if drain.error:
        raise click.ClickException(f"stopped early: {drain.error}")


def print_status(store, destination: str, timeout_s: float, sync_settings) -> None:
    """Each state on its own line (see device/store/outbox.py), then the newest refusals, then
    where the clips stand."""
    counts = store.outbox_counts(destination, timeout_s)
    click.echo(f"{counts.pending} pending for {destination} (never acknowledged, or no receipt within {timeout_s:.0f} s)")
    click.echo(f"{counts.unconfirmed} sent-unconfirmed (acknowledged by the broker, waiting for the server's receipt)")
    click.echo(f"{counts.confirmed} confirmed by the server")
    click.echo(f"{counts.refused} refused by the server")
    for kind, record_id, _, reason in store.refusals(REFUSALS_SHOWN):
        click.echo(f"  refused {kind} {record_id}: {reason}")
    click.echo(clips_line(store, sync_settings))


def clips_line(store, sync_settings) -> str:
    """Where the clips a guide judged or the server asked for stand, and today's budget."""
    from device.domain import utc_now

    counts = store.clip_upload_counts(utc_now())
    line = f"clips: {counts.to_send} to send ({size_text(counts.to_send_bytes)}), {counts.complete} complete"
    for count, what in ((counts.refused, "refused twice, given up"), (counts.gone, "gone (file deleted)")):
        if count:
            line += f", {count} {what}"
    budget = sync_settings.clip_budget_mb_per_day
    if budget <= 0:
        return line + "; clip upload off ([sync] clip_budget_mb_per_day = 0)"
    return line + f"; budget {budget:g} MB/day, {size_text(counts.sent_today_bytes)} used today (UTC)"


def size_text(size: int) -> str:
    """Bytes as a person reads them: 140 KB, 1.2 MB (decimal units, as the budget's MB)."""
    if size < 1_000_000:
        return f"{size / 1000:.0f} KB"
    return f"{size / 1_000_000:.1f} MB"
