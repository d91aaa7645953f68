"""build_features time for one ds at several history sizes, and the Spark plan checks.

Each size is generated once (canonical format, so impressions too), ingested into its own
warehouse (both kept under --work and reused by later runs), then one ds, the last generated
day, is built --repeats times; the median is reported. The plan checks look at the physical
plans of every output: no Cartesian product or nested-loop join, no Python UDF, and how many
times ``events`` is scanned.

    .venv/bin/python benchmarks/features.py --users 5000 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import print_summary, size_result  # noqa: E402

from mtl.config import load_config  # noqa: E402
from mtl.features.job import build_features, compute  # noqa: E402
from mtl.generate.job import run_generate  # noqa: E402
from mtl.ingest.job import run_ingest  # noqa: E402
from mtl.spark import build_spark  # noqa: E402
from mtl.tables import EVENTS  # noqa: E402

FORBIDDEN = ("CartesianProduct", "BroadcastNestedLoopJoin", "BatchEvalPython", "ArrowEvalPython", "PythonUDF")


def prepare(args, users: int):
    """Config of a warehouse holding the events of ``users`` generated users (made once)."""
    work = Path(args.work) / f"users_{users}"
    overrides = [
        "spark.show_progress=false",
        "spark.log_level=ERROR",
        "generator.output_format=canonical",
        f"generator.days={args.days}",
        f"generator.items={args.items}",
        f"generator.categories={args.categories}",
        f"generator.users={users}",
        f"generator.output={work / 'raw'}",
        f"storage.warehouse={work / 'warehouse'}",
        "ingest.format=canonical",
        f"ingest.input={work / 'raw' / 'events'}",
        *args.overrides,
    ]
    cfg = load_config(args.conf, overrides)
    done = work / "_READY"
    if not done.exists():
        spark = build_spark(cfg.spark)
        print(f"users={users:,}: generating and ingesting (once)", flush=True)
        run_generate(spark, cfg)
        run_ingest(spark, cfg)
        done.touch()
    return cfg


def plan_checks(spark, cfg, ds: dt.date) -> dict:
    """Physical-plan facts over every output of one ds (built, not written)."""
    # Plans abbreviate file locations to 100 characters by default: the events path must show whole.
    spark.conf.set("spark.sql.maxMetadataStringLength", "10000")
    events = spark.read.format("delta").load(EVENTS.path(cfg.storage))
    observed = events.agg({"event_date": "max"}).first()[0]
    frames = compute(events, ds, observed, cfg)
    plans = {
        name: getattr(frames, name)._jdf.queryExecution().executedPlan().toString()
        for name in ("users", "items", "user_categories", "examples")
    }
    spark.catalog.clearCache()
    text = "\n".join(plans.values())
    events_dir = EVENTS.path(cfg.storage)
    # Each distinct events scan (by its partition filter) counted once: cached intermediates
    # show up inside several outputs' plans but are computed once.
    scans = set()
    for line in text.splitlines():
        if "Scan parquet" in line and events_dir in line:
            filters = re.search(r"PartitionFilters: \[([^\]]*)\]", line)
            scans.add(filters.group(1) if filters else line)
    return {
        "forbidden_operators": sorted({op for op in FORBIDDEN if op in text}),
        "distinct_events_scans": len(scans),
        "events_scan_partition_filters": sorted(scans),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--categories", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conf", default=str(ROOT / "conf" / "local.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "features"))
    args = parser.parse_args()

    results, checks = [], {}
    for users in args.users:
        cfg = prepare(args, users)
        spark = build_spark(cfg.spark)
        events = spark.read.format("delta").load(EVENTS.path(cfg.storage))
        n_events = events.count()
        ds = events.agg({"event_date": "max"}).first()[0]
        seconds = []
        for attempt in range(args.repeats):
            start = time.perf_counter()
            result = build_features(spark, cfg, ds)
            seconds.append(time.perf_counter() - start)
            print(
                f"users={users:,} events={n_events:,} ds={ds} attempt={attempt + 1}: {seconds[-1]:.1f}s {result.rows}",
                flush=True,
            )
        results.append(size_result(n_events, seconds, users=users, output_rows=result.rows))
        checks[users] = plan_checks(spark, cfg, ds)
        print(f"plan checks: {checks[users]}", flush=True)

    print_summary(
        results, plan_checks=checks, spark_master=cfg.spark.master, shuffle_partitions=cfg.spark.shuffle_partitions
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
