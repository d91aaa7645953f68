"""The fixed cost of one build_features day on a tiny log (what the test suite pays per day).

220 hand-made events (the point-in-time test's log), the tests' Spark settings, then N days built
one after the other in one process; prints each day's seconds. Extra config overrides compare
Spark or Delta settings side by side, e.g.

    .venv/bin/python benchmarks/features_fixed_cost.py
    .venv/bin/python benchmarks/features_fixed_cost.py --set "spark.extra.spark.sql.adaptive.enabled='false'"
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl.config import load_config  # noqa: E402
from mtl.features.job import build_features  # noqa: E402
from mtl.spark import build_spark  # noqa: E402
from tests.conftest import LOCAL_CONF, TEST_OVERRIDES  # noqa: E402
from tests.support.tables import write_events  # noqa: E402
from tests.test_features_pit import D, random_log  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    warehouse = Path(tempfile.mkdtemp(prefix="mtl-bench-")) / "warehouse"
    cfg = load_config(LOCAL_CONF, TEST_OVERRIDES + [f"storage.warehouse={warehouse}", *args.overrides])
    spark = build_spark(cfg.spark)
    write_events(spark, cfg, random_log(random.Random(5), D - dt.timedelta(days=20), 30, 220))
    for i in range(args.days):
        started = time.perf_counter()
        build_features(spark, cfg, D + dt.timedelta(days=i))
        print(f"day {i + 1}: {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
