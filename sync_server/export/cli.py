"""`explorer-server export`: a filtered selection of detections as a file researchers' tools read.

Registered in `sync_server/cli.py` (looked up lazily, so `explorer-server --help` does not load
pyarrow). The filters are the API's (`GET /api/v1/detections`), with the same names.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

FORMAT_NAMES = ("csv", "parquet", "raven", "dwca", "labelled")
STATUSES = ("unreviewed", "confirmed", "rejected")


class InstantType(click.ParamType):
    """An ISO-8601 instant (`2026-04-20T07:40:00Z`, an offset, or a bare date); one without a
    zone is UTC, as every time the server stores."""

    name = "ISO-8601"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        from device.domain import parse_iso_utc

        try:
            return parse_iso_utc(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time (e.g. 2026-04-20T07:40:00Z)", param, ctx)


INSTANT = InstantType()


def filter_options(command):
    """The detection filter as options (the API's query parameters, dashes for underscores)."""
    options = [
        click.option("--start", type=INSTANT, default=None, help="Detections that started at or after this time."),
        click.option("--end", type=INSTANT, default=None, help="...and before this time."),
        click.option("--species", multiple=True, metavar="LABEL|NAME",
                     help="A label or scientific name (repeat for several; any of them matches)."),
        click.option("--class-name", default=None, metavar="CLASS", help="Aves, Amphibia, Insecta or Mammalia."),
        click.option("--device-id", default=None),
        click.option("--tour-id", default=None),
        click.option("--site", default=None),
        click.option("--min-confidence", type=click.FloatRange(0, 1), default=None),
        click.option("--bundle-name", default=None),
        click.option("--bundle-version", default=None),
        click.option("--status", type=click.Choice(STATUSES), default=None, help="The guide's verdict."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@click.option("--db", "db_target", required=True, metavar="PATH|URL",
              help="The aggregate database: a SQLite file (path or sqlite:///path) or postgresql://user@host:port/db.")
@click.option("--format", "format_name", type=click.Choice(FORMAT_NAMES), required=True,
              help="csv, parquet, raven (zip of selection tables), dwca (Darwin Core Archive zip), "
                   "labelled (the guides' judged clips: a folder, or a zip when --out ends in .zip).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The file (or folder) to write.")
@filter_options
@click.option("--base-url", default=None, metavar="URL",
              help="The server's address, to make clip links absolute (https://explorer.example.org).")
@click.option("--clips", type=click.Choice(("copy", "url", "none")), default="copy", show_default=True,
              help="dwca: copy the clips into the archive, link them on the server (needs --base-url), or leave them out.")
@click.option("--include-rejected", is_flag=True, help="dwca: keep detections a guide rejected (marked so).")
@click.option("--bundles-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="dwca: a folder of bundles whose manifests give the models' licences for the EML.")
@click.option("--title", default=None, help="dwca: the dataset's title.")
@click.option("--contact-name", default=None, help="dwca: who answers questions about the data.")
@click.option("--contact-email", default=None, help="dwca: their address.")
@click.option("--licence-url", default=None, help="dwca: the data licence (default CC BY-NC-SA 4.0, the models' terms).")
@click.option("--licence-name", default=None, help="dwca: its name, e.g. 'CC BY-NC 4.0'.")
def export(db_target, format_name, out, start, end, species, class_name, device_id, tour_id, site,
           min_confidence, bundle_name, bundle_version, status, base_url, clips, include_rejected, bundles_dir,
           title, contact_name, contact_email, licence_url, licence_name) -> None:
    """Write the detections the filters select as FORMAT to --out, and say what was left out and why.

    Example:

        explorer-server export --db aggregate.db --format dwca --out elsilencio.zip --status confirmed
    """
    from dataclasses import replace

    from sync_server.db import ServerStore, ServerStoreError
    from sync_server.db.queries import DetectionFilter
    from sync_server.export.eml import DatasetInfo, bundle_terms
    from sync_server.export.formats import ExportOptions
    from sync_server.export.formats import export as run_export

    try:
        selection = DetectionFilter(start=start, end=end, species=species, class_name=class_name, device_id=device_id,
                                    tour_id=tour_id, site=site, min_confidence=min_confidence,
                                    bundle_name=bundle_name, bundle_version=bundle_version, status=status)
    except ValueError as exc:  # the message starts with the field it refuses ("end: ... is not after start")
        field = str(exc).split(":", 1)[0]
        raise click.BadParameter(str(exc), param_hint=f"'--{field.replace('_', '-')}'") from None
    given = {"title": title, "contact_name": contact_name, "contact_email": contact_email,
             "licence_url": licence_url, "licence_name": licence_name}
    dataset = replace(DatasetInfo(), **{k: v for k, v in given.items() if v is not None})
    if bundles_dir is not None:
        dataset = replace(dataset, model_terms=bundle_terms(bundles_dir))
    options = ExportOptions(base_url=base_url, dataset=dataset, clips=clips, include_rejected=include_rejected)
    try:
        store = ServerStore.open(db_target, must_exist=True)
    except ServerStoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        summary = run_export(store, format_name, selection, out, options)
    except (ValueError, FileExistsError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(summary.describe())
