"""The whole score job on each scoring runtime, side by side in one process: torch, ONNX float and
ONNX int8 on the same synthetic tables and the same champion (benchmarks/score.py's world: U
users, N items, 20 history items and 70 candidates per user, conf/models/mmoe.yaml at production
size with random weights).

The champion is exported once (mtl-export), then every round runs ``run_score`` once per runtime,
the order rotated round by round so that a slow spell of the shared machine does not always fall
on the same runtime. Reported: each runtime's median job time, users/s and phases, and its ratio
to torch's median.

    .venv/bin/python benchmarks/score_runtimes.py --users 100000 --items 100000 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.score import DS, publish_random_model, write_tables  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--categories", type=int, default=1_000)
    parser.add_argument("--runtimes", default="torch,onnx,onnx_int8", help="comma-separated scoring.runtime values")
    parser.add_argument("--rounds", type=int, default=2, help="runs of the job per runtime (the median counts)")
    parser.add_argument("--conf", default=str(ROOT / "conf" / "local.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "score"))
    args = parser.parse_args()
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]

    from mtl.config import load_config
    from mtl.export.job import run_export, summarize
    from mtl.score import job
    from mtl.spark import build_spark

    work = Path(args.work) / f"u{args.users}_i{args.items}"
    cfg = load_config(
        args.conf,
        [
            "spark.show_progress=false",
            "spark.log_level=ERROR",
            f"storage.warehouse={work / 'warehouse'}",
            *args.overrides,
        ],
    )
    spark = build_spark(cfg.spark)
    if not (work / "_READY").exists():
        start = time.perf_counter()
        write_tables(spark, cfg, args.users, args.items, args.categories)
        publish_random_model(cfg)
        (work / "_READY").touch()
        print(f"synthetic tables and model written in {time.perf_counter() - start:.0f}s", flush=True)
    if any(r != "torch" for r in runtimes):
        print(summarize(run_export(cfg)), flush=True)

    runs: dict[str, list[dict]] = {r: [] for r in runtimes}
    for round_ in range(args.rounds):
        order = runtimes[round_ % len(runtimes) :] + runtimes[: round_ % len(runtimes)]
        for runtime in order:
            cfg_r = dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, runtime=runtime))
            start = time.perf_counter()
            result = job.run_score(spark, cfg_r, DS)
            seconds = time.perf_counter() - start
            run = {"round": round_, "runtime": runtime, "seconds": seconds, "phases_s": result.seconds}
            run["rows"], run["users_per_s"] = result.rows, result.active_users / seconds
            runs[runtime].append(run)
            print(json.dumps(run), flush=True)
    spark.stop()

    medians = {r: statistics.median(x["seconds"] for x in rs) for r, rs in runs.items()}
    base = medians.get("torch", next(iter(medians.values())))
    summary = {
        "date": dt.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "users": args.users,
        "items": args.items,
        "spark_master": cfg.spark.master,
        "runs": runs,
        "median_s": medians,
        "speed_vs_torch": {r: base / s for r, s in medians.items()},
    }
    print(json.dumps(summary, indent=2))
    print("\n| runtime | median job | users/s | x torch (speed) | seconds of each round |")
    print("|---|---:|---:|---:|---|")
    for r, rs in runs.items():
        users_per_s = statistics.median(x["users_per_s"] for x in rs)
        each = ", ".join(f"{x['seconds']:.0f}" for x in rs)
        print(f"| {r} | {medians[r]:.1f} s | {users_per_s:.1f} | {base / medians[r]:.2f} | {each} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
