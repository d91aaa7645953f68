"""The cost curve of one day of the chain as the data grows (issue #19): generated worlds of about
--events events each, one ds of mtl-pipeline's chain (ingest .. monitor, the training window's
feature days included) on local[2], per step wall time, the peak memory of the driver's Python
and of its JVM (in local mode the executors live in that JVM), and the rows each step wrote.

    .venv/bin/python benchmarks/cost_curve.py --events 1e6 3e6 10e6 30e6 [--work benchmarks/out/cost_curve]

A world of N events has N / EVENTS_PER_USER users over --days days (the generator's rate with the
defaults below, measured on the features benchmark's worlds) and --items items. Each world is
generated once under --work and reused; the ratio of the step times is printed for every
pair of sizes 10x apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl.cli.pipeline import run_day  # noqa: E402
from mtl.config import load_config  # noqa: E402
from mtl.spark import build_spark  # noqa: E402

# Events per generated user over 28 days with the generator's defaults (963,268 events of 5,000
# users in the features benchmark).
EVENTS_PER_USER_28D = 192.7


class PeakMemory:
    """Samples the resident memory of this process (the driver's Python, its Python workers) and
    of its JVM children every 0.2 s; ``take()`` returns the peaks since the last take, in MB."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._peaks = {"python": 0.0, "jvm": 0.0}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            python, jvm = self._me.memory_info().rss, 0
            for child in self._me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    if "java" in child.name():
                        jvm += rss
                    else:
                        python += rss
                except psutil.Error:
                    continue
            with self._lock:
                self._peaks["python"] = max(self._peaks["python"], python / 2**20)
                self._peaks["jvm"] = max(self._peaks["jvm"], jvm / 2**20)
            time.sleep(0.2)

    def take(self) -> dict[str, float]:
        with self._lock:
            peaks, self._peaks = dict(self._peaks), {"python": 0.0, "jvm": 0.0}
        return peaks


def table_rows(spark, warehouse: Path, ds: dt.date) -> dict[str, int]:
    """Rows of ds in every ds-partitioned table of the warehouse (events: every row)."""
    out = {}
    for log in sorted(warehouse.glob("*/_delta_log")):
        table = spark.read.format("delta").load(str(log.parent))
        if "ds" in table.columns:
            out[log.parent.name] = table.where(table.ds == ds.isoformat()).count()
        elif log.parent.name == "events":
            out["events"] = table.count()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=float, nargs="+", default=[1e6, 3e6, 10e6, 30e6])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--conf", default=str(ROOT / "conf" / "local.yaml"))
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "cost_curve"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    results = []
    for events in args.events:
        users = max(100, round(events / (EVENTS_PER_USER_28D * args.days / 28)))
        work = Path(args.work) / f"events_{int(events)}"
        start_date = dt.date(2024, 1, 1)
        ds = start_date + dt.timedelta(days=args.days - 8)  # a week of labels after ds
        cfg = load_config(
            args.conf,
            [
                "spark.show_progress=false",
                "spark.log_level=ERROR",
                f"storage.warehouse={work / 'warehouse'}",
                f"generator.output={work / 'raw'}",
                "generator.output_format=canonical",
                f"generator.users={users}",
                f"generator.items={args.items}",
                f"generator.days={args.days}",
                f"generator.start_date={start_date}",
                "ingest.format=canonical",
                f"ingest.input={work / 'raw' / 'events'}",
                "pipeline.full_retrain_weekday=null",
                # The chain's cost, not its quality: the gate publishes whatever trained, so the
                # day is scored (a refused first model ends the chain at publish).
                "gate.metrics=[{task: click, metric: auc, floor: 0.0}]",
                *args.overrides,
            ],
        )
        if (ds - start_date).days <= cfg.training.window_days:
            parser.error(f"--days {args.days}: ds {ds} leaves less than training.window_days of history before it")
        spark = build_spark(cfg.spark)
        if not (work / "raw" / "_GENERATED").exists():
            from mtl.generate.job import run_generate

            print(f"{events:,.0f} events: generating {users:,} users x {args.days} days (once)", flush=True)
            run_generate(spark, cfg)
            (work / "raw" / "_GENERATED").touch()
        memory = PeakMemory()
        print(f"{events:,.0f} events: the chain for ds {ds} ...", flush=True)
        report = run_day(spark, cfg, ds)
        peaks = memory.take()
        rows = table_rows(spark, Path(cfg.storage.warehouse), ds)
        results.append(
            {"events_target": events, "users": users, "seconds": report.seconds, "peak_mb": peaks, "rows": rows}
        )
        print(json.dumps(results[-1], default=str), flush=True)
        spark.stop()

    steps = list(results[0]["seconds"])
    print("\n| step | " + " | ".join(f"{r['rows'].get('events', 0):,} events (s)" for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for step in steps:
        print(f"| {step} | " + " | ".join(f"{r['seconds'].get(step, 0):.1f}" for r in results) + " |")
    print(
        "| peak Python / JVM MB | "
        + " | ".join(f"{r['peak_mb']['python']:,.0f} / {r['peak_mb']['jvm']:,.0f}" for r in results)
        + " |"
    )
    # The bound: at most 12x the time for 10x the events (e.g. 30M against 3M).
    for big in results:
        for small in results:
            if abs(big["events_target"] / small["events_target"] - 10) < 0.5:
                ratios = ", ".join(f"{s} {big['seconds'][s] / max(small['seconds'][s], 1e-9):.1f}" for s in steps)
                print(f"t({big['events_target']:,.0f}) / t({small['events_target']:,.0f}): {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
