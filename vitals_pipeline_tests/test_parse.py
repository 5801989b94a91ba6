"""Wire strings -> typed columns: values, times, the page envelope."""

import json
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitals_pipeline.ace.parse import (
    PageFormatError,
    _parse_columnar,
    _parse_objects,
    _parse_scanned,
    parse_page,
    parse_times,
    parse_values,
    point_unit,
    points_table,
    to_samples,
)


def _values(strings):
    value, raw = parse_values(pa.array(strings, pa.string()))
    return value.to_pylist(), raw.to_pylist()


def test_zero_is_a_reading_and_specials_keep_their_wire_string():
    value, raw = _values(["0.0", "-24.8571", "NaN", "nan", None, "fault", "inf", "1e999", " 5 "])
    assert value == [0.0, -24.8571, None, None, None, None, None, None, 5.0]
    assert raw == [None, None, "NaN", "nan", None, "fault", "inf", "1e999", None]


def test_seventeen_digit_values_are_correctly_rounded():
    wide = ["1.6100000143051147", "72.30000305175781", "0.10000000149011612"]
    assert _values(wide)[0] == [float(v) for v in wide]


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_value_parse_matches_python_float(x):
    text = repr(x)
    assert _values([text])[0] == [float(text)]


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_widened_values_match_python_float(x):
    text = repr(float(x))
    assert _values([text])[0] == [float(text)]


def test_times_are_naive_utc_with_microseconds():
    ts = parse_times(pa.array(["2025-10-12T22:05:36.041315", "2025-10-12T22:05:36", "2025-10-12T22:05:36Z"]))
    assert ts.type == pa.timestamp("us")
    assert ts.to_pylist() == [
        datetime(2025, 10, 12, 22, 5, 36, 41315),
        datetime(2025, 10, 12, 22, 5, 36),
        datetime(2025, 10, 12, 22, 5, 36),
    ]


def test_parse_page_reads_envelope_and_columns():
    body = orjson.dumps(
        {
            "point_samples": [
                {"name": "s/a", "value": "0.0", "time": "2025-10-12T14:50:36.055960"},
                {"name": "s/b", "value": None, "time": "2025-10-12T14:50:36.055960"},
                {"name": "s/c", "value": 3.5, "time": "2025-10-12T14:50:36.055960"},
            ],
            "next_cursor": "abc",
            "has_more": True,
        }
    )
    page = parse_page(body)
    assert page.rows == 3 and page.has_more and page.server_cursor == "abc"
    samples = to_samples(pa.Table.from_batches([page.columns]))
    assert samples.column("value").to_pylist() == [0.0, None, 3.5]
    assert samples.column("point").to_pylist() == ["s/a", "s/b", "s/c"]


@pytest.mark.parametrize("body", [b'{"point_samples": [{"name": "a", "val', b"<html>Bad gateway</html>", b"{}"])
def test_parse_page_rejects_truncated_or_foreign_bodies(body):
    with pytest.raises(PageFormatError):
        parse_page(body)


def test_point_unit_prefers_bacnet_then_kv_tags():
    assert point_unit({"bacnet_data": {"object_units": "degrees-fahrenheit"}}) == "degrees-fahrenheit"
    assert point_unit(
        {"bacnet_data": {"object_units": "property: unknown-property"}, "kv_tags": {"unit": "kW"}}
    ) == "kW"
    assert point_unit({"bacnet_data": {"object_units": "property: unknown-property"}}) is None


