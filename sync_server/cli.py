"""`explorer-server`: the cloud side's commands (ingest today; the API and exports come later)."""

from __future__ import annotations

import logging
import signal
import threading

import click


@click.group()
def cli() -> None:
    """El Silencio Acoustic Explorer, server side: gather what every device heard.

    Example:

        explorer-server ingest --db /var/lib/explorer/aggregate.db --host localhost --ca-file ca.crt
    """


def db_option(command):
    """`--db PATH|URL`: the aggregate database, SQLite (a path or sqlite:///path) or PostgreSQL."""
    return click.option(
        "--db", "db_target", required=True, metavar="PATH|URL",
        help="The aggregate database: a SQLite file (path or sqlite:///path) or postgresql://user@host:port/db.",
    )(command)


def open_store(db_target: str, must_exist: bool = False):
    """The ServerStore for `--db`, or a click error naming the database and why not."""
    from sync_server.db import ServerStore, ServerStoreError

    try:
        return ServerStore.open(db_target, must_exist=must_exist)
    except ServerStoreError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@db_option
@click.option("--host", default="localhost", show_default=True)
@click.option("--port", default=8883, show_default=True, type=int)
@click.option("--username", default="sync-server", show_default=True)
@click.option("--password", envvar="EXPLORER_INGEST_PASSWORD", default="", help="Or $EXPLORER_INGEST_PASSWORD.")
@click.option("--tls/--no-tls", default=True, show_default=True)
@click.option("--ca-file", default="", help="The CA that signed the broker's certificate (default: the system's).")
@click.option("--client-id", default="explorer-ingest", show_default=True,
              help="The persistent session's id: keep it stable, the broker queues for it while we are down.")
def ingest(db_target, host, port, username, password, tls, ca_file, client_id) -> None:
    """Take every device's detections from the broker into the aggregate database, until SIGTERM.

    Example:

        explorer-server ingest --db aggregate.db --host sync.example.org --ca-file /etc/explorer/ca.crt
    """
    from sync_server.ingest import BrokerSettings, Ingestor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = open_store(db_target)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    settings = BrokerSettings(host=host, port=port, username=username, password=password, tls=tls, ca_file=ca_file)
    try:
        runner = Ingestor(store, settings, client_id=client_id).start()
    except OSError as exc:
        store.close()
        raise click.ClickException(f"MQTT broker {host}:{port}: cannot connect: {exc.strerror or exc}") from None
    click.echo(f"ingesting from {host}:{port} into {store.label}", err=True)
    try:
        while not stop.wait(60):
            counts = store.counts()
            logging.info("ingest: %d detections from %d devices, %d refused", counts.detections, counts.devices,
                         counts.rejected)
    finally:
        runner.stop()
        stats = runner.stats
        store.close()
        click.echo(f"stopped: {stats.stored} stored, {stats.unchanged} resends, {stats.rejected} refused", err=True)


@cli.command()
@db_option
def status(db_target) -> None:
    """What the aggregate database holds, and the last refused messages with their reasons.

    Example:

        explorer-server status --db aggregate.db
        explorer-server status --db postgresql://explorer@db.example.org:5432/explorer
    """
    from sync_server.db import ServerStoreError

    store = open_store(db_target, must_exist=True)
    try:
        counts = store.counts()
        click.echo(f"{counts.detections} detections from {counts.devices} devices; {counts.rejected} messages refused")
        for refused in store.recent_rejections(5):
            click.echo(f"  refused {refused.received_on} on {refused.topic}: {refused.reason}")
    except ServerStoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


if __name__ == "__main__":
    cli()
