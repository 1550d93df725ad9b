"""`explorer tour`: start and stop guided walks, list them, and summarise what was heard.

Each command opens the Store, calls one method, and prints. Tour ids may be shortened to
any unique prefix (the list shows the first 8 characters).
"""

from __future__ import annotations

import json

import click

from device.cli.common import home_of, settings_of


def _open_store(ctx: click.Context, reporting: bool = False):
    """The device's store; `reporting` (starting or stopping a tour) opens it with the [device]
    settings, so the tour is reported as this device."""
    from device.store import Store, StoreError

    device = settings_of(ctx).device if reporting else None
    try:
        return Store.open(home_of(ctx).database, device=device)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _duration(seconds: float) -> str:
    from device.store.summary import format_duration

    return format_duration(seconds)


def _moment(moment) -> str:
    from device.store.summary import format_moment

    return format_moment(moment)


@click.group()
def tour() -> None:
    """Tours: a guided walk, the span a group's species are counted over.

    Only one tour is active at a time; detections made while it runs belong to it.

    Example:

    \b
        explorer tour start --name "Morning walk" --guide Ana
    """


@tour.command()
@click.option("--name", help="A name for the tour (default: 'Tour <date time> UTC').")
@click.option("--guide", help="Who is guiding.")
@click.pass_context
def start(ctx: click.Context, name: str | None, guide: str | None) -> None:
    """Start a tour. Fails, naming it, while another tour is active.

    Example:

    \b
        explorer tour start --name "Dawn chorus" --guide Ana
    """
    from device.store import StoreError

    with _open_store(ctx, reporting=True) as store:
        try:
            started = store.start_tour(name=name, guide=guide)
        except (StoreError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"Started tour {started.name!r} ({started.tour_id[:8]}) at {_moment(started.started_on)} UTC")


@tour.command()
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the active tour and show how long it ran.

    Example:

    \b
        explorer tour stop
    """
    from device.store import StoreError

    with _open_store(ctx, reporting=True) as store:
        try:
            stopped = store.stop_tour()
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"Stopped tour {stopped.name!r} ({stopped.tour_id[:8]}) after {_duration(stopped.duration_s())}")


@tour.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List every tour, newest first (times in UTC; '*' marks the active one).

    Example:

    \b
        explorer tour list
    """
    with _open_store(ctx) as store:
        tours = store.list_tours()
    if not tours:
        click.echo("No tours yet. Start one with: explorer tour start")
        return
    click.echo(f"  {'ID':<8}  {'STARTED':<19}  {'ENDED':<19}  {'DURATION':>10}  {'GUIDE':<12}  NAME")
    for item in tours:
        mark = "*" if item.active else " "
        click.echo(
            f"{mark} {item.tour_id[:8]}  {_moment(item.started_on):<19}  {_moment(item.ended_on):<19}  "
            f"{_duration(item.duration_s()):>10}  {(item.guide or '-')[:12]:<12}  {item.name}"
        )


@tour.command()
@click.argument("tour_ids", nargs=-1, metavar="[TOUR_ID]...")
@click.option("--all", "all_tours", is_flag=True, help="Summarise every tour.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def summary(ctx: click.Context, tour_ids: tuple[str, ...], all_tours: bool, as_json: bool) -> None:
    """Species heard on one or more tours, and the Species Spotting Rate.

    With no TOUR_ID, summarises the active tour, else the latest one. The Species Spotting
    Rate is the mean number of unique species per tour over the tours given. Detections a
    guide rejected are left out (their number is shown).

    Example:

    \b
        explorer tour summary --all --json
    """
    from device.store import StoreError

    if all_tours and tour_ids:
        raise click.UsageError("give tour ids or --all, not both")
    with _open_store(ctx) as store:
        try:
            if all_tours:
                ids = [t.tour_id for t in store.list_tours()]
            elif tour_ids:
                ids = list(tour_ids)
            else:
                chosen = store.active_tour() or next(iter(store.list_tours()), None)
                ids = [chosen.tour_id] if chosen else []
            if not ids:
                raise click.ClickException("no tours yet. Start one with: explorer tour start")
            result = store.tour_summary(ids)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        from device.store.summary import format_summary

        click.echo(format_summary(result))
