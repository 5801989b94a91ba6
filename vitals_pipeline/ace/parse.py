"""ACE timeseries pages -> typed columns.

A page arrives as JSON with every value a *string* (`"0.0"`, `"-24.8571"`, `"NaN"`, `null`, text)
and every time a naive ISO string meaning UTC. Each page is turned into three Arrow string columns
at once (so the run never holds a Python object per sample): by locating its quotes when it is laid
out as ACE writes it, else by Arrow's JSON reader, else by orjson (the exact rules every path must
agree with). Each page is then typed: times to `timestamp[us]` (naive UTC, microseconds kept),
values to float64 with a correctly rounded parser (Arrow's cast; `pandas.to_numeric` is not
correctly rounded), the wire string kept in `raw_value` whenever it is not a finite number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC
from operator import itemgetter

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

# The columns one page yields, all strings as on the wire.
WIRE_SCHEMA = pa.schema([("name", pa.string()), ("time", pa.string()), ("value", pa.string())])
# The columns stored in DuckDB (the storage contract).
SAMPLE_SCHEMA = pa.schema(
    [
        ("point", pa.string()),
        ("ts", pa.timestamp("us")),
        ("value", pa.float64()),
        ("raw_value", pa.string()),
    ]
)

# A finite decimal number as ACE writes them. NaN/inf/text fail it and stay in raw_value.
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"

_name, _time, _value = itemgetter("name"), itemgetter("time"), itemgetter("value")

# A page as Arrow's JSON reader sees it: one record holding a list of wire samples.
_PAGE_SCHEMA = pa.schema(
    [
        ("point_samples", pa.list_(pa.struct(WIRE_SCHEMA))),
        ("has_more", pa.bool_()),
        ("next_cursor", pa.string()),
    ]
)


class PageFormatError(ValueError):
    """A 200 response whose body is not an ACE timeseries page (truncated or not JSON)."""


@dataclass(frozen=True)
class Page:
    """One parsed page: wire columns plus what the pagination loop needs."""

    columns: pa.RecordBatch  # WIRE_SCHEMA
    has_more: bool
    server_cursor: str | None

    @property
    def rows(self) -> int:
        return self.columns.num_rows


def parse_page(body: bytes) -> Page:
    """Parse one `timeseries/paginated` body into wire columns.

    Raises PageFormatError for a body that is not JSON or not the page envelope: ACE cuts huge
    pages off mid-stream, and a proxy may answer 200 with HTML.
    """
    return _parse_scanned(body) or _parse_columnar(body) or _parse_objects(body)


# ---------------------------------------------------------------------------------------------
# The scanned path: ACE's own page layout, read by locating its quotes.
#
# A page of ACE's is `{"point_samples": [{"name": "...", "value": "..." or null, "time": "..."},
# ...], "next_cursor": ..., "has_more": ...}`, written compact or with `", "` / `": "` spacing.
# Without a backslash in the body every string is the bytes between two consecutive quotes, so
# the samples' strings can be cut out of the body with array arithmetic instead of a JSON
# parser: ~29 ms for a 5 MB page against ~55 ms for Arrow's reader (whose tape of 150,000 little
# structs is what costs). Nothing is guessed: every byte between the name/value/time strings
# must be one of the exact frames below, the strings must be valid UTF-8 without control
# characters, and the rest of the envelope is read by orjson. Any other page is declined.

def _string_array(texts: list[str]) -> pa.Array:
    """A string array without pa.array(), which imports pandas (~0.4 s) on first use."""
    data = [text.encode() for text in texts]
    offsets = np.cumsum([0] + [len(d) for d in data], dtype=np.int32)
    return pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data)))


_SCAN_PREFIXES = (b'{"point_samples":[{"name":"', b'{"point_samples": [{"name": "')
# The bytes from the closing quote of one sample string to the opening quote of the next, in
# both spellings; index // 2 is the kind of step.
_FRAME_TEXTS = [
    '","value":"', '", "value": "',  # name -> value
    '","time":"', '", "time": "',  # value -> time
    '","value":null,"time":"', '", "value": null, "time": "',  # name -> time (null value)
    '"},{"name":"', '"}, {"name": "',  # time -> the next sample's name
]
_FRAMES = _string_array(_FRAME_TEXTS)
_NAME_VALUE, _VALUE_TIME, _NAME_TIME, _TIME_NAME = 0, 1, 2, 3
_QUOTE, _BRACE, _BRACKET, _SPACE = ord('"'), ord("}"), ord("]"), ord(" ")
# Per sample of 6 strings (name key, name, value key, value, time key, time) or 5 (the value is
# null): the positions of its value strings and the frame expected after each of them.
_VALUE_STRINGS = np.array([[1, 4, -1], [1, 3, 5]])
_FRAMES_AFTER = np.array([[_NAME_TIME, _TIME_NAME, -1], [_NAME_VALUE, _VALUE_TIME, _TIME_NAME]])


def _parse_scanned(body: bytes) -> Page | None:
    """The fastest path, for pages laid out as ACE writes them; None to take the next path."""
    escaped = b"\\" in body
    if escaped and (b'\\"' in body or b"\\\\" in body):
        return None  # an escaped quote or backslash: quotes no longer delimit every string
    raw = np.frombuffer(body, np.uint8)
    quotes = np.flatnonzero(raw == _QUOTE)
    if len(quotes) < 8 or len(quotes) % 2:
        return None
    opens, closes = quotes[0::2], quotes[1::2]  # string k is body[opens[k] + 1 : closes[k]]
    if body[: opens[2] + 1] not in _SCAN_PREFIXES:
        return None
    # Samples are separated by `}`: the string after a `}` is a sample's "name" key, the first
    # `}]` closes the list. (Only a guide to where the strings are: the frames check every byte.)
    after = closes[:-1] + 1  # after[j]: the first byte between string j and string j + 1
    braces = np.flatnonzero(raw[after] == _BRACE)
    ends = braces[raw[np.minimum(after[braces] + 1, len(raw) - 1)] == _BRACKET]
    if not len(ends):
        return None
    end = int(ends[0]) + 1  # strings 1 .. end-1 belong to samples
    keys = np.concatenate(([1], braces[braces < end - 1] + 1))  # each sample's "name" key
    counts = np.diff(np.append(keys, end))
    full = counts == 6  # else 5: a null value has no string
    if not (full | (counts == 5)).all():
        return None
    per_sample = np.where(full, 3, 2)  # value strings per sample
    first = np.zeros(len(keys), np.int64)
    np.cumsum(per_sample[:-1], out=first[1:])  # each sample's name, counted in value strings
    total = int(first[-1] + per_sample[-1])
    row = np.repeat(full.astype(np.intp), per_sample)
    step = np.arange(total) - np.repeat(first, per_sample)
    strings = np.repeat(keys, per_sample) + _VALUE_STRINGS[row, step]
    # One zero-copy array over the body: even elements are the value strings, odd ones the frames
    # between them (closing quote .. opening quote).
    bounds = np.empty(2 * total, np.int32)
    bounds[0::2] = opens[strings] + 1
    bounds[1::2] = closes[strings]
    spans = pa.StringArray.from_buffers(2 * total - 1, pa.py_buffer(bounds), pa.py_buffer(body))
    frames = spans.take(_int32(np.arange(1, 2 * total - 1, 2)))
    spaced = body.startswith(_SCAN_PREFIXES[1])
    if not (full.all() and _repeats(frames, _FULL_SAMPLE_FRAMES[spaced], bounds)):
        # Null values or mixed spacing: each frame looked up (~5 ms a page instead of ~1).
        kinds = pc.index_in(frames, value_set=_FRAMES)
        if kinds.null_count or not np.array_equal(
            kinds.to_numpy() // 2, _FRAMES_AFTER[row, step][:-1]
        ):
            return None
    if (raw < _SPACE).any():
        return None  # a raw control character: not JSON, as the exact path will say
    names = spans.take(_int32(2 * first))
    times = spans.take(_int32(2 * (first + per_sample - 1)))
    value_at = 2 * (first + 1)
    values = spans.take(
        _int32(value_at)
        if full.all()
        else pa.Array.from_buffers(
            pa.int32(),
            len(full),
            [pa.py_buffer(np.packbits(full, bitorder="little")), _int32(value_at).buffers()[1]],
        )
    )
    columns = [names, times, values]
    try:
        if not body.isascii():
            for column in columns:
                column.validate(full=True)  # UTF-8
        if escaped:
            columns = [_unescaped(column) for column in columns]
    except (pa.ArrowInvalid, orjson.JSONDecodeError):
        return None
    tail = body[closes[strings[-1]] + 1 :]
    if b'"point_samples"' in tail:
        return None  # a second sample list: the exact path would take that one
    try:
        envelope = orjson.loads(b'{"point_samples":[{' + tail)
    except orjson.JSONDecodeError:
        return None
    return Page(
        columns=pa.RecordBatch.from_arrays(columns, schema=WIRE_SCHEMA),
        has_more=bool(envelope.get("has_more")),
        server_cursor=envelope.get("next_cursor"),
    )


# The frames of a page without null values: name -> value -> time -> next name, compact or spaced.
_FULL_SAMPLE_FRAMES = tuple(
    [_FRAME_TEXTS[i].encode() for i in (style, 2 + style, 6 + style)] for style in (0, 1)
)


def _repeats(frames: pa.StringArray, pattern: list[bytes], bounds: np.ndarray) -> bool:
    """Whether the frames are exactly `pattern` over and over (the last cycle cut short)."""
    n = len(frames)
    cycles = -(-n // len(pattern))
    lengths = np.tile(np.array([len(f) for f in pattern], np.int32), cycles)[:n]
    if not np.array_equal(bounds[2::2] - bounds[1:-1:2], lengths):
        return False
    expected = (b"".join(pattern) * cycles)[: int(lengths.sum())]
    _, offsets, data = frames.buffers()
    if data is None:
        return False
    start = int(np.frombuffer(offsets, np.int32, 1, frames.offset * 4)[0])
    return data.to_pybytes()[start : start + len(expected)] == expected


def _unescaped(column: pa.Array) -> pa.Array:
    """Strings holding a JSON escape (`\\u00b0`, `\\n`...) decoded; the others as they are."""
    marked = pc.fill_null(pc.match_substring(column, "\\"), False)
    if not pc.any(marked).as_py():
        return column
    decoded = [orjson.loads(b'"' + text.encode() + b'"') for text in column.filter(marked).to_pylist()]
    return pc.replace_with_mask(column, marked, _string_array(decoded))


def _int32(positions: np.ndarray) -> pa.Array:
    """Take indices without pa.array() (which imports pandas on first use, ~0.5 s a run)."""
    return pa.Array.from_buffers(pa.int32(), len(positions), [None, pa.py_buffer(positions.astype(np.int32))])


def _parse_columnar(body: bytes) -> Page | None:
    """The second path: Arrow's JSON reader straight into columns, or None for the exact path.

    It builds no Python object per sample and releases the GIL, so the two fetch threads parse
    in parallel (measured on a 50,000-sample page: 30 ms a page with two threads, against 67 ms
    for orjson + lists, which hold the GIL). Only a page whose every sample has a string name
    and time and a string or null value is taken here; numbers, missing keys or anything odd
    go to `_parse_objects`, whose rules are the contract.
    """
    try:
        table = pa_json.read_json(
            pa.BufferReader(body),
            read_options=pa_json.ReadOptions(block_size=len(body) + 1, use_threads=False),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_PAGE_SCHEMA, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowException, ValueError, OverflowError):
        return None
    if table.num_rows != 1:
        return None
    lists = table.column("point_samples").combine_chunks()
    if lists.null_count:
        return None
    samples = lists.flatten()
    if samples.null_count:
        return None
    name, time, value = samples.flatten()
    if name.null_count or time.null_count:
        return None
    if value.null_count and not _all_null_values_present(body, value.null_count):
        return None  # a sample without a "value" key (also NULL here): the exact path says so
    return Page(
        columns=pa.RecordBatch.from_arrays([name, time, value], schema=WIRE_SCHEMA),
        has_more=bool(table.column("has_more")[0].as_py()),
        server_cursor=table.column("next_cursor")[0].as_py(),
    )


# `"value": null` pairs. Inside a JSON string a quote is escaped, so these bytes are a key ending
# in "value" with a null value: as many as the NULL values, or the page takes the exact path.
_NULL_VALUE = re.compile(rb'"value"\s*:\s*null')


def _all_null_values_present(body: bytes, nulls: int) -> bool:
    # Plain counts for the two spellings seen (compact JSON, and ACE's `"value": null`) take ~2 ms
    # a page; the regex, for any other spacing, ~9 ms.
    return (
        body.count(b'"value":null') == nulls
        or body.count(b'"value": null') == nulls
        or len(_NULL_VALUE.findall(body)) == nulls
    )


def _parse_objects(body: bytes) -> Page:
    """orjson into Python objects: every page the columnar path declines (nulls, numbers...)."""
    try:
        doc = orjson.loads(body)
        samples = doc["point_samples"]
        has_more = bool(doc.get("has_more"))
        server_cursor = doc.get("next_cursor")
    except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
        raise PageFormatError(
            f"not an ACE timeseries page ({len(body)} bytes, starts {body[:40]!r}): {exc}"
        ) from exc
    if not isinstance(samples, list):
        raise PageFormatError("point_samples is not a list")
    try:
        columns = pa.record_batch(
            [
                _strings(list(map(_name, samples))),
                _strings(list(map(_time, samples))),
                _value_strings(list(map(_value, samples))),
            ],
            schema=WIRE_SCHEMA,
        )
    except (KeyError, TypeError, OverflowError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PageFormatError(f"a sample lacks name/time/value or has the wrong type: {exc}") from exc
    return Page(columns=columns, has_more=has_more, server_cursor=server_cursor)


def _strings(values: list) -> pa.Array:
    # Letting Arrow infer the type is ~15x faster than pa.array(values, pa.string()) (measured:
    # 5 ms vs 77 ms for 50,000 names); anything but strings/None fails the type check below.
    array = pa.array(values)
    if array.type == pa.string():
        return array
    if array.type == pa.null():
        return array.cast(pa.string())
    raise pa.ArrowTypeError(f"expected strings, got {array.type}")


def _value_strings(values: list) -> pa.Array:
    """Values are strings on the wire; tolerate JSON numbers too by rendering them exactly."""
    try:
        return _strings(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(
            [v if v is None or isinstance(v, str) else repr(float(v)) for v in values], pa.string()
        )


def parse_times(times: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Wire times -> `timestamp[us]` naive UTC. A zone designator, if ACE ever sends one, is honoured."""
    try:
        return _chunked(pc.cast(times, pa.timestamp("us")))
    except pa.ArrowInvalid:
        pass
    # Some strings carry a UTC designator: drop it (the value is UTC either way).
    stripped = pc.replace_substring_regex(times, r"(Z|[+-]00:?00)$", "")
    try:
        return _chunked(pc.cast(stripped, pa.timestamp("us")))
    except pa.ArrowInvalid:
        pass
    # Other offsets: rare enough for the slow path, exact for every form fromisoformat knows.
    from vitals_pipeline.ace.wire import parse_wire_time

    parsed = [
        None if t is None else parse_wire_time(t).replace(tzinfo=None) for t in times.to_pylist()
    ]
    return _chunked(pa.array(parsed, pa.timestamp("us")))


