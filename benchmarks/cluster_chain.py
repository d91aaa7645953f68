"""The daily chain for one ds on a Spark standalone cluster (a master and two one-core workers on
this machine, each step its own spark-submit, training with one Horovod rank per executor)
against the same chain on local[2] in one process (mtl-pipeline's run_day), on the same
generated world and config. Issue #19's target: the cluster chain within 2x the local one.

    .venv/bin/python benchmarks/cluster_chain.py [--users 300 --items 200 --days 12]

Per step seconds of both and of the same spark-submits on local[2], and the ratios. `make
package` (the full profile) is built first if it is not cached; it is unpacked once for both
workers, as a node image would hold it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl.cli.pipeline import run_day  # noqa: E402
from mtl.config import load_config  # noqa: E402
from mtl.spark import build_spark  # noqa: E402
from tests.conftest import LOCAL_CONF  # noqa: E402
from tests.support.cluster import StandaloneCluster, package, submit_chain  # noqa: E402
from tests.support.worlds import START, build_world, copy_world, world_overrides  # noqa: E402

SETTINGS = (
    "pipeline.full_retrain_weekday=null",
    "gate.metrics=[{task: click, metric: auc, floor: 0.5}]",
    "evaluation.baselines=[popularity]",
    "training.launcher=spark",
    "training.num_proc=2",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--days", type=int, default=12)
    parser.add_argument("--workdir", help="folder for the worlds and the cluster (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cluster_chain_"))
    ds = START + dt.timedelta(days=args.days - 4)
    size = {"users": args.users, "items": args.items, "days": args.days}

    local_root, cluster_root = work / "local", work / "cluster"
    local = load_config(LOCAL_CONF, world_overrides(local_root, *SETTINGS, **size))
    spark = build_spark(local.spark)
    build_world(spark, local, [ds - dt.timedelta(days=k) for k in (3, 2, 1)])
    copy_world(local_root, cluster_root)
    print(f"world: {size}, ds {ds}; local chain (local[2], one process) ...", flush=True)
    start = time.monotonic()
    report = run_day(spark, local, ds)
    local_total = time.monotonic() - start
    spark.stop()

    # The same chain of spark-submits on local[2]: what the DAG runs without a cluster, so the
    # cost of a JVM per step is apart from the cost of the cluster.
    submit_root = work / "submit_local"
    copy_world(cluster_root, submit_root)
    print("the same chain, one spark-submit per step on local[2] ...", flush=True)
    start = time.monotonic()
    submitted = submit_chain("local[2]", None, LOCAL_CONF, world_overrides(submit_root, *SETTINGS, **size), str(ds))
    submitted_total = time.monotonic() - start
    if submitted[-1].returncode != 0:
        print(f"{submitted[-1].name} failed on local[2]:\n{submitted[-1].output[-3000:]}")
        return 1

    shipment = package("full", work / "dist").unpack_once(work / "env")
    cluster = StandaloneCluster.start(work / "standalone", workers=2, cores=1, memory="1500m")
    try:
        print(f"cluster chain ({cluster.master_url}, 2 workers x 1 core, one spark-submit per step) ...", flush=True)
        start = time.monotonic()
        steps = submit_chain(cluster, shipment, LOCAL_CONF, world_overrides(cluster_root, *SETTINGS, **size), str(ds))
        cluster_total = time.monotonic() - start
    finally:
        cluster.stop()
    if steps[-1].returncode != 0:
        print(f"{steps[-1].name} failed on the cluster:\n{steps[-1].output[-3000:]}")
        return 1

    print("\n| step | local[2], one process (s) | local[2], a spark-submit per step (s) | cluster (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for step, local_step in zip(steps, submitted):
        here = report.seconds.get(step.name, 0.0)
        print(
            f"| {step.name} | {here:.1f} | {local_step.seconds:.1f} | {step.seconds:.1f} |"
            f" {step.seconds / local_step.seconds:.2f} |"
        )
    print(
        f"| **chain** | {local_total:.1f} | {submitted_total:.1f} | {cluster_total:.1f} |"
        f" {cluster_total / submitted_total:.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
