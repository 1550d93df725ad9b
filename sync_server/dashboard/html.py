"""The dashboard's HTML pieces: escaping, the page frame, tables, and how a taxon is named.

Everything a device sent (labels, names, sources, tour names, device ids) is text from outside,
so nothing reaches a page unescaped: `esc` escapes, and the builders here escape every value
that is not already `Html` (a fragment built by one of them). A fragment is marked `Html` only
where it is made, never by wrapping outside text.

Plain server-rendered HTML with its CSS inline: no front-end build, no script, nothing fetched
from a CDN (the reserve's server may have no internet). The pages work without JavaScript.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from device.naming import taxon_name

NAV = (("/", "Overview"), ("/species", "Species"), ("/detections", "Detections"), ("/devices", "Devices"))

CSS = """
:root { --ink: #1d2a24; --muted: #5b6b63; --line: #d5ddd8; --leaf: #1f6f4a; --paper: #fbfcfb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: var(--paper); }
header { background: var(--leaf); color: #fff; padding: .6rem 1.2rem; display: flex;
         align-items: center; gap: 1.5rem; flex-wrap: wrap; }
header .brand { font-weight: 650; letter-spacing: .01em; }
header nav a { color: #e6f3ec; text-decoration: none; margin-right: 1rem; }
header nav a[aria-current="page"] { color: #fff; border-bottom: 2px solid #fff; }
header form { margin-left: auto; }
header button { background: transparent; color: #fff; border: 1px solid #cfe6d9; border-radius: 4px;
                padding: .2rem .6rem; cursor: pointer; }
main { padding: 1rem 1.2rem 2rem; max-width: 1480px; }
h1 { font-size: 1.35rem; margin: .4rem 0 1rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .92rem; }
caption { text-align: left; color: var(--muted); padding-bottom: .3rem; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .6rem; text-align: left; vertical-align: top; }
th { background: #eef3f0; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 0 .45rem; border-radius: 9px; font-size: .82rem; white-space: nowrap; }
.badge.confirmed, .badge.online { background: #d7f0e1; color: #14532d; }
.badge.rejected, .badge.offline { background: #fbe0dc; color: #7f1d1d; }
.badge.unreviewed { background: #eceff1; color: #37474f; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: end; margin-bottom: 1rem; }
form.filters label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
form.filters input, form.filters select { font: inherit; padding: .2rem .35rem; min-width: 9rem; }
form.filters button, form.login button { font: inherit; padding: .3rem .9rem; background: var(--leaf);
                                          color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
form.login { display: flex; flex-direction: column; gap: .6rem; max-width: 24rem; }
form.login input { font: inherit; padding: .35rem; }
.error { color: #8b1d12; background: #fdecea; padding: .5rem .8rem; border-radius: 4px; }
figure { margin: .4rem 0 1.2rem; }
figure svg { max-width: 100%; height: auto; background: #fff; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .9rem; }
ul.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; margin: .3rem 0; }
ul.legend span.swatch { display: inline-block; width: .9rem; height: .9rem; margin-right: .35rem;
                        vertical-align: -2px; border-radius: 2px; }
img.spectrogram { display: block; height: 64px; width: 128px; object-fit: fill; }
td .when { white-space: nowrap; }
td .source { display: inline-block; max-width: 12rem; overflow-wrap: anywhere; font-size: .85em; color: var(--muted); }
.scroll { overflow-x: auto; }
audio { height: 32px; max-width: 220px; }
nav.pages a { margin-right: 1rem; }
details summary { cursor: pointer; color: var(--muted); }
"""


class Html(str):
    """A fragment already safe to put in a page (built here from escaped parts)."""


def esc(value: Any) -> Html:
    """`value` as page text: None is empty, anything else is str()-ed and escaped (quotes too,
    so it is safe in an attribute)."""
    if isinstance(value, Html):
        return value
    return Html("" if value is None else html.escape(str(value), quote=True))


def join(parts: Iterable[Any], separator: str = "") -> Html:
    return Html(separator.join(esc(part) for part in parts))


def tag(element: str, content: Any = "", /, **attributes: Any) -> Html:
    """<element attr="...">content</element>; attribute names drop a trailing _ (class_) and use -
    for _ (aria_label); True is a bare attribute, None/False are left out."""
    attrs = []
    for key, value in attributes.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        attrs.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    return Html(f"<{element}{''.join(attrs)}>{esc(content)}</{element}>")


def link(href: str, text: Any, /, **attributes: Any) -> Html:
    return tag("a", text, href=href, **attributes)


def url(path: str, params: Mapping[str, Any] | None = None) -> str:
    """A local URL with query parameters (lists repeat the key, as `species` does)."""
    if not params:
        return path
    return f"{path}?{urlencode(params, doseq=True)}"


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], caption: Any = None,
          numeric: Iterable[int] = (), **attributes: Any) -> Html:
    """A table with a header row (th scope=col) and one row per item; column indexes in
    `numeric` are right-aligned. Cells are escaped unless they are Html."""
    numeric = set(numeric)
    head = join(tag("th", text, scope="col", class_="num" if i in numeric else None)
                for i, text in enumerate(headers))
    body = join(tag("tr", join(tag("td", cell, class_="num" if i in numeric else None)
                               for i, cell in enumerate(row))) for row in rows)
    parts = [tag("caption", caption) if caption is not None else Html(""),
             tag("thead", tag("tr", head)), tag("tbody", body)]
    return tag("table", join(parts), **attributes)


def taxon(row: Mapping[str, Any]) -> Html:
    """How a page names a detection's label (`device.naming.taxon_name`, as the guide's screen
    does): the common words, then the scientific name, in italics for a species and upright for
    a family ("a cicada (Cicadidae)": never dressed as a species); the bare label when the
    device sent no names."""
    name = _name(row)
    parts = [tag("span", name.common, class_="common")] if name.common else []
    if name.scientific and name.scientific not in name.common:
        inner = (tag("i", name.scientific, class_="scientific") if name.italic
                 else tag("span", name.scientific, class_=name.rank or "scientific"))
        parts.append(join(["(", inner, ")"]) if name.common else inner)
    if not parts:
        parts.append(tag("span", name.label, class_="label"))
    return tag("span", join(parts, " "), class_="taxon", data_rank=name.rank, data_label=name.label)


def taxon_text(row: Mapping[str, Any]) -> str:
    """The same name as plain text (a chart's <title>, a legend): "a cicada (Cicadidae)"."""
    return _name(row).text


def _name(row: Mapping[str, Any]):
    return taxon_name(row.get("scientific_name"), row.get("common_name"), row.get("class_name"), str(row.get("label")))


def duration(seconds: float | None) -> str:
    """A lag or an age as a person reads it: '45 s', '12 min', '3 h 5 min', '2 d 4 h'."""
    if seconds is None:
        return "unknown"
    sign, seconds = ("-" if seconds < 0 else ""), abs(float(seconds))
    if seconds < 60:
        return f"{sign}{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{sign}{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{sign}{hours} h {minutes} min" if minutes else f"{sign}{hours} h"
    days, hours = divmod(hours, 24)
    return f"{sign}{days} d {hours} h" if hours else f"{sign}{days} d"


def page(title: str, body: Any, path: str, signed_in: bool = True) -> Html:
    """A whole page: the frame (name, navigation, sign-out) around `body`."""
    nav = join(link(href, text, aria_current="page" if href == path else None) for href, text in NAV)
    sign_out = Html('<form method="post" action="/logout"><button type="submit">Sign out</button></form>')
    header = join([tag("span", "El Silencio Acoustic Explorer", class_="brand"),
                   tag("nav", nav, aria_label="Dashboard") if signed_in else "",
                   sign_out if signed_in else ""])
    return Html(
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · Acoustic Explorer</title><style>{CSS}</style></head>"
        f"<body>{tag('header', header)}<main>{tag('h1', title)}{esc(body)}</main></body></html>"
    )
