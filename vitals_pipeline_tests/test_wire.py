"""Cursor arithmetic and page-size rules, against a model of ACE's paging (defect included)."""

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitals_pipeline.ace import wire
from vitals_pipeline.ace.client import CursorTracker
from vitals_pipeline.ace.parse import WIRE_SCHEMA

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_cursor_round_trips_as_padded_base64_json():
    c = wire.Cursor(datetime(2025, 10, 12, 22, 5, 36, 41315, tzinfo=UTC), 7)
    token = c.encode()
    assert token.endswith("=") or len(token) % 4 == 0
    assert wire.Cursor.decode(token) == c
    with pytest.raises(ValueError, match="not an ACE cursor"):
        wire.Cursor.decode("not-base64!")


def test_page_size_rules():
    assert wire.check_page_size(50000) == 50000
    with pytest.raises(wire.PageSizeError, match="not one ACE accepts"):
        wire.check_page_size(30000)
    with pytest.raises(wire.PageSizeError, match="cut off"):
        wire.check_page_size(100000)
    assert wire.smaller_page_size(50000) == 10000
    assert wire.smaller_page_size(3) is None


def test_next_cursor_carries_offset_only_within_one_timestamp():
    t = T0
    assert wire.next_cursor(None, t, 3) == wire.Cursor(t, 3)
    assert wire.next_cursor(wire.Cursor(t, 3), t, 3) == wire.Cursor(t, 6)
    assert wire.next_cursor(wire.Cursor(t, 3), t + timedelta(seconds=1), 2) == wire.Cursor(t + timedelta(seconds=1), 2)
    # The defect: the server forgets the incoming offset.
    assert wire.server_cursor(wire.Cursor(t, 3), t, 3) == wire.Cursor(t, 3)


def _rows(bucket_sizes):
    """Rows ordered by (time, name): bucket i has bucket_sizes[i] points sharing one time."""
    rows = []
    for i, size in enumerate(bucket_sizes):
        t = wire.format_wire_time(T0 + timedelta(seconds=i, microseconds=17 * i))
        rows += [(f"site/p{j:03d}", t) for j in range(size)]
    return rows


def _server_page(rows, cursor, page_size, defect):
    """ACE's paging: start at rows of cursor.timestamp after skipping cursor.offset."""
    if cursor is None:
        start = 0
    else:
        ts = wire.format_wire_time(cursor.timestamp)
        first = next((i for i, r in enumerate(rows) if r[1] >= ts), len(rows))
        start = first + cursor.offset
    page = rows[start : start + page_size]
    if not page:
        return page, None
    last = page[-1][1]
    at_last = sum(1 for r in page if r[1] == last)
    make = wire.server_cursor if defect else wire.next_cursor
    return page, make(cursor, wire.parse_wire_time(last), at_last)


def _columns(page):
    return pa.record_batch(
        [pa.array([r[0] for r in page]), pa.array([r[1] for r in page]), pa.array(["1.0"] * len(page))],
        schema=WIRE_SCHEMA,
    )


@settings(max_examples=300, deadline=None)
@given(
    buckets=st.lists(st.integers(min_value=1, max_value=40), min_size=0, max_size=25),
    page_size=st.sampled_from(wire.PAGE_SIZE_CHOICES[:5]),
    defect=st.booleans(),
)
def test_client_cursor_returns_every_row_exactly_once(buckets, page_size, defect):
    rows = _rows(buckets)
    tracker, cursor, seen = CursorTracker(), None, []
    for _ in range(len(rows) + 2):
        page, _server = _server_page(rows, cursor, page_size, defect)
        if not page:
            break
        seen += page
        cursor = tracker.advance(_columns(page))
    assert seen == rows


def test_following_the_server_cursor_loops_inside_a_big_timestamp():
    rows = _rows([10])
    page1, server1 = _server_page(rows, None, 3, defect=True)
    page2, server2 = _server_page(rows, server1, 3, defect=True)
    page3, server3 = _server_page(rows, server2, 3, defect=True)
    assert server2 == server3 and page2 == page3  # the naive loop never ends


# The real pagination loop (AceClient.iter_timeseries_pages: computed cursor, repeated-page
# guard) against the model server over an in-memory transport: any page size (not only ACE's
# allowed ones), any bucket sizes, the cursor defect, and a server that repeats the previous
# page's last row on every page. Every row comes back; after de-duplication, exactly once.


def _model_transport(rows, page_size, defect, repeat_last):
    import httpx
    import orjson

    def handler(request):
        token = request.url.params.get("cursor")
        cursor = wire.Cursor.decode(token) if token else None
        page, nxt = _server_page(rows, cursor, page_size, defect)
        if page and cursor is not None and repeat_last:
            ts = wire.format_wire_time(cursor.timestamp)
            start = next(i for i, r in enumerate(rows) if r[1] >= ts) + cursor.offset
            page = rows[start - 1 : start] + page
        body = {
            "point_samples": [{"name": n, "time": t, "value": "1.0"} for n, t in page],
            "next_cursor": nxt.encode() if page else None,
            "has_more": bool(page),
        }
        return httpx.Response(200, content=orjson.dumps(body))

    return httpx.MockTransport(handler)


@settings(max_examples=40, deadline=None)
@given(
    buckets=st.lists(st.integers(min_value=1, max_value=50), min_size=0, max_size=20),
    data=st.data(),
    defect=st.booleans(),
    repeat_last=st.booleans(),
)
def test_client_pagination_loop_returns_every_row_exactly_once(buckets, data, defect, repeat_last):
    import httpx

    from vitals_pipeline.ace.client import AceClient, FetchStats

    rows = _rows(buckets)
    # Any page size from 1 up, capped below at ~25 pages per example to keep the test quick.
    page_size = data.draw(st.integers(min_value=max(1, len(rows) // 25), max_value=70))
    client = AceClient("http://ace.test/api", "k", page_size=50000, sleep=lambda s: None)
    client._http = httpx.Client(
        base_url="http://ace.test/api/", transport=_model_transport(rows, page_size, defect, repeat_last)
    )
    stats = FetchStats()
    with client:
        got = [
            (n, t)
            for batch in client.iter_timeseries_pages("s", T0, T0 + timedelta(days=1), stats)
            for n, t in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)
        ]
    assert list(dict.fromkeys(got)) == rows
    assert len(got) == len(rows) + (max(stats.pages - 1, 0) if repeat_last else 0)
    assert stats.pages == -(-len(rows) // page_size)
