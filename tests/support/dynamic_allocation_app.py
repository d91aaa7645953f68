"""A driver for tests/test_cluster.py: counts the application's executors before, during and
after a wide stage, with `spark.dynamic_allocation` from config, and writes them as JSON.

    spark-submit ... dynamic_allocation_app.py CONF REPORT [KEY.PATH=VALUE ...]
"""

from __future__ import annotations

import json
import sys
import threading
import time


def executor_count(sc) -> int:
    """Executors the application holds now (the driver not counted), from the JVM's scheduler."""
    return sc._jsc.sc().getExecutorIds().size()


def main(conf: str, report: str, overrides: list[str]) -> None:
    from mtl.config import load_config
    from mtl.spark import build_spark

    spark = build_spark(load_config(conf, overrides).spark)
    sc = spark.sparkContext
    seen = {"before": executor_count(sc), "during": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen["during"] = max(seen["during"], executor_count(sc))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # A shuffle (so shuffle tracking is what must let the executors go) behind 8 slow tasks.
    slow = sc.parallelize(range(8), 8).map(lambda x: (time.sleep(3), (x % 2, x))[1])
    slow.reduceByKey(lambda a, b: a + b, 2).collect()
    stop.set()
    watcher.join()
    deadline = time.monotonic() + 60
    while executor_count(sc) and time.monotonic() < deadline:
        time.sleep(0.5)
    seen["after_idle"] = executor_count(sc)
    with open(report, "w") as out:
        json.dump(seen, out)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