def test_points_table_keeps_interval_and_his_mode():
    table = points_table(
        [
            {"name": "p1", "site": "s", "collect_interval": 60, "bacnet_data": {"object_units": "percent"}},
            {"name": "p2", "site": "s", "collect_interval": None, "kv_tags": {"his_mode": "cov"}},
        ],
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert table.column("collect_interval").to_pylist() == [60, None]
    assert table.column("his_mode").to_pylist() == ["sampled", "cov"]
    assert table.column("unit").to_pylist() == ["percent", None]


# Any wire string: value = Python float() of it when it is a finite decimal number (surrounding
# whitespace allowed), else NULL with the exact wire string kept in raw_value. Mixed into pages
# of numbers, so both the fast path (a page of numbers) and the slow path (text in the page) run.
_NUMBER_TEXT = st.from_regex(
    r"[+-]?([0-9]{1,20}\.?[0-9]{0,20}|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?", fullmatch=True
)
_WIRE_VALUE = st.one_of(
    _NUMBER_TEXT,
    _NUMBER_TEXT.map(lambda s: f" {s}\t"),
    st.sampled_from(["NaN", "nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "", " ", "fault",
                     "offline", "0x1A", "1_000", "1e", ".", "+", "--1", "1.2.3", "true", "null"]),
    st.text(alphabet="0123456789.eE+-nafiNAFI x_", max_size=8),
    st.none(),
)


def _model(text):
    import math
    import re

    if text is None:
        return None, None
    stripped = text.strip()
    if re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", stripped):
        number = float(stripped)
        if math.isfinite(number):
            return number, None
    return None, text


@settings(max_examples=100, deadline=None)
@given(st.lists(_WIRE_VALUE, min_size=1, max_size=20))
def test_any_wire_value_parses_like_the_model(texts):
    value, raw = _values(texts)
    assert list(zip(value, raw, strict=True)) == [_model(t) for t in texts]


# Page bodies for the two parse paths: any JSON-ish sample list, strings with escapes and
# non-ASCII, nulls, numbers, missing keys, odd envelopes.
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_FIELD = st.one_of(_TEXT, _TEXT, st.none(), st.floats(allow_nan=False), st.integers(-(2**63), 2**64 - 1), st.booleans())
_SAMPLE = st.one_of(
    st.fixed_dictionaries({"name": _TEXT, "time": _TEXT, "value": _TEXT}),  # the fast path's pages
    st.fixed_dictionaries({}, optional={"name": _FIELD, "time": _FIELD, "value": _FIELD, "extra": _FIELD}),
)
_ENVELOPE = st.fixed_dictionaries(
    {"point_samples": st.lists(_SAMPLE, max_size=6)},
    optional={"has_more": st.one_of(st.booleans(), st.none(), _TEXT), "next_cursor": st.one_of(_TEXT, st.none())},
)


def _page_or_error(parse, body):
    try:
        page = parse(body)
    except PageFormatError:
        return "PageFormatError"
    return (page.columns.to_pylist(), page.has_more, page.server_cursor)


@settings(max_examples=300, deadline=None)
@given(_ENVELOPE, st.sampled_from([orjson.dumps, lambda d: orjson.dumps(d, option=orjson.OPT_INDENT_2)]))
def test_columnar_page_parse_declines_or_agrees_with_the_object_parse(doc, dump):
    body = dump(doc)
    for fast_path in (_parse_scanned, _parse_columnar):
        fast = fast_path(body)
        if fast is not None:
            assert _page_or_error(lambda b, fast=fast: fast, body) == _page_or_error(_parse_objects, body)
    assert _page_or_error(parse_page, body) == _page_or_error(_parse_objects, body)


# Pages as ACE writes them (name, value, time; a value may be null), compact or with ACE's
# `", "` / `": "` spacing, non-ASCII raw or escaped: the scanned path reads them all, exactly as
# the object parse does. Names and values are any text but a quote or backslash (which make it
# decline), so separators, brackets and braces inside strings are tried too.
_PLAIN = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\'), max_size=10)
_ACE_SAMPLE = st.builds(
    lambda name, value, time: {"name": name, "value": value, "time": time},
    _PLAIN, st.one_of(_PLAIN, st.none()), _PLAIN,
)
_ACE_DUMPS = [
    lambda d: json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode(),
    lambda d: json.dumps(d, separators=(",", ":")).encode(),
    lambda d: json.dumps(d, ensure_ascii=False).encode(),
    lambda d: json.dumps(d).encode(),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_ACE_SAMPLE, min_size=1, max_size=8),
    st.one_of(st.none(), _PLAIN),
    st.booleans(),
    st.sampled_from(_ACE_DUMPS),
)
def test_pages_laid_out_as_ace_writes_them_take_the_scanned_path(samples, cursor, more, dump):
    body = dump({"point_samples": samples, "next_cursor": cursor, "has_more": more})
    scanned = _parse_scanned(body)
    if any(ord(c) < 32 for s in samples for v in s.values() if v for c in v) and b"\\" not in body:
        assert scanned is None  # a raw control character is not JSON
        return
    assert scanned is not None, body
    assert _page_or_error(lambda b: scanned, body) == _page_or_error(_parse_objects, body)


