"""Training input pipeline and workers: is the Petastorm loader ever the bottleneck, and what do
1 and 2 Horovod (Gloo) workers give on this machine?

On a real Delta training_examples table (copied from --warehouse, or from a small generated world
when none is given), in one process, alternating, medians of --repeats:

1. reader alone: ``ExampleBatches`` (Petastorm) over the snapshot's files of the training days,
   batches of the reference config's size, as the train job reads them (rows/s);
2. reader + training: ``Trainer`` fitting the reference model (conf/models/mmoe.yaml on the
   feature contract) from those batches (rows/s; also the time spent waiting for batches);
3. in-memory training: the same model on the same rows, batches made once by
   ``in_memory_batches`` and kept in a list (rows/s);
0. the model-library benchmark's model (benchmarks/model_train.py, synthetic in-memory batches),
   the step rate the 2x loader target refers to, measured in the same run.

Then the train job end to end under ``horovodrun -np N --gloo`` for each --workers N (alternating
over --job-repeats), with its own timings (the chief's logged train/examples_per_s, read back from
MLflow) and the phases of its log; and the same training loop under ``horovodrun`` in this script,
timing every step's parts (batch wait, forward, backward, waiting for the gradient
allreduce/allgather, optimiser step) on every rank.

The warehouse under --work holds --train-days + 1 days of training_examples: copies of the
source's last day relabelled to consecutive days (so the job has a window and a validation day),
written through Delta with the source's file count per day; the source table is only read.

    .venv/bin/python benchmarks/train_loader.py --warehouse benchmarks/out/features/users_50000/warehouse
    .venv/bin/python benchmarks/train_loader.py ... --set training.torch_threads=1   # 1 torch thread per rank
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent
DEFAULT_WORK = ROOT / "benchmarks" / "out" / "train_loader"
# The bench model: the reference model, one epoch, examples/s logged every 10 steps, no mid-epoch checkpoints.
BENCH_MODEL = """\
extends: {base}
trainer: {{epochs: 1, checkpoint_every_steps: 0, log_every_steps: 10}}
"""


# ---------------------------------------------------------------------------------------------
# data: a warehouse of training_examples days and the plan of the train job over it


def base_overrides(args, work: Path) -> list[str]:
    model = work / "bench_model.yaml"
    work.mkdir(parents=True, exist_ok=True)
    model.write_text(BENCH_MODEL.format(base=ROOT / "conf" / "models" / "mmoe.yaml"))
    return [
        "spark.show_progress=false",
        "spark.log_level=ERROR",
        f"storage.warehouse={work / 'warehouse'}",
        f"model_config={model}",
        f"training.window_days={args.train_days + 1}",
        "training.launcher=horovodrun",
        *args.overrides,
    ]


def source_warehouse(args, spark) -> Path:
    if args.warehouse:
        return Path(args.warehouse).resolve()
    from tests.support.worlds import START, build_world, world_config

    root = Path(args.work).resolve() / "generated"
    print(f"no --warehouse: generating a world of {args.gen_users} users under {root} (once)", flush=True)
    cfg = world_config(root, users=args.gen_users)
    build_world(spark, cfg, [START + dt.timedelta(days=7)])
    return root / "warehouse"


def prepare(args, spark, cfg) -> tuple[dt.date, dict[str, Any]]:
    """Copy the source's last training_examples day (and its feature_stats) into the bench
    warehouse as --train-days + 1 consecutive days; returns the job's --ds and what was copied."""
    from pyspark.sql import functions as F

    from mtl import delta_io
    from mtl.data.snapshot import snapshot_files
    from mtl.tables import FEATURE_STATS, TRAINING_EXAMPLES

    source = source_warehouse(args, spark)
    src_examples = str(source / TRAINING_EXAMPLES.name)
    last = spark.read.format("delta").load(src_examples).agg(F.max("ds")).first()[0]
    if last is None:
        raise SystemExit(f"{src_examples} has no rows")
    src = snapshot_files(spark, src_examples, last, last)
    days = [last - dt.timedelta(days=args.train_days - 1 - k) for k in range(args.train_days + 1)]
    facts = {
        "source": str(source),
        "source_ds": last.isoformat(),
        "source_rows": src.rows,
        "source_files": len(src.files),
        "days": [d.isoformat() for d in days],
    }
    warehouse = Path(cfg.storage.warehouse)
    marker = warehouse / "_PREPARED.json"
    if marker.exists() and json.loads(marker.read_text()) == facts:
        print(f"reusing {warehouse}", flush=True)
    else:
        shutil.rmtree(warehouse, ignore_errors=True)
        print(
            f"copying {src.rows:,} rows of ds {last} ({len(src.files)} files) to ds {days[0]}..{days[-1]} "
            f"under {warehouse}",
            flush=True,
        )
        rows = spark.read.format("delta").load(src_examples).where(F.col("ds") == F.lit(last))
        for day in days:
            delta_io.replace_partition(
                spark,
                rows.withColumn("ds", F.lit(day)).repartition(len(src.files)),
                TRAINING_EXAMPLES,
                TRAINING_EXAMPLES.path(cfg.storage),
                day,
            )
        stats = spark.read.format("delta").load(str(source / FEATURE_STATS.name)).where(F.col("ds") == F.lit(last))
        delta_io.replace_partition(spark, stats, FEATURE_STATS, FEATURE_STATS.path(cfg.storage), last)
        marker.write_text(json.dumps(facts))
    return days[-1] + dt.timedelta(days=1), facts


