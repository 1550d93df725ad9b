"""The researchers' dashboard in a real browser: headless Chromium (apt) loads each page from a
running `explorer-server run` holding real detections that came through its real ingest from
two devices' real sync code (`explorer sync`'s `sync_by_hand`, a real Mosquitto), with real
clips of real recordings, and the tests assert what the page shows.

What the pages should show is worked out here from what the devices sent (not from the API), so
a page that disagrees with the data fails. EXPLORER_SCREENSHOTS=1 also saves the main views to
docs/screenshots/*.png (never in CI: the images would change with every run's dates).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import soundfile as sf

from device.config import DeviceSettings
from device.domain import Detection, utc_now
from device.naming import display_name
from device.store import Store
from tests.sync_server.api.conftest import BUNDLE, TAXA

CHROMIUM = "/usr/bin/chromium"
"""apt's Chromium: Playwright cannot download its own browser here (no internet)."""
SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
CLIP_AUDIO = {  # a real recording of the label, for each clip kept
    "21211": "audio/birdclef_train_audio/3.ogg",
    "littin1": "audio/birds/Cryp.soui.wav",
    "48124": "audio/insects/Rthoptera_tettigonia_cantans.flac",
}
HOSTILE_SOURCE = '/recordings/<script>window.pwned = 1</script><img src=x onerror="window.pwned=2">.wav'
"""A file name is whatever the device's disk holds: the page must show it as text."""


@dataclass(frozen=True)
class Planned:
    """One detection a device makes: when (hours before the newest), what, its verdict."""

    hours_before: float
    label: str
    confidence: float
    tour: str | None = None
    verdict: str | None = None
    clip: bool = False
    source: str = "/recordings/H02_20230420_074000.ogg"


@dataclass
class Field:
    """What the devices sent: the truth the pages are checked against."""

    newest_on: dict[str, datetime] = field(default_factory=dict)
    detections: list[tuple[str, Detection, Planned]] = field(default_factory=list)
    tours: dict[str, tuple[str, str]] = field(default_factory=dict)
    """tour name -> (tour_id, device_id)."""

    def counted(self):
        """(device, detection, plan) of every detection a summary counts (rejected left out)."""
        return [(d, det, p) for d, det, p in self.detections if p.verdict != "reject"]

    def species_by(self, key) -> dict[str, set[str]]:
        """Unique species (labels) by key(device_id, plan)."""
        found = defaultdict(set)
        for device_id, det, plan in self.counted():
            if key(device_id, plan) is not None:
                found[key(device_id, plan)].add(det.label)
        return dict(found)

    def species_per_day(self) -> dict[str, set[str]]:
        days = defaultdict(set)
        for _, det, _ in self.counted():
            days[det.started_on.strftime("%Y-%m-%d")].add(det.label)
        return dict(days)


H02_PLAN = [  # a guide's device at site H02: two tours, then a recorder left running
    Planned(50, "littin1", 0.91, tour="Dawn chorus", verdict="confirm", clip=True),
    Planned(49.8, "21211", 0.88, tour="Dawn chorus", verdict="confirm", clip=True),
    Planned(49.5, "48124", 0.74, tour="Dawn chorus", verdict="confirm", clip=True),
    Planned(49.2, "65448", 0.55, tour="Dawn chorus"),
    Planned(26, "21211", 0.93, tour="Night frogs"),
    Planned(25.7, "555086", 0.81, tour="Night frogs"),
    Planned(25.5, "65448", 0.47, tour="Night frogs", verdict="reject"),
    Planned(0, "littin1", 0.66, source=HOSTILE_SOURCE),
]
H07_PLAN = [  # a recorder at site H07 that went quiet three days ago
    Planned(2, "50186", 0.71),
    Planned(1, "littin1", 0.83),
    Planned(0, "21211", 0.62),
]
DEVICES = {"pi-h02": (H02_PLAN, 3.0, "H02"), "pi-h07": (H07_PLAN, 75.0, "H07")}
"""device -> (its detections, how many hours before now its newest one started (its lag), its site)."""