@pytest.mark.parametrize("dump", _ACE_DUMPS)
def test_the_scanned_path_reads_brackets_in_strings_and_runs_of_nulls(dump):
    # The sample list's end is found from the back (`"}]`), nulls by the gap they leave between
    # the value and time keys: strings that spell those, and nulls first, last and in a row.
    names = ["a}]", '}]', "null", ":null,", "}],{", "x"]
    values = [None, "}]", None, None, ": null, ", None]
    samples = [{"name": n, "value": v, "time": f"t{i}}}]"} for i, (n, v) in enumerate(zip(names, values))]
    for cursor in ("}]", None):
        body = dump({"point_samples": samples, "next_cursor": cursor, "has_more": True})
        scanned = _parse_scanned(body)
        assert scanned is not None, body
        assert _page_or_error(lambda b, scanned=scanned: scanned, body) == _page_or_error(_parse_objects, body)
        assert scanned.columns.column(2).to_pylist() == values
    every_null = dump({"point_samples": [{"name": "a", "value": None, "time": "t"}] * 3})
    assert _parse_scanned(every_null).columns.column(2).to_pylist() == [None] * 3


@pytest.mark.parametrize(
    "body",
    [
        b'{"point_samples":[{"name":"a\\"b","value":"1","time":"t"}],"has_more":false}',
        b'{"point_samples":[{"name":"a\\\\","value":"1","time":"t"}],"has_more":false}',
        b'{"point_samples":[{"name":"a","time":"t","value":"1"}],"has_more":false}',
        b'{"point_samples":[{"name":"a","value":1,"time":"t"}],"has_more":false}',
        b'{"point_samples":[{"name":"a","value":"1","time":"t","x":"y"}],"has_more":false}',
        b'{"point_samples":[{"name":"a","value":"1","time":"t"}],"point_samples":[]}',
        b'{"point_samples":[{"name":"a","value":"1","time":"t"}',
        b'{"point_samples":[{"name":"a", "value":"1","time":"t"}],"has_more":false}',
        b'{"point_samples":[{"name":"a","value":"1","time":"t"},{"name":"b","value":"2"}]}',
        b'{"point_samples":[{"name":"a","value":false,"time":"t"}],"has_more":false}',
        b'{"point_samples":[{"name":null,"value":"1","time":"t"}],"has_more":false}',
        b'{"point_samples":[{"name":"a","value":"1","time":null}],"has_more":false}',
        b'{"point_samples":[{"name":"a","value":null ,"time":"t"}],"has_more":false}',
        b'{"point_samples":[{"name":"a","value":"1","time":"t"},{"name":"b","value":"2","time":"t"}],"x":[{"y":"z"}]}',
    ],
)
def test_the_scanned_path_declines_what_it_cannot_read_exactly(body):
    # Escaped quotes/backslashes, other key orders, numbers, extra keys, a second list, a cut-off
    # body, other spacing, a missing key: the next paths decide, as before.
    assert _parse_scanned(body) is None
    assert _page_or_error(parse_page, body) == _page_or_error(_parse_objects, body)


def test_a_page_of_string_samples_takes_the_columnar_path():
    samples = [
        {"name": f"site/dev/analogInput/{i}", "value": v, "time": "2026-01-01T00:00:00.000001"}
        for i, v in enumerate(["0.0", "-1e3", "NaN", "caf\u00e9 \"x\"", "\u2603"])
    ]
    body = orjson.dumps({"point_samples": samples, "next_cursor": "c", "has_more": True})
    fast = _parse_columnar(body)
    assert fast is not None and fast.has_more and fast.server_cursor == "c"
    assert fast.columns.to_pylist() == _parse_objects(body).columns.to_pylist()
    assert fast.columns.column(1).to_pylist()[0] == "2026-01-01T00:00:00.000001"


def test_null_values_take_the_columnar_path_and_a_missing_value_key_does_not():
    t = "2026-01-01T00:00:00"
    nulls = orjson.dumps(
        {"point_samples": [{"name": "a", "time": t, "value": None}, {"name": "b", "time": t, "value": "1"}]}
    )
    spaced = nulls.replace(b'"value":null', b'"value" : null')
    ace = nulls.replace(b'":', b'": ').replace(b',"', b', "')  # ACE's spelling: `"value": null`
    assert b'"value": null' in ace
    for body in (nulls, spaced, ace):
        fast = _parse_columnar(body)
        assert fast is not None and fast.columns.column(2).to_pylist() == [None, "1"]
    missing = orjson.dumps({"point_samples": [{"name": "a", "time": t}, {"name": "b", "time": t, "value": None}]})
    assert _parse_columnar(missing) is None
    with pytest.raises(PageFormatError, match="lacks name/time/value"):
        parse_page(missing)