def parse_values(raw: pa.Array | pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Wire value strings -> (value float64, raw_value string).

    `value` is NULL for JSON null, NaN, +-inf and text; `raw_value` keeps the wire string exactly
    when it did not parse to a finite number, else NULL. "0.0" is a reading, never missing.
    """
    chunks = raw.chunks if isinstance(raw, pa.ChunkedArray) else [raw]
    value = pa.chunked_array([_numbers(chunk) for chunk in chunks], pa.float64())
    # NaN and +-inf parse but are not readings; "1e999" overflows to inf.
    value = pc.if_else(pc.is_finite(value), value, pa.scalar(None, pa.float64()))
    raw_value = pc.if_else(pc.is_null(value), raw, pa.scalar(None, pa.string()))
    return _chunked(value), _chunked(raw_value)


def _numbers(chunk: pa.Array) -> pa.Array:
    """Cast one chunk (one page) of value strings to float64, text -> NULL."""
    try:
        # Fast path (~40 ms per million): every string is a number, NaN or inf.
        return pc.cast(chunk, pa.float64())
    except pa.ArrowInvalid:
        pass
    # Some text in this page: only strings that look like numbers are cast.
    trimmed = pc.utf8_trim_whitespace(chunk)
    numeric = pc.match_substring_regex(trimmed, _NUMBER)
    return pc.cast(pc.if_else(numeric, trimmed, pa.scalar(None, pa.string())), pa.float64())


def to_samples(wire: pa.Table | pa.RecordBatch) -> pa.Table:
    """Wire columns (WIRE_SCHEMA) -> the stored sample columns (SAMPLE_SCHEMA)."""
    value, raw_value = parse_values(wire.column("value"))
    return pa.table(
        [wire.column("name"), parse_times(wire.column("time")), value, raw_value],
        schema=SAMPLE_SCHEMA,
    )


# Per page, point names are dictionary-encoded (a page of 50,000 rows holds a few thousand
# distinct names): a day of a big site then costs ~20 bytes a sample in memory instead of ~100.
SAMPLE_BATCH_SCHEMA = pa.schema(
    [
        ("point", pa.dictionary(pa.int32(), pa.string())),
        ("ts", pa.timestamp("us")),
        ("value", pa.float64()),
        ("raw_value", pa.string()),
    ]
)


def to_sample_batch(wire: pa.RecordBatch) -> pa.RecordBatch:
    """One page's wire columns -> typed sample columns, the wire strings released."""
    value, raw_value = parse_values(wire.column("value"))
    return pa.record_batch(
        [
            pc.dictionary_encode(wire.column("name")),
            parse_times(wire.column("time")).combine_chunks(),
            value.combine_chunks(),
            raw_value.combine_chunks(),
        ],
        schema=SAMPLE_BATCH_SCHEMA,
    )


def combine_samples(batches: list[pa.RecordBatch]) -> pa.Table:
    """A run's typed page batches -> one table, one chunk per column, one shared dictionary."""
    table = pa.Table.from_batches(batches, schema=SAMPLE_BATCH_SCHEMA)
    return table.unify_dictionaries().combine_chunks()


def _chunked(array: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])