# ---------------------------------------------------------------------------------------------
# 1-3 (and 0): in this process


class Waits:
    """Wraps a batch iterator and adds up the time spent waiting for the next batch."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.first = None  # the wait for the first batch: the reader's start and its first shuffle block

    def wrap(self, batches: Iterable) -> Iterator:
        it = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            if self.first is None:
                self.first = self.seconds
            yield batch


def in_process(args, plan) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import torch
    from model_train import reference_config, reference_fields, synthetic_batches

    from mtl.config import parse_typed
    from mtl.data.batch import in_memory_batches, input_columns
    from mtl.data.loader import ExampleBatches
    from mtl.models import MultiTaskLoss, build_model
    from mtl.models.embedding import dense_feature_stats
    from mtl.models.model_config import ModelConfig
    from mtl.schema import model_fields
    from mtl.seeds import seed_everything
    from mtl.train.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg = parse_typed(ModelConfig, plan.model_config)
    bs = model_cfg.trainer.batch_size
    seed = model_cfg.trainer.seed
    rows = plan.train_rows

    def reader(prepare_ahead: bool = True) -> ExampleBatches:
        return ExampleBatches(
            plan.train_files, bs, seed=seed, workers_count=plan.reader_workers, prepare_ahead=prepare_ahead
        )

    def trainer() -> Trainer:
        seed_everything(seed)
        model = build_model(model_cfg, model_fields(), plan.feature_stats)
        return Trainer(model, MultiTaskLoss(model_cfg), model_cfg, progress=False)

    start = time.perf_counter()
    paths = [re.sub(r"^file:(//)?", "", f) for f in plan.train_files]
    frame = pq.read_table(paths, columns=input_columns()).to_pandas()
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    memory = list(in_memory_batches(frame, bs, shuffle=True, seed=seed))
    convert_s = time.perf_counter() - start
    assert sum(len(b["click"]) for b in memory) == rows == len(frame), (rows, len(frame))
    del frame
    print(
        f"in memory: {rows:,} rows read by pyarrow in {read_s:.1f} s, converted to {len(memory)} batches "
        f"in {convert_s:.1f} s",
        flush=True,
    )

    # 0: the model of benchmarks/model_train.py (sparse + SparseAdam), the model-library benchmark.
    ref_fields = reference_fields()
    ref_batches = synthetic_batches(ref_fields, 20 * 2048, 2048, seed=0)
    ref_cfg = reference_config(100_000, 2048, sparse=True)
    seed_everything(0)
    ref = Trainer(
        build_model(ref_cfg, ref_fields, dense_feature_stats(torch.cat([b["dense"] for b in ref_batches]))),
        MultiTaskLoss(ref_cfg),
        ref_cfg,
        progress=False,
    )

    streamed, in_mem = trainer(), trainer()
    # Warm-up: allocator, optimiser state, Petastorm and pyarrow first-call costs.
    ref.fit(ref_batches[:3])
    in_mem.fit(memory[:3])
    with reader() as warm:
        streamed.fit(lambda e: itertools.islice(warm.epoch(e), 3))

    rates: dict[str, list[float]] = {
        k: [] for k in ("model_library", "reader", "reader_train", "reader_train_inline", "in_memory")
    }
    waits: list[float] = []
    firsts: list[float] = []
    for repeat in range(args.repeats):
        t = time.perf_counter()
        ref.fit(ref_batches)
        rates["model_library"].append(20 * 2048 / (time.perf_counter() - t))

        n = 0
        with reader() as batches:
            t = time.perf_counter()
            for batch in batches.epoch(0):
                n += batch["click"].shape[0]
            rates["reader"].append(n / (time.perf_counter() - t))
        assert n == rows, (n, rows)

        w = Waits()
        with reader() as batches:
            t = time.perf_counter()
            streamed.fit(lambda e, w=w: w.wrap(batches.epoch(e)))
            seconds = time.perf_counter() - t
        rates["reader_train"].append(rows / seconds)
        waits.append(w.seconds / seconds)
        firsts.append(w.first / seconds)

        # The same with row groups converted and shuffled on the training thread (no prefetch).
        with reader(prepare_ahead=False) as batches:
            t = time.perf_counter()
            streamed.fit(batches.epoch)
            rates["reader_train_inline"].append(rows / (time.perf_counter() - t))

        t = time.perf_counter()
        in_mem.fit(memory)
        rates["in_memory"].append(rows / (time.perf_counter() - t))
        print(
            f"repeat {repeat + 1}: "
            + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
            + f" rows/s; batch wait {waits[-1]:.0%} of reader + training (first batch {firsts[-1]:.0%})",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "rows": rows,
        "batch_size": bs,
        "files": len(plan.train_files),
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "pyarrow_read_s": read_s,
        "in_memory_convert_s": convert_s,
        "rates": rates,
        "median": med,
        "batch_wait_share": statistics.median(waits),
        "first_batch_wait_share": statistics.median(firsts),
        "reader_train_over_in_memory": med["reader_train"] / med["in_memory"],
        "inline_over_in_memory": med["reader_train_inline"] / med["in_memory"],
        "reader_over_in_memory": med["reader"] / med["in_memory"],
        "reader_over_model_library": med["reader"] / med["model_library"],
    }


# ---------------------------------------------------------------------------------------------
# 4: horovodrun, the job and the timed loop


def horovodrun(n: int, command: list[str]) -> list[str]:
    return [
        str(VENV_BIN / "horovodrun"),
        "-np",
        str(n),
        "-H",
        f"localhost:{n}",
        "--gloo",
        "--start-timeout",
        "120",
        *command,
    ]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MTL_LOG_LEVEL": "INFO",
    }


# Job log lines: "[rank]<stderr>:HH:MM:SS INFO logger: message" (horovodrun prefixes the rank).
STAMP = re.compile(r"^\[0\]<std(?:out|err)>:(\d\d:\d\d:\d\d)(?:,(\d{3}))? INFO ")


def _stamp(text: str, pattern: str, day: dt.date) -> float | None:
    """When rank 0 logged its first line matching ``pattern`` (to the second)."""
    for line in text.splitlines():
        m = STAMP.search(line)
        if m and re.search(pattern, line):
            clock = dt.datetime.strptime(m.group(1), "%H:%M:%S").time()
            return dt.datetime.combine(day, clock).timestamp() + int(m.group(2) or 0) / 1000


def run_job(args, cfg, plan, overrides: list[str], n: int, label: str, logs: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from mtl import registry

    command = [str(VENV_BIN / "python"), str(ROOT / "jobs" / "train.py"), "--conf", str(args.conf), "--ds", plan.ds]
    for o in overrides + [f"training.checkpoint_dir=_ck_bench/{label}"]:
        command += ["--set", o]
    start = time.time()
    done = subprocess.run(horovodrun(n, command), env=env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.time() - start
    text = done.stdout + done.stderr
    (logs / f"job_{label}.log").write_text(text)
    if done.returncode != 0:
        raise SystemExit(f"train job with {n} worker(s) failed (log: {logs / f'job_{label}.log'}):\n{text[-3000:]}")
    day = dt.date.fromtimestamp(start)
    begin = _stamp(text, r"rank 0/\d+: \d+ steps per epoch", day)
    validated = _stamp(text, r"epoch 1: mean_auc", day)
    steps = int(re.search(r"rank 0/\d+: (\d+) steps per epoch", text).group(1))
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", text).group(1)
    history = MlflowClient(tracking_uri=registry.tracking_uri(cfg)).get_metric_history(run_id, "train_examples_per_s")
    # Each logged value is one window of log_every_steps steps on the chief: rows / seconds.
    window_rows = plan.model_config["trainer"]["log_every_steps"] * plan.model_config["trainer"]["batch_size"]
    logged_s = sum(window_rows / m.value for m in history)
    chief_rate = len(history) * window_rows / logged_s if history else float("nan")
    return {
        "workers": n,
        "wall_s": wall,
        "steps_per_rank": steps,
        "plan_s": begin - start if begin else None,
        "train_and_validate_s": validated - begin if begin and validated else None,
        "after_s": start + wall - validated if validated else None,
        "windows": [m.value for m in history],
        "chief_examples_per_s": chief_rate,
        "examples_per_s": chief_rate * n,
    }


def run_split(plan_path: Path, n: int, out: Path, logs: Path) -> dict[str, Any]:
    command = [str(VENV_BIN / "python"), str(Path(__file__).resolve()), "--split-worker", str(plan_path), str(out)]
    done = subprocess.run(horovodrun(n, command), env=env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    (logs / f"split_np{n}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"timed loop with {n} worker(s) failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(out.read_text())


def split_worker(plan_path: str, out_path: str) -> int:
    """Under horovodrun: train_worker's set-up and one epoch of its loop, every step's parts timed."""
    import torch

    from mtl.config import parse_typed
    from mtl.data.loader import ExampleBatches
    from mtl.models.losses import MultiTaskLoss
    from mtl.models.model import build_model
    from mtl.models.model_config import ModelConfig
    from mtl.schema import model_fields
    from mtl.seeds import epoch_seed, seed_everything
    from mtl.train.distributed import allgather_object, distribute, init_world
    from mtl.train.job import _scaled, _shard_epoch
    from mtl.train.trainer import build_optimizers

    plan = pickle.loads(Path(plan_path).read_bytes())
    world = init_world()
    if plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    model_cfg = parse_typed(ModelConfig, plan.model_config)
    if plan.scale_lr_with_workers and world.size > 1:
        model_cfg = _scaled(model_cfg, world.size)
    seed_everything(model_cfg.trainer.seed)
    model = build_model(model_cfg, model_fields(), plan.feature_stats)
    loss_fn = MultiTaskLoss(model_cfg)
    optimizers = build_optimizers(model, loss_fn, model_cfg.optimizer)
    if world.distributed:
        optimizers = distribute(model, loss_fn, optimizers, plan.sparse_as_dense)
    clipped = model.dense_parameters() + list(loss_fn.parameters())
    bs = model_cfg.trainer.batch_size
    steps = max(1, math.ceil(plan.train_rows / (world.size * bs)))
    shard = dict(shard=world.rank, num_shards=world.size) if world.distributed else {}
    train = ExampleBatches(
        plan.train_files, bs, seed=model_cfg.trainer.seed, workers_count=plan.reader_workers, **shard
    )
    seed_everything(epoch_seed(model_cfg.trainer.seed, 0))
    model.train()
    loss_fn.train()
    parts = dict.fromkeys(("batch_wait", "forward", "backward", "reduce_wait", "update"), 0.0)
    first_wait = None
    rows = 0
    batches = _shard_epoch(train, 0, steps)
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        loss = loss_fn(model(batch), batch)
        t2 = time.perf_counter()
        optimizers.zero_grad()
        loss.total.backward()  # Horovod's hooks start each gradient's allreduce/allgather here
        t3 = time.perf_counter()
        optimizers.synchronize()  # wait for the reductions still running
        t4 = time.perf_counter()
        if model_cfg.trainer.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(clipped, model_cfg.trainer.grad_clip_norm)
        optimizers.step()
        t5 = time.perf_counter()
        for k, a, b in (
            ("batch_wait", t0, t1),
            ("forward", t1, t2),
            ("backward", t2, t3),
            ("reduce_wait", t3, t4),
            ("update", t4, t5),
        ):
            parts[k] += b - a
        rows += batch["click"].shape[0]
        if first_wait is None:
            first_wait = t1 - t0
    total = time.perf_counter() - start
    batches.close()
    train.close()
    mine = {
        "rank": world.rank,
        "size": world.size,
        "steps": steps,
        "rows": rows,
        "total_s": total,
        "torch_threads": torch.get_num_threads(),
        "first_batch_wait": first_wait,
        **parts,
    }
    everyone = allgather_object(mine, world, "bench.split")
    if world.is_chief:
        Path(out_path).write_text(json.dumps(sorted(everyone, key=lambda r: r["rank"])))
    return 0


# ---------------------------------------------------------------------------------------------
# the report


def print_report(args, facts, loader, splits, jobs, load_before, load_after) -> None:
    from model_train import cpu_model

    m = loader["median"] if loader else {}
    print()
    print(
        f"date {dt.date.today()}; {os.cpu_count()} cores ({cpu_model()}); "
        f"load average before {load_before}, after {load_after}"
    )
    print(
        f"data: {facts['source_rows']:,} rows of ds {facts['source_ds']} from {facts['source']} "
        f"({facts['source_files']} files), as ds {facts['days'][0]}..{facts['days'][-1]}"
    )
    if loader:
        print(
            f"\ntraining days: {loader['rows']:,} rows in {loader['files']} files, batch {loader['batch_size']}, "
            f"torch threads {loader['torch_threads']}, medians of {loader['repeats']} repeats\n"
        )
        print("| measurement | rows/s (median) | all repeats |")
        print("|---|---:|---|")
        names = {
            "model_library": "0. model-library model (model_train.py), in memory",
            "reader": "1. reader alone (ExampleBatches, Petastorm)",
            "reader_train": "2. reader + training (mmoe.yaml)",
            "reader_train_inline": "2b. the same, row groups prepared on the training thread",
            "in_memory": "3. in-memory training (mmoe.yaml)",
        }
        for k, name in names.items():
            print(f"| {name} | {m[k]:,.0f} | {', '.join(f'{v:,.0f}' for v in loader['rates'][k])} |")
        print(
            f"\n(2)/(3) = {loader['reader_train_over_in_memory']:.0%} (target >= 80%), "
            f"(2b)/(3) = {loader['inline_over_in_memory']:.0%}; "
            f"(1)/(3) = {loader['reader_over_in_memory']:.1f}x, (1)/(0) = {loader['reader_over_model_library']:.1f}x "
            f"(target >= 2x); batch wait = {loader['batch_wait_share']:.0%} of (2), "
            f"{loader['first_batch_wait_share']:.0%} of (2) before the first batch"
        )
    if splits:
        print("\ntimed loop under horovodrun, one epoch (seconds per rank; share of the rank's loop):\n")
        print(
            "| workers | threads | rank | steps | rows | loop s | rows/s (all ranks) | batch wait (first) | forward "
            "| backward | reduce wait | update |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, ranks in splits.items():
            total_rows = sum(r["rows"] for r in ranks)
            slowest = max(r["total_s"] for r in ranks)
            for r in ranks:
                cells = [
                    f"{r[k]:.1f} ({r[k] / r['total_s']:.0%})"
                    for k in ("batch_wait", "forward", "backward", "reduce_wait", "update")
                ]
                cells[0] += f", first {r['first_batch_wait']:.1f}"
                print(
                    f"| {n} | {r['torch_threads']} | {r['rank']} | {r['steps']} | {r['rows']:,} | {r['total_s']:.1f} | "
                    f"{total_rows / slowest:,.0f} | {' | '.join(cells)} |"
                )
    if jobs:
        print("\ntrain job under horovodrun (examples/s: the chief's logged windows x workers):\n")
        print(
            "| workers | wall s | start + plan (Spark) s | train epoch + validate s | final validate + register s "
            "| examples/s |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for j in jobs:
            cells = " | ".join(
                "?" if j[k] is None else f"{j[k]:.0f}" for k in ("plan_s", "train_and_validate_s", "after_s")
            )
            print(f"| {j['workers']} | {j['wall_s']:.0f} | {cells} | {j['examples_per_s']:,.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--warehouse",
        help="a warehouse holding training_examples and feature_stats (only read); "
        "default: generate a small world under --work",
    )
    parser.add_argument("--work", default=str(DEFAULT_WORK), help=f"bench warehouse and logs (default {DEFAULT_WORK})")
    parser.add_argument("--train-days", type=int, default=1, help="training days (copies of the source day)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of 0-3, alternating")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="horovodrun -np values (none: skip 4)")
    parser.add_argument("--job-repeats", type=int, default=1, help="end-to-end train job runs per worker count")
    parser.add_argument("--no-job", action="store_true", help="skip the end-to-end train job runs")
    parser.add_argument("--no-loader", action="store_true", help="skip the in-process measurements 0-3")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in process (default: torch's)")
    parser.add_argument("--gen-users", type=int, default=2000, help="users of the generated world (no --warehouse)")
    parser.add_argument("--conf", default=str(ROOT / "conf" / "local.yaml"))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for planning and the job (e.g. training.torch_threads=1)",
    )
    parser.add_argument("--split-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.split_worker:
        return split_worker(*args.split_worker)

    from mtl.config import load_config
    from mtl.spark import build_spark
    from mtl.train.job import plan_training

    load_before = os.getloadavg()[0]
    work = Path(args.work).resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    overrides = base_overrides(args, work)
    cfg = load_config(args.conf, overrides)
    spark = build_spark(cfg.spark)
    ds, facts = prepare(args, spark, cfg)
    plan = plan_training(spark, cfg, ds, "full")
    spark.stop()
    print(
        f"job --ds {ds}: train {plan.train_days[0]}..{plan.train_days[1]} ({plan.train_rows:,} rows, "
        f"{len(plan.train_files)} files), validate {plan.val_day}",
        flush=True,
    )
    plan_path = work / "plan.pkl"
    plan_path.write_bytes(pickle.dumps(plan))

    loader = None if args.no_loader else in_process(args, plan)
    splits = {n: run_split(plan_path, n, work / f"split_np{n}.json", logs) for n in args.workers}
    for n, ranks in splits.items():
        print(
            f"timed loop, {n} worker(s): "
            + "; ".join(f"rank {r['rank']} {r['total_s']:.1f} s (reduce wait {r['reduce_wait']:.1f} s)" for r in ranks),
            flush=True,
        )
    jobs = []
    if not args.no_job:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for repeat in range(args.job_repeats):
            for n in args.workers:
                jobs.append(run_job(args, cfg, plan, overrides, n, f"{stamp}-np{n}-r{repeat}", logs))
                print(
                    f"job, {n} worker(s): wall {jobs[-1]['wall_s']:.1f} s, "
                    f"{jobs[-1]['examples_per_s']:,.0f} examples/s",
                    flush=True,
                )
        shutil.rmtree(Path(cfg.storage.warehouse) / "_ck_bench", ignore_errors=True)
    load_after = os.getloadavg()[0]
    result = {
        "facts": facts,
        "ds": ds.isoformat(),
        "loader": loader,
        "splits": splits,
        "jobs": jobs,
        "load_before": load_before,
        "load_after": load_after,
        "argv": sys.argv[1:],
    }
    (work / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print_report(args, facts, loader, splits, jobs, f"{load_before:.1f}", f"{load_after:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