class FixedClock:
    """The device store's clock for tours (a tour's start and end are stamped with utc_now):
    set to each tour's real time, so a tour holds the detections made during it."""

    def __init__(self):
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at or utc_now()


def name_of(label: str) -> str:
    """How the dashboard names a label in text: a family as a family."""
    scientific, common, class_name = TAXA[label]
    return display_name(scientific, common, class_name, label)


def fill_device(store: Store, device_id: str, site: str, plan: list[Planned], newest: datetime, shared_data: Path,
                clips_dir: Path, truth: Field, clock: FixedClock) -> None:
    """Make `plan`'s detections on a device store as its pipeline would (the bundle's label facts,
    closed detections queueing their messages, tours started and stopped, a guide's verdicts,
    clips cut from real recordings)."""
    store.record_bundle(*BUNDLE, labels=[{"primary_label": label, "scientific_name": s, "common_name": c,
                                          "class_name": k} for label, (s, c, k) in TAXA.items()])
    by_tour: dict[str, list[Planned]] = defaultdict(list)
    for item in plan:
        by_tour[item.tour].append(item)
    for tour_name, items in by_tour.items():
        first = newest - timedelta(hours=max(p.hours_before for p in items))
        tour_id = None
        if tour_name is not None:
            clock.at = first - timedelta(minutes=5)
            tour_id = store.start_tour(tour_name, guide="Ana Restrepo").tour_id
            truth.tours[tour_name] = (tour_id, device_id)
        for item in items:
            started = newest - timedelta(hours=item.hours_before)
            det = Detection(label=item.label, started_on=started, ended_on=started + timedelta(seconds=5),
                            confidence=item.confidence, branch_scores={"birdnet": item.confidence, "frog_head": None},
                            bundle_name=BUNDLE[0], bundle_version=BUNDLE[1], bundle_sha256=BUNDLE[2],
                            device_id=device_id, tour_id=tour_id, source=item.source, start_s=10.0, end_s=15.0,
                            site=site)
            store.save_detection(det, final=True)
            if item.clip:
                samples, rate = sf.read(shared_data / CLIP_AUDIO[item.label], dtype="float32", always_2d=True)
                store.save_clip(clips_dir, det, samples[: int(1.5 * rate), 0], rate)
            if item.verdict:
                store.add_feedback(det.detection_id, item.verdict)
            truth.detections.append((device_id, det, item))
        if tour_name is not None:
            clock.at = newest - timedelta(hours=min(p.hours_before for p in items)) + timedelta(minutes=10)
            store.stop_tour(tour_id)
    clock.at = None
    truth.newest_on[device_id] = newest


# The server --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def field_data(shared_data, tmp_path_factory):
    """Two devices' stores filled with FIELD's detections, and their truth."""
    folder = tmp_path_factory.mktemp("devices")
    truth, clock, now = Field(), FixedClock(), utc_now()
    stores = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("device.store.tours.utc_now", clock)
        for device_id, (plan, lag_h, site) in DEVICES.items():
            store = Store.open(folder / f"{device_id}.db", device=DeviceSettings(id=device_id, site=site))
            fill_device(store, device_id, site, plan, now - timedelta(hours=lag_h), shared_data, folder / device_id,
                        truth, clock)
            stores[device_id] = store
    yield stores, truth
    for store in stores.values():
        store.close()


@pytest.fixture(scope="module")
def server(running_server, field_data):
    """`explorer-server run` (ingest, API and dashboard in one process, tests/sync_server/api/
    conftest.py) on a real Mosquitto, after both devices synced to it with `explorer sync`."""
    stores, _ = field_data
    for device_id, store in stores.items():
        report = running_server.sync(store, device_id, clip_chunk_kb=32)
        assert report.clip_error is None and report.clips_complete == sum(
            plan.clip for plan in DEVICES[device_id][0]), report
    return running_server


