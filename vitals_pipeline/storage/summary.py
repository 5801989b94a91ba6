"""Read-only figures about what is stored, for people (the demo, `vitals status`)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from vitals_pipeline.storage.names import qualified_name, schema_name


def site_figures(con: duckdb.DuckDBPyConnection, site: str) -> dict:
    """Samples, points and time range of one site's timeseries table (zeros when absent)."""
    schema = schema_name(site)
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'timeseries'",
        [schema],
    ).fetchone()[0]
    if not exists:
        return {"site": site, "schema": schema, "samples": 0, "points": 0, "first_ts": None, "last_ts": None}
    # Three-part name: a file whose stem equals the schema makes two-part names ambiguous.
    table = qualified_name(con.execute("SELECT current_database()").fetchone()[0], schema, "timeseries")
    samples, points, first, last = con.execute(
        f"SELECT count(*), count(DISTINCT point), min(ts), max(ts) FROM {table}"
    ).fetchone()
    return {
        "site": site,
        "schema": schema,
        "samples": samples,
        "points": points,
        "first_ts": first,
        "last_ts": last,
    }


def summarize(db_path: str, sites: list[str]) -> list[str]:
    """Human lines: per site samples, points and UTC time range, then where the file is."""
    path = Path(db_path).resolve()
    lines = []
    with duckdb.connect(str(path), read_only=True) as con:
        for site in sites:
            f = site_figures(con, site)
            span = (
                f"{f['first_ts']:%Y-%m-%d %H:%M:%S} .. {f['last_ts']:%Y-%m-%d %H:%M:%S} UTC"
                if f["first_ts"] is not None
                else "no samples"
            )
            lines.append(
                f"{site}: {f['samples']:,} samples from {f['points']:,} points, {span}"
                f"  (table {f['schema']}.timeseries)"
            )
    size = path.stat().st_size if path.exists() else 0
    lines.append(f"DuckDB file: {path} ({size / 1e6:.1f} MB)")
    lines.append(
        f"""Query it:    .venv/bin/python -c "import duckdb; print(duckdb.connect('{path}', read_only=True)"""
        f""".sql('SELECT point, count(*), avg(value) FROM {schema_name(sites[0]) if sites else 'main'}"""
        """.timeseries GROUP BY 1 LIMIT 5'))" """
    )
    return lines
