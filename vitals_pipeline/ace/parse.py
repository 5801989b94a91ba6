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

import functools
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
# parser: ~20 ms for a 5 MB page against ~55 ms for Arrow's reader (whose tape of 150,000 little
# structs is what costs). Nothing is guessed: every byte between the name/value/time strings
# must be the exact frame below, the strings must be valid UTF-8 without control characters,
# and the rest of the envelope is read by orjson. Any other page is declined.

def _string_array(texts: list[str]) -> pa.Array:
    """A string array without pa.array(), which imports pandas (~0.4 s) on first use."""
    data = [text.encode() for text in texts]
    offsets = np.cumsum([0] + [len(d) for d in data], dtype=np.int32)
    return pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data)))


_SCAN_PREFIXES = (b'{"point_samples":[{"name":"', b'{"point_samples": [{"name": "')
# The bytes between one sample string and the next (closing quote .. opening quote), compact
# and spaced: a sample's frames are name -> value -> time -> the next sample's name. A null
# value is read as an empty string placed just before `null`, so that every sample has three
# strings; its frames are then name -> (null) -> time.
_FRAMES = (
    ('","value":"', '","time":"', '"},{"name":"'),
    ('", "value": "', '", "time": "', '"}, {"name": "'),
)
_NULL_FRAMES = (('","value":', 'null,"time":"'), ('", "value": ', 'null, "time": "'))
# The gap from a `value` key's closing quote to the `time` key's opening quote over a null.
_NULL_GAPS = (len('":null,"') - 1, len('": null, "') - 1)
_SAMPLES_END = b'"}]'
_QUOTE, _SPACE = ord('"'), ord(" ")


def _parse_scanned(body: bytes) -> Page | None:
    """The fastest path, for pages laid out as ACE writes them; None to take the next path."""
    escaped = b"\\" in body
    if escaped and (b'\\"' in body or b"\\\\" in body):
        return None  # an escaped quote or backslash: quotes no longer delimit every string
    if not body.startswith(_SCAN_PREFIXES):
        return None
    spaced = int(body.startswith(_SCAN_PREFIXES[1]))
    raw = np.frombuffer(body, np.uint8)
    if raw.min() < _SPACE:
        return None  # a raw control character: not JSON, as the exact path will say
    quotes = np.flatnonzero(raw == _QUOTE)
    if len(quotes) % 2:
        return None
    # String k is body[quotes[2k] + 1 : quotes[2k + 1]]. String 0 is the "point_samples" key; the
    # samples' strings run to the last closing quote followed by `}]` (looked for from the end:
    # only the short envelope comes after it).
    end = len(body)
    while True:
        end = body.rfind(_SAMPLES_END, 0, end)
        if end < 0:
            return None
        last = int(np.searchsorted(quotes, end))
        if last % 2:
            break
    strings = last // 2 + 1
    opens, closes = quotes[0::2], quotes[1::2]
    # A sample is six strings (name key, name, value key, value, time key, time), five when its
    # value is null: an empty string is put in for each null, then sample i's name, value and
    # time are strings 6i + 2, 6i + 4, 6i + 6. (Only a guide: the frames check every byte.)
    value_keys = np.flatnonzero(opens[2:strings] - closes[1 : strings - 1] == _NULL_GAPS[spaced]) + 1
    places = value_keys + 1 + np.arange(len(value_keys))  # of the empty strings, counted with them
    total = strings - 1 + len(value_keys)  # keys and values: six a sample
    if total % 6 or not total or (places % 6 != 4).any():
        return None
    nulls = (places - 2) // 2  # the empty strings' places among the samples' strings (3 a sample)
    samples = total // 6
    if len(nulls):
        at = closes[value_keys] + 2 + spaced  # the empty string's place: just before `null`
        quotes = np.insert(quotes, np.repeat(2 * value_keys + 2, 2), np.column_stack([at - 1, at]).ravel())
        opens, closes = quotes[0::2], quotes[1::2]
    # One zero-copy array over the body: even elements are the sample strings, odd ones the
    # frames between them.
    bounds = np.empty(6 * samples, np.int32)
    bounds[0::2] = opens[2 : 6 * samples + 1 : 2] + 1
    bounds[1::2] = closes[2 : 6 * samples + 1 : 2]
    spans = pa.StringArray.from_buffers(len(bounds) - 1, pa.py_buffer(bounds), pa.py_buffer(body))
    lengths, frames = _frames(spaced, samples)
    if len(nulls):
        lengths, frames = _with_nulls(lengths, frames, nulls, spaced)
    if not _equal(spans.take(_int32(np.arange(1, len(bounds) - 1, 2))), lengths, frames):
        return None
    names = spans.take(_int32(np.arange(0, len(bounds), 6)))
    times = spans.take(_int32(np.arange(4, len(bounds), 6)))
    value_at = _int32(np.arange(2, len(bounds), 6))
    if len(nulls):
        present = np.ones(samples, bool)
        present[nulls // 3] = False
        validity = pa.py_buffer(np.packbits(present, bitorder="little"))
        value_at = pa.Array.from_buffers(pa.int32(), samples, [validity, value_at.buffers()[1]])
    columns = [names, times, spans.take(value_at)]
    try:
        if not body.isascii():
            for column in columns:
                column.validate(full=True)  # UTF-8
        if escaped:
            columns = [_unescaped(column) for column in columns]
    except (pa.ArrowInvalid, orjson.JSONDecodeError):
        return None
    tail = body[end + 1 :]
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


@functools.lru_cache(maxsize=4)
def _frames(spaced: int, samples: int) -> tuple[np.ndarray, bytes]:
    """The frames of `samples` samples without nulls: their lengths and their bytes end to end.
    (Cached: a day is ~130 pages of the same size.)"""
    lengths = np.tile(np.array([len(f) for f in _FRAMES[spaced]], np.int32), samples)[:-1]
    lengths.flags.writeable = False
    return lengths, ("".join(_FRAMES[spaced]) * samples).encode()[: int(lengths.sum())]


def _with_nulls(lengths: np.ndarray, frames: bytes, nulls: np.ndarray, spaced: int) -> tuple[np.ndarray, bytes]:
    """The frames with a null value's pair (name -> null -> time) at each of `nulls`."""
    into, out_of = _NULL_FRAMES[spaced]
    lengths = lengths.copy()
    lengths[nulls - 1], lengths[nulls] = len(into), len(out_of)
    starts = nulls // 3 * len("".join(_FRAMES[spaced]))  # of each null's sample's frames
    ends = starts + len(_FRAMES[spaced][0]) + len(_FRAMES[spaced][1])
    pieces, previous, pair = [], 0, (into + out_of).encode()
    for start, stop in zip(starts.tolist(), ends.tolist()):
        pieces += [frames[previous:start], pair]
        previous = stop
    pieces.append(frames[previous:])
    return lengths, b"".join(pieces)


def _equal(strings: pa.StringArray, lengths: np.ndarray, data: bytes) -> bool:
    """Whether `strings` has exactly these lengths and, end to end, these bytes."""
    _, offsets_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, len(strings) + 1, strings.offset * 4)
    if not np.array_equal(np.diff(offsets), lengths):
        return False
    found = np.frombuffer(data_buffer, np.uint8, int(offsets[-1] - offsets[0]), int(offsets[0]))
    return np.array_equal(found, np.frombuffer(data, np.uint8))


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