# The browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def signed_in(browser, server):
    """A browser context that signed in through the login form (the cookie it set)."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=server.url)
    page = context.new_page()
    page.goto("/login")
    page.fill("input[name=token]", server.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    page.close()
    yield context
    context.close()


@pytest.fixture
def page(signed_in):
    opened = signed_in.new_page()
    yield opened
    opened.close()


def shoot(page, name: str) -> None:
    if os.environ.get("EXPLORER_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def cells(page, selector: str) -> list[dict[str, str]]:
    """A table's rows as {header: cell text} (its text content: a chart's table is folded away)."""
    headers = [text.strip() for text in page.locator(f"{selector} thead th").all_text_contents()]
    return [dict(zip(headers, (text.strip() for text in row.locator("td").all_text_contents())))
            for row in page.locator(f"{selector} tbody tr").all()]


# The tests ---------------------------------------------------------------------------------

PAGES = ("/", "/species", "/detections?status=confirmed&species=littin1", "/devices")


def test_without_a_token_each_page_sends_the_browser_to_sign_in_and_a_wrong_token_is_refused(browser, server):
    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        for path in PAGES:
            response = page.goto(path)
            assert response.status == 200 and page.url.startswith(f"{server.url}/login?next=")
            assert page.locator("input[name=next]").input_value() == path  # back here after signing in
            assert "Species" not in page.locator("main").inner_text()  # nothing of the data shown
        page.fill("input[name=token]", "not-a-token")
        with page.expect_response(lambda r: r.url.endswith("/login")) as answer:
            page.click("button[type=submit]")
        assert answer.value.status == 401
        assert "not valid" in page.locator("[role=alert]").inner_text()
        assert context.cookies() == []
        page.fill("input[name=token]", server.token)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.url}/devices")  # the last page asked for
        (cookie,) = context.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("explorer_token", True, "Strict")
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no page script reads the token
        page.click("text=Sign out")
        page.wait_for_url(f"{server.url}/login")
        assert context.cookies() == []
        page.goto("/login?next=//evil.example/")
        assert page.locator("input[name=next]").input_value() == "/"  # never off this server
    finally:
        context.close()


def test_the_overview_shows_species_per_day_and_each_devices_lag(page, server, field_data):
    _, truth = field_data
    before = utc_now()
    page.goto("/")
    after = utc_now()
    expected = {day: len(labels) for day, labels in sorted(truth.species_per_day().items())}
    bars = page.locator("#species-per-day rect.bar")
    shown = {bars.nth(i).get_attribute("data-label"): int(bars.nth(i).get_attribute("data-value"))
             for i in range(bars.count())}
    assert shown == expected
    assert page.locator("#species-per-day > title").text_content() == "Species detected per day"
    for day, labels in truth.species_per_day().items():  # each bar's tooltip names its species
        tooltip = page.locator(f"#species-per-day rect[data-label='{day}'] title").text_content()
        assert sorted(tooltip.split(": ", 2)[2].split(", ")) == sorted(name_of(label) for label in labels)
    table = {row["Day (UTC)"]: int(row["Species"]) for row in cells(page, "table.chart-data") if row}
    assert table == expected  # the text fallback says the same
    devices = {row["Device"]: row for row in cells(page, "#devices")}
    assert set(devices) == set(DEVICES)
    for device_id, (_, lag_h, _) in DEVICES.items():
        lag = page.locator(f"#devices tr:has-text('{device_id}') .lag")
        seconds = float(lag.get_attribute("data-lag-s"))
        newest = truth.newest_on[device_id]
        assert (before - newest).total_seconds() - 1 <= seconds <= (after - newest).total_seconds() + 1
        assert devices[device_id]["Lag"] == ("3 h" if lag_h == 3 else "3 d 3 h")
    assert devices["pi-h02"]["State"] == "offline"  # `explorer sync` says goodbye as it ends
    shoot(page, "overview")


def test_the_detection_list_shows_each_detection_its_names_and_its_verdict(page, server, field_data):
    _, truth = field_data
    page.goto("/detections?limit=100")
    rows = cells(page, "#detections")
    assert len(rows) == len(truth.detections)
    shown = {(row["Device"], row["Started (UTC)"]): row for row in rows}
    verdicts = {"confirm": "Confirmed", "reject": "Rejected", None: "Not reviewed"}
    for device_id, det, plan in truth.detections:
        row = shown[(device_id, det.started_on.strftime("%Y-%m-%d %H:%M:%S"))]
        assert row["Species"] == name_of(det.label)
        class_name = TAXA[det.label][2]
        assert (row["Class"], row["Confidence"], row["Verdict"]) == (class_name, f"{det.confidence:.2f}",
                                                                     verdicts[plan.verdict])
        assert row["Tour"] == (plan.tour or "")
        assert row["Bundle"] == f"{BUNDLE[0]} {BUNDLE[1]}"
    # The family is named as a family, not set in italics as if it were a species.
    katydid = page.locator("[data-label='48124']").first
    assert katydid.get_attribute("data-rank") == "family" and katydid.locator("i").count() == 0
    assert page.locator("[data-label='21211'] i.scientific").first.inner_text() == "Allobates femoralis"
    # What a device sent is shown as text, never run: the file name, the whole path as its tooltip.
    hostile = page.locator(f"#detections .source[title='{HOSTILE_SOURCE}']")
    assert hostile.inner_text() == HOSTILE_SOURCE.rsplit("/", 1)[1]
    assert page.evaluate("window.pwned") is None and page.locator("#detections img:not(.spectrogram)").count() == 0
    shoot(page, "detections")


def test_a_filter_narrows_the_list_and_the_url_is_the_apis_query(page, server, field_data):
    _, truth = field_data
    page.goto("/detections")
    page.fill("input[name=species]", "allobates femoralis")  # a scientific name, any case
    page.select_option("select[name=device_id]", "pi-h02")
    page.click("form.filters button[type=submit]")
    page.wait_for_load_state()
    assert "species=allobates+femoralis" in page.url and "device_id=pi-h02" in page.url
    rows = cells(page, "#detections")
    expected = [d for device, d, _ in truth.detections if device == "pi-h02" and d.label == "21211"]
    assert len(rows) == len(expected) == 2
    assert {row["Species"] for row in rows} == {"Spotted-thighed Poison Frog (Allobates femoralis)"}
    page.goto("/detections?status=rejected")
    assert [row["Species"] for row in cells(page, "#detections")] == ["Túngara Frog (Engystomops pustulosus)"]
    page.goto("/detections?min_confidence=0.9")
    assert sorted(row["Confidence"] for row in cells(page, "#detections")) == ["0.91", "0.93"]


def test_pages_follow_the_cursor_and_show_every_detection_once(page, server, field_data):
    _, truth = field_data
    page.goto("/detections?limit=4")
    seen, pages = [], 0
    while True:
        pages += 1
        seen += [(row["Device"], row["Started (UTC)"]) for row in cells(page, "#detections")]
        following = page.locator("a[rel=next]")
        if following.count() == 0:
            break
        following.click()
        page.wait_for_load_state()
        assert "limit=4" in page.url and "cursor=" in page.url
    assert pages == 3 and len(seen) == len(truth.detections) == len(set(seen))


def test_a_bad_filter_says_which_parameter_is_wrong(page, server):
    response = page.goto("/detections?min_confidence=lots")
    assert response.status == 422
    assert "min_confidence" in page.locator("[role=alert]").inner_text()
    response = page.goto("/detections?start=yesterday")
    assert response.status == 422 and page.locator("[role=alert]").inner_text().startswith("start:")
    response = page.goto("/detections?start=2026-04-21T00:00:00Z&end=2026-04-20T00:00:00Z")
    assert response.status == 422 and page.locator("[role=alert]").inner_text().startswith("end:")
    response = page.goto("/detections?status=maybe")
    assert response.status == 422 and page.locator("[role=alert]").inner_text().startswith("status:")
    response = page.goto("/detections?cursor=not-ours")
    assert response.status == 422 and "cursor" in page.locator("[role=alert]").inner_text()
    assert page.locator("form.filters").count() == 1  # the form is there to correct it


def test_each_held_clip_plays_from_the_api_as_flac_and_its_spectrogram_loads(page, server, field_data):
    stores, truth = field_data
    page.goto("/detections?status=confirmed")
    rows = page.locator("#detections tbody tr")
    judged = [(device, det) for device, det, plan in truth.detections if plan.clip]
    assert rows.count() == len(judged) == 3
    local = {det.detection_id: Path(stores[device].list_clips(det.detection_id)[0].path).read_bytes()
             for device, det in judged}
    played = []
    for i in range(rows.count()):
        audio = rows.nth(i).locator("audio")
        source = audio.get_attribute("src")
        assert source.startswith("/api/v1/clips/")
        answer = page.request.get(source)  # the page's own cookie, as the <audio> element sends it
        assert answer.status == 200 and answer.headers["content-type"] == "audio/flac"
        played.append(answer.body())
        picture = rows.nth(i).locator("img.spectrogram")
        picture.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
        assert picture.get_attribute("src") == f"{source}/spectrogram.png"
    assert sorted(played) == sorted(local.values())  # byte for byte what the devices kept
    # The browser itself plays one: its duration is the clip's 1.5 s.
    first = rows.nth(0).locator("audio")
    duration_s = page.evaluate("""audio => new Promise((done, fail) => {
        audio.onloadedmetadata = () => done(audio.duration); audio.onerror = () => fail(audio.error.code);
        audio.preload = "metadata"; audio.load(); })""", first.element_handle())
    assert abs(duration_s - 1.5) < 0.01
    page.evaluate("document.querySelector('.scroll').scrollLeft = 0")
    shoot(page, "detections-confirmed")


def test_the_species_page_draws_an_accumulation_curve_per_site_and_per_tour(page, server, field_data):
    _, truth = field_data
    page.goto("/species")
    by_site = {name: len(found) for name, found in truth.species_by(lambda d, _: DEVICES[d][2]).items()}
    by_tour = {name: len(found) for name, found in truth.species_by(lambda _, plan: plan.tour).items()}
    assert by_site == {"H02": 5, "H07": 3} and by_tour == {"Dawn chorus": 4, "Night frogs": 2}  # rejected: out
    for chart, expected in (("#accumulation-site", by_site), ("#accumulation-tour", by_tour)):
        curves = page.locator(f"{chart} g.curve")
        shown = {curves.nth(i).get_attribute("data-series"): int(curves.nth(i).get_attribute("data-final"))
                 for i in range(curves.count())}
        assert shown == expected
        assert [t.strip() for t in page.locator(f"{chart} g.curve > title").all_text_contents()] == \
            [f"{name}: {count} species" for name, count in expected.items()]
        figure = page.locator("figure", has=page.locator(chart))
        assert figure.locator("ul.legend li").all_inner_texts() == list(expected)
        numbers = cells(figure, "table.chart-data")
        finals = {}
        for row in numbers:  # the table's last value per curve is the curve's end
            finals[row["Curve"]] = int(row["Unique species so far"])
        assert finals == expected
    shoot(page, "species")


def test_the_devices_page_shows_each_devices_status_and_lag(page, server, field_data):
    _, truth = field_data
    page.goto("/devices")
    devices = {row["Device"]: row for row in cells(page, "#devices")}
    assert {d: row["Lag"] for d, row in devices.items()} == {"pi-h02": "3 h", "pi-h07": "3 d 3 h"}
    for device_id in DEVICES:
        newest = truth.newest_on[device_id]
        assert devices[device_id]["Newest detection (UTC)"] == newest.strftime("%Y-%m-%d %H:%M:%S")
        assert devices[device_id]["Outbox pending"] == "0"  # everything went
    bars = page.locator("#device-lag rect.bar")
    assert {bars.nth(i).get_attribute("data-label"): float(bars.nth(i).get_attribute("data-value"))
            for i in range(bars.count())} == {"pi-h02": 3.0, "pi-h07": 75.0}
    shoot(page, "devices")
