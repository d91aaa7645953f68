"""Generator throughput: log rows written per second, at several sizes.

Sizes are given in users (28 days, 200k items, 1000 categories by default); each run writes
the raw log, side tables and ground truth, like `mtl-generate`. The median of the repeats is
reported. Example (the numbers in BENCHMARKS.md):

    .venv/bin/python benchmarks/generate.py --format canonical --users 5700 57000 --repeats 3
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
from mtl.generate.job import run_generate  # noqa: E402
from mtl.spark import build_spark  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[5_700, 57_000])
    parser.add_argument("--format", default="canonical", choices=["canonical", "taobao_user_behavior"])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--categories", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conf", default=str(ROOT / "conf" / "local.yaml"))
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "generated"))
    args = parser.parse_args()

    base = [
        "spark.show_progress=false",
        "spark.log_level=ERROR",
        f"generator.output_format={args.format}",
        f"generator.days={args.days}",
        f"generator.items={args.items}",
        f"generator.categories={args.categories}",
        f"generator.output={args.work}",
    ]
    spark = build_spark(load_config(args.conf, base).spark)
    results = []
    for users in args.users:
        cfg = load_config(args.conf, base + [f"generator.users={users}"])
        seconds, rows = [], 0
        for _attempt in range(args.repeats):
            shutil.rmtree(args.work, ignore_errors=True)
            start = time.perf_counter()
            rows = run_generate(spark, cfg).events
            seconds.append(time.perf_counter() - start)
            print(
                f"users={users:,}: {rows:,} rows in {seconds[-1]:.1f}s ({rows / seconds[-1]:,.0f} rows/s)", flush=True
            )
        results.append(size_result(rows, seconds, users=users))
    print_summary(results, format=args.format)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
