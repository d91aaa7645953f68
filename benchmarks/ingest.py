"""Ingest throughput for the Taobao preset at several sizes.

Input: the public sample (../shared/data) repeated with user ids shifted per copy, so every
copy is a distinct set of events with the sample's mix of behaviours, dates and bad rows.
Each size is ingested into an empty warehouse several times; the median is reported.

    .venv/bin/python benchmarks/ingest.py --rows 1000000 10000000 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import print_summary, size_result  # noqa: E402

from mtl.config import load_config  # noqa: E402
from mtl.ingest.job import run_ingest  # noqa: E402
from mtl.spark import build_spark  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "taobao_user_behavior_sample.csv"
USER_ID_STRIDE = 10_000_000


def make_input(rows: int, out_dir: Path, files: int = 8) -> Path:
    """Write `rows` Taobao-format lines (as `files` CSV files) unless they already exist."""
    target = out_dir / f"taobao_{rows}"
    done = target / "_COMPLETE"
    if done.exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    lines = SAMPLE.read_text().splitlines()
    complete = [line.split(",", 1) for line in lines if line.count(",") == 4]
    handles = [open(target / f"part-{i:03d}.csv", "w") for i in range(files)]
    written, copy = 0, 0
    while written < rows:
        chunk = complete[: rows - written]
        shift = copy * USER_ID_STRIDE
        text = "".join(f"{int(user) + shift},{rest}\n" for user, rest in chunk)
        handles[copy % files].write(text)
        written += len(chunk)
        copy += 1
    for h in handles:
        h.close()
    done.touch()
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conf", default=str(ROOT / "conf" / "local.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out"))
    args = parser.parse_args()

    work = Path(args.work)
    warehouse = work / "warehouse"
    cfg = load_config(
        args.conf,
        ["spark.show_progress=false", "spark.log_level=ERROR", *args.overrides, f"storage.warehouse={warehouse}"],
    )
    spark = build_spark(cfg.spark)
    results = []
    for rows in args.rows:
        data = make_input(rows, work)
        seconds = []
        for attempt in range(args.repeats):
            shutil.rmtree(warehouse, ignore_errors=True)
            start = time.perf_counter()
            result = run_ingest(spark, cfg, str(data))
            seconds.append(time.perf_counter() - start)
            assert result.rows_read == rows, (result.rows_read, rows)
            print(
                f"rows={rows:,} attempt={attempt + 1}: {seconds[-1]:.1f}s "
                f"({rows / seconds[-1]:,.0f} rows/s; accepted {result.accepted:,}, "
                f"quarantined {result.quarantined:,})",
                flush=True,
            )
        results.append(size_result(rows, seconds))

    print_summary(results, spark_master=cfg.spark.master, shuffle_partitions=cfg.spark.shuffle_partitions)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
