"""The table-format candidates for the shared warehouse, measured the way bench/warehouse.py
measures PostgreSQL: Delta Lake (`deltalake`, delta-rs) and Iceberg (`pyiceberg` with its SQL
catalog on SQLite), each site's samples in a table of its own, on a local folder.

Not a dependency of the project (docs/warehouse.md says why neither was chosen); run it in a
throwaway environment:

    python3 -m venv /tmp/lakes && /tmp/lakes/bin/pip install deltalake==1.6.6 \
        'pyiceberg[sql-sqlite,pyarrow]==0.12.0' pyarrow==26.0.1 numpy
    /tmp/lakes/bin/python bench/warehouse_lakes.py [--sites 20] [--writers 4] [--ticks 6]

Measured: W writer processes merging the ticks of disjoint sites at once (wall, failed
merges), two processes merging the SAME site's window at once (conflicts), files per table
after the ticks (every merge adds files: compaction becomes a job of its own), and a reader
that keeps reading during the writes (failures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

START = datetime(2026, 3, 9)


def tick(site: int, n: int, points: int = 120) -> pa.Table:
    """Tick n of a site: 15 minutes at one sample a minute (overlapping the previous tick by 10,
    as the lookback re-fetches)."""
    base = np.datetime64(START + timedelta(minutes=5 * n), "us")
    ts = (base + (np.arange(15)[:, None] * 60_000_000 + np.arange(points)[None, :]).astype("timedelta64[us]")).ravel()
    return pa.table({
        "point": pa.array([f"s{site}/p{p:04d}" for p in range(points)] * 15),
        "ts": pa.array(ts, pa.timestamp("us")),
        "value": pa.array(np.random.default_rng(site * 1000 + n).normal(70, 5, points * 15)),
    })


def merge(fmt: str, root: str, site: int, frame: pa.Table) -> None:
    if fmt == "delta":
        from deltalake import DeltaTable, write_deltalake

        path = f"{root}/s{site}"
        try:
            table = DeltaTable(path)
        except Exception:  # noqa: BLE001 - first write creates it
            write_deltalake(path, frame.slice(0, 0), mode="append")
            table = DeltaTable(path)
        (table.merge(frame, predicate="t.point = s.point AND t.ts = s.ts", source_alias="s", target_alias="t")
         .when_matched_update_all().when_not_matched_insert_all().execute())
        return
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("bench", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}")
    catalog.create_namespace_if_not_exists("vitals")
    name = f"vitals.s{site}"
    if not catalog.table_exists(name):
        from pyiceberg.schema import Schema
        from pyiceberg.types import DoubleType, NestedField, StringType, TimestampType

        schema = Schema(NestedField(1, "point", StringType(), required=True),
                        NestedField(2, "ts", TimestampType(), required=True),
                        NestedField(3, "value", DoubleType()), identifier_field_ids=[1, 2])
        try:
            catalog.create_table(name, schema)
        except Exception:  # noqa: BLE001 - created meanwhile by another writer
            pass
    table = catalog.load_table(name)
    frame = frame.cast(pa.schema([pa.field("point", pa.string(), False), pa.field("ts", pa.timestamp("us"), False),
                                  pa.field("value", pa.float64())]))
    table.upsert(frame, join_cols=["point", "ts"])


def files(fmt: str, root: str, site: int) -> int:
    folder = Path(root) / (f"s{site}" if fmt == "delta" else f"vitals/s{site}/data")
    if fmt != "delta":
        folder = next(Path(root).glob(f"vitals*/s{site}*/data"), folder)
    return len(list(folder.rglob("*.parquet")))


def worker(fmt: str, root: str, sites: list[int], ticks: int) -> None:
    failed, errors = 0, set()
    began = time.perf_counter()
    for n in range(ticks):
        for site in sites:
            for attempt in range(3):
                try:
                    merge(fmt, root, site, tick(site, n))
                    break
                except Exception as exc:  # noqa: BLE001 - counted
                    errors.add(f"{type(exc).__name__}: {str(exc)[:120]}")
                    if attempt == 2:
                        failed += 1
    print(json.dumps({"seconds": time.perf_counter() - began, "failed": failed, "errors": sorted(errors)}), flush=True)


def reader(fmt: str, root: str, seconds: float) -> None:
    reads = failures = 0
    end = time.time() + seconds
    while time.time() < end:
        try:
            if fmt == "delta":
                from deltalake import DeltaTable

                _ = DeltaTable(f"{root}/s0").to_pyarrow_table().num_rows
            else:
                from pyiceberg.catalog.sql import SqlCatalog

                _ = SqlCatalog("bench", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}") \
                    .load_table("vitals.s0").scan().to_arrow().num_rows
            reads += 1
        except Exception:  # noqa: BLE001 - counted
            failures += 1
        time.sleep(0.25)
    print(json.dumps({"reads": reads, "failures": failures}), flush=True)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def measure(fmt: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"vitals-{fmt}-") as root:
        worker_args = lambda group: ["--worker", fmt, root, json.dumps(group), str(args.ticks)]  # noqa: E731
        for site in range(args.sites):  # tables exist before the race (creation is not measured)
            merge(fmt, root, site, tick(site, 0))
        read = spawn("--reader", fmt, root, "15")
        began = time.perf_counter()
        procs = [spawn(*worker_args(list(range(i, args.sites, args.writers)))) for i in range(args.writers)]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - began
        reads = json.loads(read.communicate()[0].strip().splitlines()[-1])
        same = [spawn(*worker_args([0])) for _ in range(2)]  # two writers of one site at once
        same_results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in same]
        return {
            "format": fmt, "sites": args.sites, "writers": args.writers, "ticks": args.ticks,
            "wall_s": round(wall, 1), "failed_merges": sum(r["failed"] for r in results),
            "errors": sorted({e for r in results for e in r["errors"]})[:3],
            "same_site_errors": sorted({e for r in same_results for e in r["errors"]})[:3],
            "same_site_failed": sum(r["failed"] for r in same_results),
            "files_per_table": files(fmt, root, 1), "reader": reads,
        }


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]))
        return
    if sys.argv[1:2] == ["--reader"]:
        reader(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=6)
    args = parser.parse_args()
    for fmt in ("delta", "iceberg"):
        print(json.dumps(measure(fmt, args)), flush=True)


if __name__ == "__main__":
    main()
