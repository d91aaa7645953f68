"""Training throughput of the multi-task model on CPU: sparse tables + SparseAdam against dense
gradients + Adam over the same tables, side by side in one run.

Reference model: 20 id fields (10 user, 8 item, 2 pair), each with its own 100k-bucket table,
dim 16, 4 dense columns, MMoE with 4 experts of 64 units, towers of 32, 3 ranking tasks plus the
retrieval head, batch 2048. Training runs through mtl.train.Trainer (the production loop) over
batches already in memory, so the number is the model's and the optimisers' cost, not the
loader's. Repeats of the two variants alternate, so load from other processes on a shared
machine hits both alike; the median of the repeats is reported.

    .venv/bin/python benchmarks/model_train.py --repeats 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl.models import MultiTaskLoss, build_model, load_model_config  # noqa: E402
from mtl.models.embedding import dense_feature_stats  # noqa: E402
from mtl.models.model_config import ModelConfig  # noqa: E402
from mtl.schema import Field  # noqa: E402
from mtl.seeds import seed_everything  # noqa: E402
from mtl.train.trainer import Trainer  # noqa: E402

SIDES = ("user",) * 10 + ("item",) * 8 + ("pair",) * 2
TASKS = ("click", "purchase", "repurchase_7d")


def reference_fields() -> tuple[Field, ...]:
    names = ["item_hash" if i == 10 else f"f{i}_hash" for i in range(len(SIDES))]
    fields = [Field(name, "categorical", side, f"v{i}") for i, (name, side) in enumerate(zip(names, SIDES))]
    fields += [Field(f"d{i}", "dense", side) for i, side in enumerate(("user", "user", "item", "item"))]
    return tuple(fields)


def reference_config(buckets: int, batch_size: int, sparse: bool) -> ModelConfig:
    vocabs = ", ".join(f"v{i}: {buckets}" for i in range(len(SIDES)))
    return load_model_config(
        ROOT / "conf" / "models" / "mmoe.yaml",
        [
            "embedding.dim=16",
            f"embedding.buckets={{{vocabs}}}",
            f"embedding.sparse={str(sparse).lower()}",
            "architecture.experts=4",
            "architecture.expert_units=[64]",
            "architecture.tower_units=[32]",
            "tasks=[{label: click}, {label: purchase}, {label: repurchase_7d}]",
            f"trainer.batch_size={batch_size}",
            "trainer.epochs=1",
            "trainer.checkpoint_every_steps=0",
            "trainer.log_every_steps=1000000",
        ],
    )


def synthetic_batches(
    fields: tuple[Field, ...], rows: int, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """Zipf-distributed ids (a few hot ids, a long tail, as in real logs) hashed to int64."""
    rng = np.random.default_rng(seed)
    data: dict[str, torch.Tensor] = {}
    for salt, f in enumerate(f for f in fields if f.kind == "categorical"):
        ids = np.minimum(rng.zipf(1.2, rows), 10_000_000).astype(np.uint64)
        data[f.name] = torch.from_numpy(_splitmix64(ids + np.uint64(salt << 40)).view(np.int64))
    data["dense"] = torch.from_numpy(rng.lognormal(1.0, 1.5, (rows, 4)).astype(np.float32))
    click = rng.random(rows) < 0.3
    data["click"] = torch.from_numpy(click.astype(np.float32))
    data["purchase"] = torch.from_numpy((click & (rng.random(rows) < 0.3)).astype(np.float32))
    data["repurchase_7d"] = torch.from_numpy(
        np.where(rng.random(rows) < 0.4, rng.random(rows) < 0.2, -1).astype(np.float32)
    )
    return [{k: v[s : s + batch_size] for k, v in data.items()} for s in range(0, rows, batch_size)]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--buckets", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU (batches are copied per step)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    fields = reference_fields()
    batches = synthetic_batches(fields, args.steps * args.batch_size, args.batch_size, seed=0)
    stats = dense_feature_stats(torch.cat([b["dense"] for b in batches]))
    trainers = {}
    for variant, sparse in (("sparse", True), ("dense", False)):
        cfg = reference_config(args.buckets, args.batch_size, sparse)
        seed_everything(0)
        model = build_model(cfg, fields, stats)
        trainers[variant] = Trainer(model, MultiTaskLoss(cfg), cfg, progress=False, device=args.device)
        trainers[variant].fit(batches[:3])  # warm-up: allocator, optimiser state, first-call costs
    rows = args.steps * args.batch_size
    rates: dict[str, list[float]] = {v: [] for v in trainers}
    for repeat in range(args.repeats):
        for variant, trainer in trainers.items():
            start = time.perf_counter()
            trainer.fit(batches)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[variant].append(rows / (time.perf_counter() - start))
            print(f"repeat {repeat + 1}: {variant:6s} {rates[variant][-1]:>9,.0f} examples/s", flush=True)

    sparse, dense = statistics.median(rates["sparse"]), statistics.median(rates["dense"])
    params = sum(p.numel() for p in trainers["sparse"].model.parameters())
    command = "`.venv/bin/python benchmarks/model_train.py " + " ".join(sys.argv[1:]) + "`"
    machine = f"{os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__}, {args.threads} threads"
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name()} ({args.device}), torch {torch.__version__}"
    print(f"\nparameters: {params:,}; {args.repeats} repeats of {args.steps} steps of {args.batch_size} rows\n")
    print("| date | command | machine | sparse + SparseAdam (ex/s) | dense + Adam (ex/s) | ratio |")
    print("|---|---|---|---:|---:|---:|")
    print(
        f"| {dt.date.today().isoformat()} | {command} | {machine} "
        f"| {sparse:,.0f} | {dense:,.0f} | {sparse / dense:.1f}x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
