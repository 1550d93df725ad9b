"""`explorer-server`: the cloud side's commands: ingest, status, the API (`run`), its tokens, exports."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time

import click

LAZY = {"export": "sync_server.export.cli:export"}
"""name -> "module:attribute" of a command imported only when invoked (exports load pyarrow)."""
DEFAULT_DB = "aggregate.db"
"""`run`'s database when none is given: a SQLite file in the current folder (a laptop's server)."""


class LazyGroup(click.Group):
    """A click group whose LAZY subcommands are imported on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY and name not in self.commands:
            module_name, attribute = LAZY[name].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup)
def cli() -> None:
    """El Silencio Acoustic Explorer, server side: gather what every device heard.

    Example:

    \b
        explorer-server run --db aggregate.db
        explorer-server token create --name alice --db aggregate.db
        explorer-server ingest --db /var/lib/explorer/aggregate.db --host localhost --ca-file ca.crt
    """


REPORT_EVERY_S = 60.0
"""How often a running ingest logs what the database holds."""


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
@click.option("--share-group", default=None, metavar="NAME",
              help="Run as one of several workers sharing the load ($share/NAME/...): each with its own --client-id.")
@click.option("--retry-max-s", default=30.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Longest wait between tries of a failing database (messages stay unacknowledged meanwhile).")
@click.option("--clips-dir", type=click.Path(file_okay=False), default=None,
              help="Where whole clips are kept (every worker the same folder). Default: clips/ beside a SQLite "
                   "database; with PostgreSQL, none unless given (clips are then refused).")
@click.option("--request-clips-below", type=click.FloatRange(0, 1), default=None, metavar="CONFIDENCE",
              help="Ask each device for the clips of its detections under this confidence (default: ask for none).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics (Prometheus) and /health on this port (0: any free one; default: off).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Where /metrics listens.")
def ingest(db_target, host, port, username, password, tls, ca_file, client_id, share_group, retry_max_s,
           clips_dir, request_clips_below, metrics_port, metrics_host) -> None:
    """Take every device's detections, verdicts and statuses from the broker into the aggregate
    database, and send each device a receipt for what was committed; until SIGTERM.

    A database error or a lost broker is retried with back-off (nothing is acknowledged until
    it is committed); a refused login or a TLS failure exits 1 naming the cause.

    Example:

        explorer-server ingest --db aggregate.db --host sync.example.org --ca-file /etc/explorer/ca.crt
    """
    from sync_server.db import ServerStoreError
    from sync_server.ingest import BrokerSettings, IngestError, Ingestor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = open_store(db_target)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    settings = BrokerSettings(host=host, port=port, username=username, password=password, tls=tls, ca_file=ca_file,
                              client_id=client_id, share_group=share_group)
    try:
        if clips_dir is None and store.dialect == "sqlite":
            clips_dir = store.sqlite_path.parent / "clips"
        runner = Ingestor(store, settings, retry_first_s=min(0.5, retry_max_s), retry_max_s=retry_max_s,
                          clips_dir=clips_dir, clip_requests_below=request_clips_below).start()
    except IngestError as exc:
        store.close()
        raise click.ClickException(str(exc)) from None
    web = None
    if metrics_port is not None:
        from sync_server.metrics import MetricsServer

        runner.metrics.watch_database(store)
        try:
            web = MetricsServer(runner.metrics, runner.health, metrics_host, metrics_port).start()
        except OSError as exc:
            runner.stop()
            store.close()
            raise click.ClickException(f"cannot serve /metrics on {metrics_host}:{metrics_port}: {exc.strerror}") from None
        click.echo(f"metrics at http://{metrics_host}:{web.port}/metrics, health at /health", err=True)
    click.echo(f"ingesting from {host}:{port} into {store.label} as {client_id}"
               + (f" (shared group {share_group})" if share_group else ""), err=True)
    fatal = None
    try:
        next_report = time.monotonic() + REPORT_EVERY_S
        while not stop.wait(0.5):
            fatal = runner.wait(0)
            if fatal:
                break
            if time.monotonic() >= next_report:
                next_report += REPORT_EVERY_S
                try:
                    counts = store.counts()
                except ServerStoreError as exc:  # the committer retries; this line only reports
                    logging.warning("ingest: %s", exc)
                    continue
                logging.info("ingest: %d detections from %d devices, %d refused", counts.detections,
                             counts.devices, counts.rejected)
    finally:
        if web is not None:
            web.stop()
        runner.stop()
        stats = runner.stats
        store.close()
        click.echo(f"stopped: {stats.stored} stored, {stats.unchanged} resends, {stats.rejected_total} refused, "
                   f"{stats.receipts_sent} receipts sent", err=True)
    if fatal:
        raise click.ClickException(fatal)


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
        newest, statuses = store.newest_detection_by_device(), store.statuses()
        for device_id in sorted(set(newest) | set(statuses)):
            click.echo("  " + device_line(device_id, newest.get(device_id), statuses.get(device_id)))
        for refused in store.recent_rejections(5):
            click.echo(f"  refused {refused.received_on} on {refused.topic}: {refused.reason}")
    except ServerStoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


def device_line(device_id: str, newest, status) -> str:
    """One device as `status` lists it: online or not, lag, outbox, bundle."""
    from device.domain import utc_now

    words = [f"device {device_id}:"]
    if status is not None:
        report, received = status
        words.append(f"{'online' if report.online else 'offline'} (status of {received:%Y-%m-%d %H:%M:%S} UTC)")
        if report.outbox_pending is not None:
            words.append(f"outbox {report.outbox_pending} pending, {report.outbox_unconfirmed} unconfirmed")
        if report.bundle_name:
            words.append(f"bundle {report.bundle_name} {report.bundle_version}")
    else:
        words.append("no status yet")
    if newest is not None:
        words.append(f"lag {(utc_now() - newest).total_seconds():.0f} s (newest detection {newest:%Y-%m-%d %H:%M:%S} UTC)")
    return ", ".join(words[:1]) + " " + ", ".join(words[1:])


@cli.group()
def token() -> None:
    """Read-only API tokens: create (shown once), list, revoke.

    Example:

        explorer-server token create --name alice --db aggregate.db
    """


@token.command("create")
@click.option("--name", required=True, help="Who or what holds it (unique; logs and `token list` show it).")
@db_option
def token_create(name, db_target) -> None:
    """Make a token and print it (once: only its hash is stored; a lost one is revoked and replaced)."""
    from sync_server.db import ServerStoreError
    from sync_server.db.tokens import TokenError, create_token

    store = open_store(db_target)
    try:
        made, secret = create_token(store, name)
    except (TokenError, ServerStoreError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(secret)
    click.echo(f"token {made.name!r} created; keep it now: it is not shown again", err=True)


@token.command("list")
@db_option
def token_list(db_target) -> None:
    """Every token: name, created, last used, revoked (never the token itself)."""
    from sync_server.db import ServerStoreError
    from sync_server.db.tokens import list_tokens

    store = open_store(db_target, must_exist=True)
    try:
        tokens = list_tokens(store)
    except ServerStoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    if not tokens:
        click.echo("no tokens (explorer-server token create --name NAME)")
    for made in tokens:
        state = f"revoked {made.revoked_on}" if made.revoked_on else "active"
        click.echo(f"{made.name}: {state}, created {made.created_on}, last used {made.last_used_on or 'never'}")


@token.command("revoke")
@click.argument("name")
@db_option
def token_revoke(name, db_target) -> None:
    """Revoke the token NAME: from its next request on it gets 401."""
    from sync_server.db import ServerStoreError
    from sync_server.db.tokens import TokenError, revoke_token

    store = open_store(db_target, must_exist=True)
    try:
        revoked = revoke_token(store, name)
    except (TokenError, ServerStoreError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"token {revoked.name!r} revoked on {revoked.revoked_on}", err=True)


@cli.command()
@click.option("--db", "db_target", default=DEFAULT_DB, show_default=True, metavar="PATH|URL", envvar="EXPLORER_SERVER_DB",
              help="The aggregate database: a SQLite file (path or sqlite:///path) or postgresql://user@host:port/db "
                   "(or $EXPLORER_SERVER_DB).")
@click.option("--http-host", default="127.0.0.1", show_default=True, help="Where the API listens (0.0.0.0: every address).")
@click.option("--http-port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--mqtt-host", default=None, help="The broker to ingest from. Default: start one (Mosquitto if installed).")
@click.option("--mqtt-port", default=None, type=click.IntRange(0, 65535),
              help="The broker's port (default 8883 with --mqtt-host; for our own broker, a free one).")
@click.option("--mqtt-bind", default="127.0.0.1", show_default=True,
              help="Where our own broker listens (0.0.0.0 for devices on the network).")
@click.option("--own-broker", type=click.Choice(["auto", "mosquitto", "in-process"]), default="auto", show_default=True,
              help="Which broker to start when no --mqtt-host is given.")
@click.option("--username", default="sync-server", show_default=True, help="With --mqtt-host.")
@click.option("--password", envvar="EXPLORER_INGEST_PASSWORD", default="", help="Or $EXPLORER_INGEST_PASSWORD.")
@click.option("--tls/--no-tls", default=True, show_default=True, help="With --mqtt-host (our own broker is plain TCP).")
@click.option("--ca-file", default="", help="The CA that signed the broker's certificate (default: the system's).")
@click.option("--client-id", default="explorer-ingest", show_default=True)
@click.option("--clips-dir", type=click.Path(file_okay=False), default=None,
              help="Where whole clips are kept. Default: clips/ beside a SQLite database; with PostgreSQL, none.")
@click.option("--request-clips-below", type=click.FloatRange(0, 1), default=None, metavar="CONFIDENCE",
              help="Ask each device for the clips of its detections under this confidence.")
@click.option("--analysis-home", type=click.Path(file_okay=False), default=None,
              help="A data home holding the bundles POST /api/v1/analyze uses (explorer --home DIR export "
                   "default-bundle). Default: analysis/ beside a SQLite database; with PostgreSQL, none.")
def run(db_target, http_host, http_port, mqtt_host, mqtt_port, mqtt_bind, own_broker, username, password, tls,
        ca_file, client_id, clips_dir, request_clips_below, analysis_home) -> None:
    """The ingest and the researchers' API (and dashboard) in one process, until SIGTERM.

    With no --mqtt-host it starts a broker of its own and stops it on the way out. Every API
    route but /health needs a token: `explorer-server token create --name NAME --db ...`.

    Example:

    \b
        explorer-server run --db aggregate.db --http-port 8080
        explorer-server run --db postgresql://explorer@db/explorer --mqtt-host sync.example.org --ca-file ca.crt
    """
    from pathlib import Path

    from sync_server.api.app import ApiSettings
    from sync_server.ingest import BrokerSettings, IngestError
    from sync_server.run import OwnBrokerError, RunSettings, run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = open_store(db_target)
    try:
        broker = None
        if mqtt_host is not None:
            broker = BrokerSettings(host=mqtt_host, port=mqtt_port or 8883, username=username, password=password,
                                    tls=tls, ca_file=ca_file, client_id=client_id)
        if analysis_home is None and store.sqlite_path is not None:
            analysis_home = store.sqlite_path.parent / "analysis"
        settings = RunSettings(http_host=http_host, http_port=http_port, broker=broker, own_broker_host=mqtt_bind,
                               own_broker_port=mqtt_port or 0, own_broker_kind=own_broker,
                               clips_dir=Path(clips_dir) if clips_dir else None,
                               request_clips_below=request_clips_below,
                               api=ApiSettings(analyser=_analyser(analysis_home)))
        fatal = run_server(store, settings)
    except (OwnBrokerError, IngestError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot serve the API on {http_host}:{http_port}: {exc.strerror or exc}") from None
    finally:
        store.close()
    if fatal:
        raise click.ClickException(fatal)
    click.echo("stopped", err=True)


def _analyser(home):
    """The analyser for POST /api/v1/analyze over the bundles in `home`, or None (no home, or
    the analysis module not installed): the route is then left out."""
    if home is None:
        return None
    try:
        from sync_server.analysis import Analyser
    except ModuleNotFoundError:
        return None
    return Analyser(home)


if __name__ == "__main__":
    cli()