# ---------------------------------------------------------------------------------------------
# Point objects (configured_points) -> the `points` table.

POINT_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("site", pa.string()),
        ("device", pa.string()),
        ("object_type", pa.string()),
        ("unit", pa.string()),
        ("point_type", pa.string()),
        ("collect_enabled", pa.bool_()),
        ("collect_interval", pa.int64()),
        ("his_mode", pa.string()),
        ("marker_tags", pa.list_(pa.string())),
        ("kv_tags", pa.string()),
        ("fetched_at", pa.timestamp("us")),
    ]
)
_UNKNOWN_PROPERTY = "property: unknown-property"


def point_unit(point: dict) -> str | None:
    """The BACnet engineering-unit name of a point, or None when the device did not say.

    ACE has no top-level unit: it is `bacnet_data.object_units`, where a property the device did
    not answer reads "property: unknown-property"; some sites put it in kv_tags["unit"].
    """
    bacnet = point.get("bacnet_data") or {}
    unit = bacnet.get("object_units")
    if isinstance(unit, str) and unit and unit != _UNKNOWN_PROPERTY:
        return unit
    tagged = (point.get("kv_tags") or {}).get("unit")
    return tagged if isinstance(tagged, str) and tagged else None


def his_mode(point: dict) -> str:
    """Haystack hisMode: `cov` points have irregular gaps by design; `sampled` ones an interval."""
    tagged = (point.get("kv_tags") or {}).get("his_mode")
    if tagged in ("cov", "sampled"):
        return tagged
    return "sampled" if point.get("collect_interval") else "cov"


def points_table(points: list[dict], fetched_at) -> pa.Table:
    """Configured point objects -> one row per point (POINT_SCHEMA)."""
    naive = fetched_at.astimezone(UTC).replace(tzinfo=None) if fetched_at.tzinfo else fetched_at
    rows = {
        "name": [p["name"] for p in points],
        "site": [p.get("site") for p in points],
        "device": [(p.get("bacnet_data") or {}).get("device_name") for p in points],
        "object_type": [(p.get("bacnet_data") or {}).get("object_type") for p in points],
        "unit": [point_unit(p) for p in points],
        "point_type": [p.get("point_type") for p in points],
        "collect_enabled": [p.get("collect_enabled") for p in points],
        "collect_interval": [p.get("collect_interval") for p in points],
        "his_mode": [his_mode(p) for p in points],
        "marker_tags": [list(p.get("marker_tags") or []) for p in points],
        "kv_tags": [orjson.dumps(p.get("kv_tags") or {}).decode() for p in points],
        "fetched_at": [naive] * len(points),
    }
    return pa.table(rows, schema=POINT_SCHEMA)
