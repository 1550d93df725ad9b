"""The dashboard's pages as HTML, from data already read: no database, no request here.

Each function takes what sync_server/db/queries.py and sync_server/db/summaries.py return (the
rows the API serves as JSON) and gives the page's body; `sync_server/dashboard/routes.py` reads
and calls. Keeping them apart lets a page be read without a server, and keeps the routes short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from device.domain import parse_iso_utc
from sync_server.dashboard import charts
from sync_server.dashboard.html import Html, duration, esc, join, link, table, tag, taxon, taxon_text, url

STATUS_OPTIONS = ("", "unreviewed", "confirmed", "rejected")
CLASS_OPTIONS = ("", "Aves", "Amphibia", "Insecta", "Mammalia")
"""The label space's classes (../shared/data/taxonomy.csv); a filter for any other is typed
in the URL."""
PAGE_SIZES = (25, 50, 100, 250)
VERDICT_TEXT = {"confirmed": "Confirmed", "rejected": "Rejected", "unreviewed": "Not reviewed"}


def _day_text(value: float) -> str:
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d")


def _when(text: str | None) -> str:
    """An ISO 'Z' instant as 'YYYY-MM-DD HH:MM:SS' (the column says UTC)."""
    if not text:
        return ""
    return parse_iso_utc(text).strftime("%Y-%m-%d %H:%M:%S")


def _file_name(source: str) -> str:
    """A source's last path part (the whole path is the cell's tooltip): a Pi's paths are long
    and alike, the file name is what tells recordings apart."""
    return source.replace("\\", "/").rsplit("/", 1)[-1] or source


def _confidence(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _badge(kind: str, text: str) -> Html:
    return tag("span", text, class_=f"badge {kind}")


# Overview -------------------------------------------------------------------------------


def species_per_day(days: Sequence[Mapping[str, Any]]) -> Html:
    """The species-per-day bar chart, with its table. `days`: {day, species_count,
    detection_count} in day order."""
    bars = [(day["day"], day["species_count"]) for day in days]
    heard = [", ".join(taxon_text(found) for found in day.get("species", ())) for day in days]
    chart = charts.bar_chart("Species detected per day", bars, "species-per-day", "species", "species", heard)
    rows = [(day["day"], day["species_count"], day["detection_count"]) for day in days]
    numbers = charts.fallback(("Day (UTC)", "Species", "Detections"), rows, "Species detected per day",
                              numeric=(1, 2))
    return charts.figure(chart, "Unique species detected each day (UTC), rejected detections left out.", numbers)


def device_table(devices: Sequence[Mapping[str, Any]]) -> Html:
    """Each device's latest status and its lag (now minus its newest detection's start)."""
    rows = []
    for device in devices:
        online = device.get("online")
        state = _badge("online", "online") if online else _badge("offline", "offline") if online is False \
            else _badge("unreviewed", "no status")
        lag = device.get("lag_s")
        rows.append((
            tag("span", device["device_id"], class_="device"), state,
            tag("span", duration(lag), class_="lag", data_lag_s=None if lag is None else f"{lag:.0f}"),
            _when(device.get("newest_detection_on")), _when(device.get("published_on")),
            device.get("release") or "",
            " ".join(part for part in (device.get("bundle_name"), device.get("bundle_version")) if part),
            "" if device.get("outbox_pending") is None else device["outbox_pending"],
            "" if device.get("detection_count") is None else device["detection_count"],
        ))
    return table(("Device", "State", "Lag", "Newest detection (UTC)", "Last status (UTC)", "Release", "Bundle",
                  "Outbox pending", "Detections"), rows, caption="Devices, their latest status and lag",
                 numeric=(7, 8), id="devices")


def overview(days: Sequence[Mapping[str, Any]], devices: Sequence[Mapping[str, Any]]) -> Html:
    return join([tag("h2", "Species per day"), species_per_day(days),
                 tag("h2", "Devices"), device_table(devices) if devices else tag("p", "No device has reported yet.")])


# Species accumulation -------------------------------------------------------------------


def _elapsed_text(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 180 else f"{minutes / 60:.1f} h"


def accumulation(title: str, chart_id: str, curves: Sequence[Mapping[str, Any]],
                 origins: Mapping[Any, str | None] | None = None) -> Html:
    """Accumulation curves: `curves` as summaries.species_accumulation gives them ({key, name,
    points: [{on, species}]}, each point the cumulative unique species at an instant).

    Without `origins` the x axis is the calendar (a site's curve, by day). With them (curve key
    -> ISO start, e.g. each tour's start) each curve starts at its own zero and x is the time
    since: tours hours or days apart compare as sampling effort, the way accumulation curves
    are read (species against time spent listening), not squeezed into slivers of a calendar.
    """
    def x_of(curve: Mapping[str, Any], on: str) -> float:
        moment = parse_iso_utc(on).timestamp()
        if origins is None:
            return moment
        origin = origins.get(curve.get("key")) or (curve["points"][0]["on"] if curve["points"] else on)
        return max(0.0, moment - parse_iso_utc(origin).timestamp())

    series = [charts.Series(str(curve["name"]), tuple((x_of(curve, p["on"]), float(p["species"]))
                                                      for p in curve["points"])) for curve in curves]
    if origins is None:  # a label on each day a curve rises
        days = sorted({x for line in series for x, _ in line.points})
        chart = charts.step_chart(title, series, chart_id, "unique species", _day_text, "day (UTC)", days)
    else:
        longest = max((x for line in series for x, _ in line.points), default=0.0)
        unit = 60.0 if longest < 180 * 60 else 3600.0  # round minutes, or round hours for long tours
        marks = [tick * unit for tick in charts.ticks(longest / unit, charts.X_STEPS)
                 if tick * unit <= longest * (1 + charts.HOLD)]
        chart = charts.step_chart(title, series, chart_id, "unique species", _elapsed_text, "time since the start",
                                  marks, x_from=0.0)
    rows = [(curve["name"], _when(point["on"]), point["species"]) for curve in curves for point in curve["points"]]
    numbers = charts.fallback(("Curve", "At (UTC)", "Unique species so far"), rows, title, numeric=(2,))
    return charts.figure(chart, f"{title}: cumulative unique species, rejected detections left out.", numbers,
                         charts.legend(series))


def species(by_site: Sequence[Mapping[str, Any]], by_tour: Sequence[Mapping[str, Any]],
            tours: Sequence[Mapping[str, Any]]) -> Html:
    """Per site by day; per tour by time since each tour's start (its first detection for a
    tour the server knows only from its detections)."""
    starts = {item["tour_id"]: item.get("started_on") for item in tours}
    return join([tag("h2", "Per site"), accumulation("Species accumulation per site", "accumulation-site", by_site),
                 tag("h2", "Per tour"), accumulation("Species accumulation per tour", "accumulation-tour", by_tour,
                                                     starts)])


# Detections -----------------------------------------------------------------------------


def _field(label: str, control: Html) -> Html:
    return tag("label", join([label, control]))


def _text_input(name: str, params: Mapping[str, Any], placeholder: str = "", **attributes) -> Html:
    value = params.get(name)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return Html(f'<input name="{esc(name)}" value="{esc(value)}" placeholder="{esc(placeholder)}"'
                + "".join(f' {esc(k.replace("_", "-"))}="{esc(v)}"' for k, v in attributes.items()) + ">")


def _select(name: str, options: Sequence[tuple[str, str]], chosen: Any) -> Html:
    items = join(tag("option", text, value=value, selected=str(chosen or "") == value) for value, text in options)
    return tag("select", items, name=name)


def filter_form(params: Mapping[str, Any], devices: Sequence[str], tours: Sequence[Mapping[str, Any]]) -> Html:
    """The filters, named as the API's query parameters (a filtered page's URL is the API's
    query too), sent with GET."""
    species_value = params.get("species")
    tour_options = [("", "any")] + [(t["tour_id"], t.get("name") or t["tour_id"]) for t in tours]
    fields = [
        _field("From (UTC)", _text_input("start", params, "2026-04-20T00:00:00Z")),
        _field("Before (UTC)", _text_input("end", params, "2026-04-21T00:00:00Z")),
        _field("Species (label or scientific name)",
               _text_input("species", {"species": species_value}, "littin1 or Allobates femoralis")),
        _field("Class", _select("class_name", [(c, c or "any") for c in CLASS_OPTIONS], params.get("class_name"))),
        _field("Device", _select("device_id", [("", "any")] + [(d, d) for d in devices], params.get("device_id"))),
        _field("Tour", _select("tour_id", tour_options, params.get("tour_id"))),
        _field("Site", _text_input("site", params, "H02")),
        _field("Min. confidence", _text_input("min_confidence", params, "0.5", type="number", min="0", max="1",
                                              step="0.01")),
        _field("Bundle", _text_input("bundle_name", params, "elsilencio-default")),
        _field("Version", _text_input("bundle_version", params, "1.0.0")),
        _field("Verdict", _select("status", [(s, s or "any") for s in STATUS_OPTIONS], params.get("status"))),
        _field("Per page", _select("limit", [(str(n), str(n)) for n in PAGE_SIZES], params.get("limit") or "50")),
    ]
    buttons = join([Html('<button type="submit">Filter</button>'), " ", link("/detections", "Clear")])
    return tag("form", join(fields + [buttons]), method="get", action="/detections", class_="filters",
               aria_label="Filters")


def detection_rows(rows: Sequence[Mapping[str, Any]]) -> Html:
    """The detections table: each row's species, time, confidence, where, the model, the
    guide's verdict, and its clip to listen to with its spectrogram when the server holds one."""
    cells = []
    for row in rows:
        held = row.get("clip")
        if held:
            audio = Html(f'<audio controls preload="none" src="{esc(held["url"])}" '
                         f'aria-label="Clip of detection {esc(row["detection_id"])}"></audio>')
            picture = Html(f'<img class="spectrogram" loading="lazy" src="{esc(held["url"])}/spectrogram.png" '
                           f'alt="Spectrogram of the clip">')
        else:
            audio, picture = tag("span", "not on the server", class_="muted"), Html("")
        status = row.get("verification_status") or "unreviewed"
        cells.append((
            tag("span", _when(row["started_on"]), class_="when"), taxon(row), row.get("class_name") or "",
            _confidence(row.get("confidence")),
            row["device_id"], row.get("tour_name") or row.get("tour_id") or "", row.get("site") or "",
            f'{row["bundle_name"]} {row["bundle_version"]}', _badge(status, VERDICT_TEXT.get(status, status)),
            tag("span", _file_name(row.get("source") or ""), class_="source", title=row.get("source")), audio, picture,
        ))
    return table(("Started (UTC)", "Species", "Class", "Confidence", "Device", "Tour", "Site", "Bundle", "Verdict",
                  "Source", "Clip", "Spectrogram"), cells,
                 caption=f"{len(rows)} detections on this page, in the order the server received them",
                 numeric=(3,), id="detections")


