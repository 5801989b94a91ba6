"""The ACE simulator over real loopback HTTP: wire format, paging, ACE's quirks, faults."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pytest

from vitals_pipeline.ace.simulator import (
    Faults,
    Simulator,
    SimulatorConfig,
    SimulatorServer,
    SiteSpec,
)
from vitals_pipeline.ace.wire import Cursor, format_wire_time, next_cursor, parse_wire_time

KEY = "test-sim-key"
OFFICE = "office"
LAB = "lab/west wing %2 ü"  # a site name that needs percent-encoding
NOW = datetime(2025, 10, 12, 18, 0, tzinfo=UTC)
START = datetime(2025, 10, 12, 14, 0, tzinfo=UTC)
END = START + timedelta(minutes=20)
TS = "/timeseries/paginated"


def make_sim(**config) -> Simulator:
    sites = config.pop("sites", [SiteSpec(OFFICE, points=150, seed=7),
                                 SiteSpec(LAB, points=60, seed=8, interval=300, weather=False)])
    sim = Simulator(SimulatorConfig(sites=sites, api_key=KEY, **config))
    sim.set_now(NOW)
    return sim


@pytest.fixture(scope="module")
def running():
    sim = make_sim()
    with SimulatorServer(sim) as server:
        yield sim, server


@pytest.fixture
def sim(running):
    sim, server = running
    sim.faults.reset()
    sim.set_now(NOW)
    server.reset_stats()
    yield sim
    sim.faults.reset()


@pytest.fixture
def server(running, sim):
    return running[1]


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url + "/", headers={"Authorization": f"Bearer {KEY}"},
                      timeout=10) as client:
        yield client


def seg(name: str) -> str:
    return quote(name, safe="")


def window(start=START, end=END, **extra) -> dict:
    return {"start_time": format_wire_time(start), "end_time": format_wire_time(end),
            "raw_data": "true", **extra}


def fetch_all(http, site=OFFICE, start=START, end=END, page_size=50000, follow_server=False,
              max_pages=10_000) -> tuple[list[tuple], int]:
    """Every row of the window with a correct cursor loop (or the server's cursor verbatim)."""
    rows: list[tuple] = []
    cursor: Cursor | None = None
    for pages in range(1, max_pages + 1):
        params = window(start, end, page_size=page_size)
        if cursor is not None:
            params["cursor"] = cursor.encode()
        r = http.get(f"sites/{seg(site)}{TS}", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        samples = body["point_samples"]
        if not samples:
            assert body == {"point_samples": [], "next_cursor": None, "has_more": False}
            return rows, pages
        assert body["has_more"] is True
        rows += [(s["name"], s["time"], s["value"]) for s in samples]
        if follow_server:
            cursor = Cursor.decode(body["next_cursor"])
        else:
            last = samples[-1]["time"]
            cursor = next_cursor(cursor, parse_wire_time(last),
                                 sum(1 for s in samples if s["time"] == last))
    raise AssertionError("too many pages")


@functools.cache
def office_day() -> tuple[Simulator, list[tuple]]:
    """Half a day of the office, night (01:00 local) to afternoon."""
    sim = make_sim()
    return sim, sim.ground_truth(OFFICE, datetime(2025, 10, 11, 6, tzinfo=UTC),
                                 datetime(2025, 10, 11, 18, tzinfo=UTC))


# ---------------------------------------------------------------------------------------------
# Model: determinism, layout, values


def test_same_seed_same_bytes_other_seed_other_values():
    a, b = make_sim(), make_sim()
    page_a = a.timeseries_page(OFFICE, START, END, 500, None).body
    assert page_a == b.timeseries_page(OFFICE, START, END, 500, None).body
    assert a.ground_truth(OFFICE, START, END) == b.ground_truth(OFFICE, START, END)
    assert a.points(OFFICE) == b.points(OFFICE)
    other = make_sim(sites=[SiteSpec(OFFICE, points=150, seed=8)])
    assert [r[2] for r in other.ground_truth(OFFICE, START, END)] != [
        r[2] for r in a.ground_truth(OFFICE, START, END)]


def test_rows_are_ordered_scrapes_share_times_and_values_look_like_ace():
    _, day = office_day()
    assert [(r[1], r[0]) for r in day] == sorted((r[1], r[0]) for r in day)
    times = {r[1]: parse_wire_time(r[1]) for r in day}
    assert all(format_wire_time(t) == s for s, t in times.items())
    assert len(times) < len(day) / 3, "a device's points share one scrape time"
    assert len({t.microsecond for t in times.values()}) > 1000, "microsecond resolution"
    values = [r[2] for r in day]
    assert "0.0" in values and "1.0" in values
    assert {"NaN", "nan"} <= set(values) and None in values
    assert 10 < sum(v in ("NaN", "nan") for v in values) < 100  # about 1 in 1000
    assert any(v and len(v) >= 15 and float(np.float32(float(v))) == float(v)
               for v in values), "some float32 readings widened to double"
    numeric = [v for v in values if v not in (None, "NaN", "nan")]
    assert all(repr(float(v)) == v for v in numeric), "values are Python-style float strings"
    # The rest are rounded to 4 decimals ("-24.8571", "72.5").
    four = [v for v in numeric if float(np.float32(float(v))) != float(v)]
    assert four and all(len(v.split(".")[1]) <= 4 for v in four)


def test_intervals_decide_which_minutes_a_point_is_read():
    sim = make_sim()
    start, end = datetime(2025, 10, 12, 9, tzinfo=UTC), datetime(2025, 10, 12, 10, tzinfo=UTC)
    rows = sim.ground_truth(OFFICE, start, end)
    by_point: dict[str, list[datetime]] = {}
    for name, t, _ in rows:
        by_point.setdefault(name, []).append(parse_wire_time(t))
    for p in sim.points(OFFICE):
        seen = by_point.get(p["name"], [])
        interval = p["collect_interval"]
        if interval is None:
            assert p["kv_tags"]["his_mode"] == "cov"
            continue
        assert len(seen) == 3600 // interval, p["name"]
        assert all((t.minute * 60) % interval == 0 for t in seen)
    assert {p["collect_interval"] for p in sim.points(OFFICE)} == {60, 300, 900, None}
    # SiteSpec.interval: every point at that interval, no change-of-value points.
    lab_rows = sim.ground_truth(LAB, start, end)
    assert len(lab_rows) == 60 * 12
    big = make_sim(sites=[SiteSpec("big", points=300, interval=60)])
    assert len(big.ground_truth("big", start, start + timedelta(minutes=10))) == 3000


def test_point_objects_have_ace_fields_units_tags_and_odd_names():
    sim = make_sim()
    points = sim.points(OFFICE)
    assert len(points) == 150 and len({p["id"] for p in points}) == 150
    for p in points:
        assert set(p) >= {"id", "name", "client", "site", "kv_tags", "marker_tags", "bacnet_data",
                          "collect_config", "point_type", "collect_enabled", "collect_interval",
                          "created", "updated"}
        assert {"device_name", "device_address", "device_id", "object_type", "object_index",
                "object_name", "object_units"} <= set(p["bacnet_data"])
        assert all(isinstance(v, str) for v in p["kv_tags"].values())
    names = [p["name"] for p in points]
    assert "office/gw1/10.0.0.10-1001/analogInput/1" in names
    assert f"{OFFICE}/Drivers/BacnetNetwork/AHU 1/points/Supply Air Temp" in names
    assert any(n.endswith("Fan Speed %") for n in names) and any("°F" in n for n in names)
    units = {p["bacnet_data"]["object_units"] for p in points}
    assert {"degrees-fahrenheit", "degrees-celsius", "percent", "percent-relative-humidity",
            "inches-of-water", "pascals", "cubic-feet-per-minute", "kilowatts", "kilowatt-hours",
            "no-units", "parts-per-million", "property: unknown-property"} <= units
    assert any("unit" in p["kv_tags"] for p in points)
    roles = {p["kv_tags"]["role"] for p in points}
    assert {"zone_temp", "supply_air_temp", "outside_air_temp", "fan_status", "duct_static",
            "electric_energy", "chws_temp"} <= roles
    zone = next(p for p in points if p["kv_tags"]["role"] == "zone_temp")
    assert {"sensor", "zone", "air", "temp"} <= set(zone["marker_tags"])


def test_meters_only_count_up_and_fans_stop_at_night():
    sim, day = office_day()
    kwh = next(p["name"] for p in sim.points(OFFICE) if p["kv_tags"]["role"] == "electric_energy")
    readings = [float(v) for n, _, v in day if n == kwh and v not in (None, "NaN", "nan")]
    assert len(readings) > 500 and all(b > a for a, b in zip(readings, readings[1:]))
    fan = next(p["name"] for p in sim.points(OFFICE) if p["kv_tags"]["role"] == "fan_speed")
    fan_values = {v for n, _, v in day if n == fan}
    assert "0.0" in fan_values and len(fan_values) > 100


def test_nothing_exists_after_now():
    sim = make_sim()
    sim.set_now(START + timedelta(minutes=5, seconds=30))
    rows = sim.ground_truth(OFFICE, START, END)
    assert rows and max(parse_wire_time(r[1]) for r in rows) <= sim.now()
    sim.set_now(datetime(2025, 10, 12, 14, 30))  # naive means UTC
    assert sim.now() == datetime(2025, 10, 12, 14, 30, tzinfo=UTC)
    assert len(sim.ground_truth(OFFICE, START, END)) > len(rows)
    sim.set_now(None)
    assert abs((sim.now() - datetime.now(UTC)).total_seconds()) < 5


# ---------------------------------------------------------------------------------------------
# Paging and the cursor


@pytest.mark.parametrize("page_size", [3, 50000])
def test_pages_with_a_correct_cursor_are_the_ground_truth(sim, http, page_size):
    end = START + timedelta(minutes=6) if page_size == 3 else START + timedelta(hours=2)
    rows, pages = fetch_all(http, end=end, page_size=page_size)
    truth = sim.ground_truth(OFFICE, START, end)
    assert rows == truth and len(truth) > 100
    assert pages == -(-len(truth) // page_size) + 1  # plus the empty last page


def test_without_the_defect_the_server_cursor_is_enough():
    sim = make_sim(cursor_defect=False)
    with SimulatorServer(sim) as server, httpx.Client(
            base_url=server.url + "/", headers={"Authorization": f"Bearer {KEY}"}) as http:
        end = START + timedelta(minutes=6)
        for page_size in (3, 10, 50000):
            rows, _ = fetch_all(http, end=end, page_size=page_size, follow_server=True)
            assert rows == sim.ground_truth(OFFICE, START, end)


def test_the_cursor_defect_returns_the_same_cursor_inside_one_timestamp(sim, http):
    truth = sim.ground_truth(OFFICE, START, END)
    scrape = next(t for _, t, _ in truth if sum(1 for r in truth if r[1] == t) > 6)
    params = window(start=parse_wire_time(scrape), page_size=3)
    first = http.get(f"sites/{OFFICE}{TS}", params=params).json()
    times = {s["time"] for s in first["point_samples"]}
    assert times == {scrape}
    params["cursor"] = first["next_cursor"]
    second = http.get(f"sites/{OFFICE}{TS}", params=params).json()
    assert second["point_samples"] != first["point_samples"]
    assert {s["time"] for s in second["point_samples"]} == times
    # ACE forgets the incoming offset: the same cursor again, so a naive loop never ends.
    assert second["next_cursor"] == first["next_cursor"]
    assert Cursor.decode(second["next_cursor"]).offset == 3
    params["cursor"] = second["next_cursor"]
    assert http.get(f"sites/{OFFICE}{TS}", params=params).json() == second


def test_time_formats_end_inclusive_and_five_minute_buckets(sim, http):
    url = f"sites/{OFFICE}{TS}"
    forms = [("2025-10-12T14:00:00Z", "2025-10-12T14:20:00Z"),
             ("2025-10-12T14:00:00", "2025-10-12T14:20:00"),
             ("2025-10-12T14:00:00+00:00", "2025-10-12T14:20:00+00:00")]
    bodies = [http.get(url, params={"start_time": s, "end_time": e, "raw_data": raw,
                                    "page_size": 50000}).content
              for s, e in forms for raw in ("true",)]
    assert bodies[0] == bodies[1] == bodies[2]
    assert {http.get(url, params=window(raw_data=v)).content for v in ("true", "True", "1")} \
        == {bodies[0]}
    truth = sim.ground_truth(OFFICE, START, END)
    at = parse_wire_time(truth[-1][1])  # a scrape time, as an end bound
    exclusive = sim.timeseries_page(OFFICE, START, at, 50000, None).body
    inclusive_sim = make_sim(end_inclusive=True)
    inclusive = inclusive_sim.timeseries_page(OFFICE, START, at, 50000, None).body
    n_at = sum(1 for r in truth if r[1] == truth[-1][1])
    assert len(orjson.loads(inclusive)["point_samples"]) == \
        len(orjson.loads(exclusive)["point_samples"]) + n_at
    buckets = http.get(url, params=window(raw_data="false")).json()["point_samples"]
    assert buckets and {parse_wire_time(s["time"]).minute % 5 for s in buckets} == {0}
    assert all(parse_wire_time(s["time"]).second == 0 for s in buckets)
    assert [(s["time"], s["name"]) for s in buckets] == sorted((s["time"], s["name"])
                                                               for s in buckets)


def test_other_timeseries_routes(sim, http):
    name = f"{OFFICE}/Drivers/BacnetNetwork/AHU 1/points/Zone Temp °F"
    r = http.get(f"points/{seg(name)}/timeseries", params=window())
    assert r.status_code == 200
    assert [(s["name"], s["time"], s["value"]) for s in r.json()["point_samples"]] == [
        t for t in sim.ground_truth(OFFICE, START, END) if t[0] == name]
    r = http.get(f"sites/{OFFICE}/timeseries", params=window(raw_data="false"))
    assert r.status_code == 200 and {parse_wire_time(s["time"]).minute % 5
                                     for s in r.json()["point_samples"]} == {0}
    r = http.post("points/get_timeseries", params=window(), json={"points": [{"name": name}]})
    assert r.status_code == 200 and len(r.json()["point_samples"]) == 4


# ---------------------------------------------------------------------------------------------
# HTTP: lists, errors, auth, names


def test_site_and_point_lists_page_like_ace(sim, http):
    r = http.get("sites/")
    assert r.json()["total"] == 2 and r.json()["page"] == 1 and r.json()["per_page"] == 10
    assert [s["name"] for s in r.json()["items"]] == [OFFICE, LAB]
    redirect = http.get("sites", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "/api/sites/"
    assert http.get("sites", follow_redirects=True).json() == r.json()
    assert http.get(f"sites/{seg(LAB)}").json()["name"] == LAB
    walked = []
    for page in range(1, 100):
        body = http.get(f"sites/{OFFICE}/configured_points",
                        params={"page": page, "per_page": 20}).json()
        walked += body["items"]
        assert body["pages"] == 8 and body["total"] == 150
        if page >= body["pages"]:
            break
    assert walked == sim.points(OFFICE)
    assert http.get(f"sites/{OFFICE}/points", params={"per_page": 1000}).json()["items"] == walked


def test_error_statuses_and_bodies_are_ace_s(server, http):
    api = server.url
    missing = httpx.get(f"{api}/sites/")
    assert missing.status_code == 401 and missing.json() == {"message": "Missing Authorization Header"}
    bad = httpx.get(f"{api}/sites/{OFFICE}{TS}", params=window(),
                    headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 500 and bad.json() == {"message": "An unhandled exception occurred."}
    for path in ("sites/nope", f"sites/nope{TS}", "sites/nope/configured_points"):
        r = http.get(path, params=window())
        assert r.status_code == 403 and r.json() and all(v is None for v in r.json().values())
    r = http.get(f"sites/{OFFICE}{TS}", params=window(page_size=30000))
    assert r.status_code == 400 and r.json() == {"errors": {"page_size": (
        "Number of records per page {error_msg} The value '30000' is not a valid choice for "
        "'page_size'.")}, "message": "Input payload validation failed"}
    r = http.get(f"sites/{OFFICE}/configured_points", params={"per_page": 7})
    assert r.status_code == 400 and r.json() == {"errors": {"per_page": (
        "Results per page {error_msg} The value '7' is not a valid choice for 'per_page'.")},
        "message": "Input payload validation failed"}
    r = http.get(f"sites/{OFFICE}{TS}", params={"end_time": "2025-10-12T15:00:00"})
    assert r.status_code == 400 and r.json() == {"errors": {"start_time": (
        "ISO format start time Missing required parameter in the query string")},
        "message": "Input payload validation failed"}
    r = http.get(f"sites/{OFFICE}{TS}", params={"start_time": "yesterday", "end_time": "x"})
    assert r.status_code == 400 and set(r.json()["errors"]) == {"start_time"}
    r = http.get("points/nope/timeseries", params=window())
    assert r.status_code == 404 and r.json() == {
        "message": "A database result was required but none was found."}
    r = http.get("no/such/route")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    weather = http.get(f"sites/{seg(LAB)}/weather")
    assert weather.status_code == 404 and all(v is None for v in weather.json()["weather"].values())
    stats = server.stats
    assert stats["statuses"][403] == 3 and stats["statuses"][400] == 4
    assert stats["statuses"][401] == 1 and stats["statuses"][500] == 1


def test_percent_encoded_names_are_one_segment(sim, http):
    rows, _ = fetch_all(http, site=LAB)
    assert rows == sim.ground_truth(LAB, START, END) and rows
    for name in (f"{OFFICE}/Drivers/BacnetNetwork/AHU 1/points/Fan Speed %",
                 f"{OFFICE}/gw1/10.0.0.10-1001/analogInput/1"):
        r = http.get(f"points/{seg(name)}/timeseries", params=window())
        assert r.status_code == 200 and {s["name"] for s in r.json()["point_samples"]} == {name}


def test_weather_is_current_and_deterministic(sim, http):
    body = http.get(f"sites/{OFFICE}/weather").json()["weather"]
    assert set(body) == {"temp", "feels_like", "pressure", "humidity", "dew_point", "clouds",
                         "wind_speed", "wind_deg", "wet_bulb"}
    assert {m["time"] for m in body.values()} == {format_wire_time(NOW)}
    assert all(isinstance(m["value"], (int, float)) for m in body.values())
    assert body["dew_point"]["value"] <= body["wet_bulb"]["value"] <= body["temp"]["value"]
    assert http.get(f"sites/{OFFICE}/weather").json()["weather"] == body


# ---------------------------------------------------------------------------------------------
# Transport faults


def get_page(http, **extra):
    return http.get(f"sites/{OFFICE}{TS}", params=window(**extra))


def test_scripted_status_faults_then_normal_service(sim, server, http):
    sim.faults.retry_after = 2
    sim.faults.script = ["429", "429-date", "500", "502", "503", "504", "invalid_json", "badkey"]
    r = get_page(http)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    r = get_page(http)
    wait = (parsedate_to_datetime(r.headers["retry-after"]) - datetime.now(UTC)).total_seconds()
    assert r.status_code == 429 and 0 <= wait <= 3
    r = get_page(http)
    assert r.status_code == 500 and r.json() == {"message": "Internal Server Error"}
    for status in (502, 503, 504):
        r = get_page(http)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html")
    r = get_page(http)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        r.json()
    r = get_page(http)
    assert r.status_code == 500 and r.json() == {"message": "An unhandled exception occurred."}
    assert get_page(http).status_code == 200 and sim.faults.script == []
    assert http.get("sites/").status_code == 200  # not a data route: never faulted
    stats = server.stats
    assert stats["faults"] == {f: 1 for f in ("429", "429-date", "500", "502", "503", "504",
                                              "invalid_json", "badkey")}
    assert stats["routes"]["timeseries"] == 9 and stats["routes"]["sites"] == 1


def test_reset_truncate_and_timeout(sim, server, http):
    sim.faults.hang_seconds = 1.0
    sim.faults.script = ["reset", "truncate", "timeout"]
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)):
        get_page(http)
    with pytest.raises(httpx.RemoteProtocolError):
        get_page(http)
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"sites/{OFFICE}{TS}", params=window(), timeout=0.3)
    assert get_page(http).status_code == 200
    # The server still answers the request the client gave up on (after hang_seconds): wait for
    # it, or it lands in the next test's stats (this module's tests share one server).
    for _ in range(50):
        if server.stats["in_flight"] == 0:
            break
        time.sleep(0.1)
    assert server.stats["in_flight"] == 0


def test_every_nth_request_and_slow_responses(sim, server, http):
    sim.faults.rate_limit_every = 2
    assert [get_page(http).status_code for _ in range(4)] == [200, 429, 200, 429]
    sim.faults.rate_limit_every = 0
    server.reset_stats()  # the count of data requests starts again
    sim.faults.server_error_every = 3
    assert [get_page(http).status_code for _ in range(3)] == [200, 200, 503]
    sim.faults.server_error_every = 0
    sim.faults.slow_seconds = 0.3
    began = time.perf_counter()
    assert get_page(http).status_code == 200
    assert time.perf_counter() - began >= 0.3


def test_big_pages_are_cut_off(sim, http):
    sim.faults.truncate_min_page_size = 50000
    with pytest.raises(httpx.RemoteProtocolError):
        get_page(http, page_size=50000)
    assert get_page(http, page_size=10000).status_code == 200


def test_late_devices_show_up_after_the_clock_moves(sim, http):
    sim.faults.late_devices = 2
    sim.faults.late_seconds = 600
    sim.set_now(END + timedelta(minutes=1))
    truth = sim.ground_truth(OFFICE, START, END)
    late = set(sim.fault_points(OFFICE)["late"])
    early, _ = fetch_all(http)
    missing = [r for r in truth if r not in set(early)]
    assert missing and {r[0] for r in missing} <= late
    assert all(parse_wire_time(r[1]) > END + timedelta(minutes=1) - timedelta(seconds=600)
               for r in missing)
    sim.set_now(END + timedelta(minutes=11))
    assert fetch_all(http)[0] == truth


def test_empty_duplicate_and_outside_window_pages(sim, http):
    truth = sim.ground_truth(OFFICE, START, END)
    sim.faults.empty_responses = True
    assert get_page(http).json() == {"point_samples": [], "next_cursor": None, "has_more": False}
    sim.faults.empty_responses = False
    sim.faults.duplicate_across_pages = True
    rows, pages = fetch_all(http, page_size=100)
    assert len(rows) == len(truth) + pages - 2  # every page after the first repeats one row
    assert list(dict.fromkeys(rows)) == truth
    sim.faults.duplicate_across_pages = False
    sim.faults.outside_window_rows = 5
    rows, _ = fetch_all(http, page_size=100)
    before = [r for r in rows if parse_wire_time(r[1]) < START]
    after = [r for r in rows if parse_wire_time(r[1]) >= END]
    assert len(before) == 5 and len(after) == 5
    assert rows[:5] == before and rows[-5:] == after
    assert [r for r in rows if r not in before and r not in after] == truth


# ---------------------------------------------------------------------------------------------
# Fleet faults: one site failing or slow, latency on every route, concurrency, per-site stats


POINT = f"{OFFICE}/gw1/10.0.0.10-1001/analogInput/1"
OFFICE_ROUTES = (f"sites/{OFFICE}{TS}", f"sites/{OFFICE}/configured_points", f"sites/{OFFICE}",
                 f"sites/{OFFICE}/weather", f"points/{seg(POINT)}/timeseries")


def test_site_status_answers_every_route_of_that_site_like_ace(sim, server, http):
    sim.faults.update({"site_status": {OFFICE: 503}, "retry_after": 2})
    for path in OFFICE_ROUTES:
        r = http.get(path, params=window())
        assert r.status_code == 503 and r.headers["content-type"].startswith("text/html"), path
        assert b"503 Service Temporarily Unavailable" in r.content
    assert http.get(f"sites/{seg(LAB)}{TS}", params=window()).status_code == 200
    assert http.get("sites/").status_code == 200  # about no one site: never faulted
    stats = server.stats
    assert stats["sites"] == {OFFICE: len(OFFICE_ROUTES), LAB: 1}
    assert stats["statuses"] == {503: len(OFFICE_ROUTES), 200: 2}

    sim.faults.site_status = {OFFICE: 403}
    r = http.get(f"sites/{OFFICE}{TS}", params=window())
    assert r.status_code == 403 and set(r.json()) >= {"id", "name"}
    assert all(v is None for v in r.json().values())  # ACE's answer for an unknown site
    sim.faults.site_status = {OFFICE: 500}
    r = http.get(f"sites/{OFFICE}/weather")
    assert r.status_code == 500 and r.json() == {"message": "Internal Server Error"}
    sim.faults.site_status = {OFFICE: 429}
    r = http.get(f"sites/{OFFICE}/configured_points")
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    sim.faults.site_status = {}
    assert http.get(f"sites/{OFFICE}{TS}", params=window()).status_code == 200
    assert sim.faults.script == []  # a site's status does not use up scripted faults


def test_latency_applies_to_every_route_and_a_slow_site_is_slow_alone(sim, http):
    sim.faults.slow_seconds = 0.2
    for path in (*OFFICE_ROUTES, "sites/"):
        began = time.perf_counter()
        assert http.get(path, params=window()).status_code == 200, path
        assert time.perf_counter() - began >= 0.2, path
    sim.faults.slow_seconds = 0
    sim.faults.site_slow_seconds = {LAB: 0.4}
    began = time.perf_counter()
    assert http.get(f"sites/{seg(LAB)}/configured_points").status_code == 200
    assert time.perf_counter() - began >= 0.4
    began = time.perf_counter()
    assert http.get(f"sites/{OFFICE}/configured_points").status_code == 200
    assert time.perf_counter() - began < 0.3


def test_slow_requests_on_separate_connections_are_served_concurrently():
    # Its own server: a request of an earlier test (a "timeout" fault still sleeping) would
    # count in the module server's in-flight figure.
    sim = make_sim()
    with SimulatorServer(sim) as server:
        _check_concurrent_slow_requests(sim, server)


def _check_concurrent_slow_requests(sim: Simulator, server: SimulatorServer) -> None:
    n = 12
    # A client each: a connection each, as the sites of a fleet run have. Connected first, so
    # that the slow requests below start together even on a loaded machine.
    clients = [httpx.Client(base_url=server.url + "/", headers={"Authorization": f"Bearer {KEY}"},
                            timeout=10) for _ in range(n)]
    for client in clients:
        assert client.get("sites/").status_code == 200
    sim.faults.slow_seconds = 0.5
    server.reset_stats()
    start = threading.Barrier(n)

    def one(i: int) -> int:
        start.wait()
        return clients[i].get(OFFICE_ROUTES[i % len(OFFICE_ROUTES)], params=window()).status_code

    began = time.perf_counter()
    try:
        with ThreadPoolExecutor(n) as pool:
            statuses = list(pool.map(one, range(n)))
    finally:
        for client in clients:
            client.close()
    elapsed = time.perf_counter() - began
    assert statuses == [200] * n
    assert elapsed < 0.5 * n / 3, elapsed  # served one after another it would take 6 s
    stats = server.stats
    assert stats["max_in_flight"] == n and stats["in_flight"] == 0, stats
    assert stats["connections"] == 0  # no new connection: every request used its client's own


def test_fleet_fault_fields_are_validated():
    faults = Faults()
    faults.update({"site_status": {"s1": 503}, "site_slow_seconds": {"s2": 1}})
    assert faults.site_status == {"s1": 503} and faults.site_slow_seconds == {"s2": 1.0}
    for bad in ({"site_status": 503}, {"site_status": {"s1": 200}},
                {"site_status": {"s1": "503"}}, {"site_status": {"s1": 503.5}},
                {"site_slow_seconds": {"s1": -1}}, {"site_slow_seconds": [1]}):
        with pytest.raises(ValueError, match="site_s"):
            faults.update(bad)
    faults.reset()
    assert faults.site_status == {} and faults.site_slow_seconds == {}


def test_site_models_are_built_on_first_use():
    sim = make_sim(sites=[SiteSpec(f"s{i:04d}", points=120, seed=i) for i in range(1000)])
    assert sim.sites_built == 0
    assert len(sim.sites()) == 1000 and sim.site("s0999")["id"] == 1000
    assert sim.weather("s0005") is not None and sim.sites_built == 0  # from the spec alone
    name = sim.points("s0500")[7]["name"]
    assert sim.sites_built == 1
    assert sim.point_site(name) == "s0500" and sim.sites_built == 1
    assert sim.point_site("s0001/no/such/point") is None and sim.sites_built == 2
    assert sim.point_site("nosite/x") is None and sim.sites_built == 2


# ---------------------------------------------------------------------------------------------
# Data faults: they change the ground truth, and the simulator says which points they hit


def test_data_faults_change_the_ground_truth():
    sim = make_sim()
    clean = sim.ground_truth(OFFICE, START, END)
    sim.faults.update({"stuck_points": 2, "out_of_range_points": {OFFICE: 2}, "text_points": 1,
                       "dead_devices": 1, "dead_after": "2025-10-12T14:10:00",
                       "outages": [["2025-10-12T14:15:00Z", "2025-10-12T14:17:00Z"]]})
    hit = sim.fault_points(OFFICE)
    rows = sim.ground_truth(OFFICE, START, END)
    values: dict[str, set] = {}
    for name, _, value in rows:
        values.setdefault(name, set()).add(value)
    assert len(hit["stuck"]) == 2 and all(len(values[p]) == 1 for p in hit["stuck"])
    oor = [float(v) for p in hit["out_of_range"] for v in values[p]]
    assert len(hit["out_of_range"]) == 2 and max(oor) > 170 and min(oor) < -30
    assert {"fault", "offline"} & values[hit["text"][0]]
    dead = set(hit["dead"])
    assert dead and not [r for r in rows if r[0] in dead and r[1] >= "2025-10-12T14:10:00"]
    assert [r for r in rows if r[0] in dead]
    assert not [r for r in rows if "2025-10-12T14:15:00" <= r[1] < "2025-10-12T14:17:00"]
    assert len(rows) < len(clean)
    # Per-site mapping: the lab is untouched by the office's out-of-range points.
    assert sim.fault_points(LAB)["out_of_range"] == []
    sim.faults.reset()
    assert sim.ground_truth(OFFICE, START, END) == clean


def test_faults_validate_their_fields():
    faults = Faults()
    with pytest.raises(ValueError, match="unknown fault"):
        faults.update({"no_such_fault": 1})
    with pytest.raises(ValueError, match="scripted"):
        faults.update({"script": ["418"]})
    faults.update({"script": ["429"], "retry_after": 0.5})
    assert faults.to_json()["script"] == ["429"] and faults.retry_after == 0.5


# ---------------------------------------------------------------------------------------------
# Admin routes and the CLI


def test_admin_routes(sim, server, http):
    admin = server.url.removesuffix("/api") + "/_sim"
    r = httpx.post(f"{admin}/faults", json={"script": ["503"], "late_devices": 1})
    assert r.status_code == 200 and r.json()["script"] == ["503"] and sim.faults.late_devices == 1
    assert httpx.post(f"{admin}/faults", json={"bogus": 1}).status_code == 400
    assert get_page(http).status_code == 503
    r = httpx.post(f"{admin}/clock", json={"now": "2025-10-12T15:00:00Z"})
    assert r.json()["now"] == "2025-10-12T15:00:00" and sim.now() == NOW - timedelta(hours=3)
    stats = httpx.get(f"{admin}/stats").json()
    assert stats["routes"] == {"timeseries": 1} and stats["statuses"] == {"503": 1}
    r = httpx.get(f"{admin}/ground_truth", params={"site": LAB, **window()})
    assert [tuple(x) for x in r.json()] == sim.ground_truth(LAB, START, END)
    assert httpx.get(f"{admin}/ground_truth", params={"site": "x", **window()}).status_code == 404
    r = httpx.post(f"{admin}/faults", json={"site_status": {LAB: 503}, "site_slow_seconds": {LAB: 0.1}})
    assert r.status_code == 200 and r.json()["site_status"] == {LAB: 503}
    assert sim.faults.site_slow_seconds == {LAB: 0.1}
    assert httpx.post(f"{admin}/faults", json={"site_status": {LAB: "x"}}).status_code == 400
    r = httpx.post(f"{admin}/reset")
    assert r.status_code == 200 and sim.faults == Faults() and server.stats["requests"] == 0
    assert httpx.post(f"{admin}/clock", json={"now": None}).json()["pinned"] is False


def test_cli_serves_until_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitals_pipeline.cli_simulate", "--port", "0", "--sites", "a,b",
         "--points", "20", "--site-points", "c=30", "--api-key", "k", "--no-cursor-defect",
         "--fault", "script=[\"503\"]", "--now", "2025-10-12T12:00:00Z"],
        stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("ACE simulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert url.endswith("/api") and not url.endswith(":0/api")
        headers = {"Authorization": "Bearer k"}
        sites = httpx.get(f"{url}/sites/", headers=headers, timeout=5).json()
        assert [s["name"] for s in sites["items"]] == ["a", "b", "c"]
        points = httpx.get(f"{url}/sites/c/points", params={"per_page": 100}, headers=headers)
        assert points.status_code == 503  # the scripted fault
        points = httpx.get(f"{url}/sites/c/points", params={"per_page": 100}, headers=headers)
        assert points.json()["total"] == 30
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_cli_serves_a_fleet_of_counted_sites_with_one_failing():
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitals_pipeline.cli_simulate", "--port", "0", "--site-count", "3",
         "--sites", "x", "--points", "20", "--api-key", "k",
         "--fault", 'site_status={"s0001": 503}'],
        stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[1]
        headers = {"Authorization": "Bearer k"}
        sites = httpx.get(f"{url}/sites/", headers=headers, timeout=5).json()
        assert [s["name"] for s in sites["items"]] == ["x", "s0000", "s0001", "s0002"]
        stats_url = url.removesuffix("/api") + "/_sim/stats"
        assert httpx.get(stats_url).json()["sites_built"] == 0
        assert httpx.get(f"{url}/sites/s0001/points", headers=headers).status_code == 503
        points = httpx.get(f"{url}/sites/s0002/points", params={"per_page": 100}, headers=headers)
        assert points.status_code == 200 and points.json()["total"] == 20
        assert httpx.get(stats_url).json()["sites_built"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_server_stops_cleanly_with_open_connections():
    sim = make_sim(sites=[SiteSpec("s", points=10)])
    server = SimulatorServer(sim).start()
    client = httpx.Client(base_url=server.url + "/", headers={"Authorization": f"Bearer {KEY}"})
    assert client.get("sites/").status_code == 200
    began = time.perf_counter()
    server.stop()
    assert time.perf_counter() - began < 3
    with pytest.raises(httpx.TransportError):
        client.get("sites/")
    client.close()
