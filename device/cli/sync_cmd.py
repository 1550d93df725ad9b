"""`explorer sync`: send the outbox to the broker now, or say how much is waiting."""

from __future__ import annotations

import click

from device.cli.common import home_of, settings_of


@click.command()
@click.option("--host", help="Broker host (config: [sync] host).")
@click.option("--port", type=int, help="Broker port (config: [sync] port).")
@click.option("--status", "status_only", is_flag=True, help="Only print what is pending; connect to nothing.")
def sync(host, port, status_only) -> None:
    """Deliver pending detections to the MQTT broker (QoS 1; sent means acknowledged).

    Works whether or not `[sync] enabled` is set: a device kept offline can be synced by hand
    when it is back in coverage. Exits 1, naming the broker and the reason, when it cannot
    connect; nothing pending is lost.

    Example:

        explorer sync --host sync.example.org --port 8883
    """
    from device.config import ConfigError
    from device.store import Store
    from device.sync.publisher import SyncError, destination_of, drain_once

    ctx = click.get_current_context()
    home = home_of(ctx)
    try:
        settings = settings_of(ctx).with_overrides(sync={"host": host, "port": port})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    destination = destination_of(settings.sync)
    store = Store.open(home.database)
    try:
        if status_only:
            click.echo(f"{store.pending_count(destination)} pending for {destination}")
            return
        try:
            report = drain_once(store, settings.sync, settings.device.id)
        except SyncError as exc:
            raise click.ClickException(f"{exc}; {store.pending_count(destination)} detection message(s) stay pending") from None
    finally:
        store.close()
    click.echo(f"sent {report.ok} of {report.attempted} to {destination}; {report.failed} failed, "
               f"{report.pending_after} pending")
    if report.error:
        raise click.ClickException(f"stopped early: {report.error}")