def detections(rows: Sequence[Mapping[str, Any]], params: Mapping[str, Any], next_cursor: str | None,
               devices: Sequence[str], tours: Sequence[Mapping[str, Any]], error: str | None = None) -> Html:
    """The list page: filters, the rows, and links to the next page (the API's cursor: a page
    never repeats or skips a row, even while the ingest adds some) and back to the first."""
    parts = [filter_form(params, devices, tours)]
    if error:
        parts.append(tag("p", error, class_="error", role="alert"))
    parts.append(tag("div", detection_rows(rows), class_="scroll") if rows
                 else tag("p", "No detection matches these filters.", id="none"))
    paging = []
    if params.get("cursor"):
        paging.append(link(url("/detections", {k: v for k, v in params.items() if k != "cursor"}), "First page"))
    if next_cursor:
        paging.append(link(url("/detections", {**{k: v for k, v in params.items() if k != "cursor"},
                                               "cursor": next_cursor}), "Next page", rel="next"))
    if paging:
        parts.append(tag("nav", join(paging, " "), class_="pages", aria_label="Pages"))
    return join(parts)


# Devices --------------------------------------------------------------------------------


def devices(items: Sequence[Mapping[str, Any]]) -> Html:
    lags = [(d["device_id"], round((d.get("lag_s") or 0) / 3600, 1)) for d in items if d.get("lag_s") is not None]
    chart = charts.bar_chart("Lag per device (hours)", lags, "device-lag", "hours behind", "h")
    numbers = charts.fallback(("Device", "Lag (h)"), lags, "Lag per device", numeric=(1,))
    body = [device_table(items) if items else tag("p", "No device has reported yet."),
            tag("h2", "Lag"), charts.figure(chart, "How far behind each device's newest detection is.", numbers)]
    return join(body)


# Sign-in --------------------------------------------------------------------------------


def login(next_path: str, error: str | None = None) -> Html:
    """The token form: a token from `explorer-server token create --name ...`, kept in an
    HttpOnly cookie (page scripts never see it)."""
    parts = [tag("p", "Sign in with an API token (ask the server's operator for one: "
                      "explorer-server token create --name YOUR-NAME).")]
    if error:
        parts.append(tag("p", error, class_="error", role="alert"))
    form = join([
        tag("label", join(["Token", Html('<input type="password" id="token" name="token" '
                                         'autocomplete="current-password" required autofocus>')]), for_="token"),
        Html(f'<input type="hidden" name="next" value="{esc(next_path)}">'),
        Html('<button type="submit">Sign in</button>'),
    ])
    parts.append(tag("form", form, method="post", action="/login", class_="login"))
    return join(parts)
