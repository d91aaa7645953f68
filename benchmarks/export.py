"""The exported model against the torch model, side by side in one run: artifact size, scoring
throughput and the change of every gated metric, for ONNX float, ONNX int8 and pruned tables.

1. Production size: conf/models/mmoe.yaml (16-dim embeddings, 200k user and item buckets, the
   candidate kind towers, a 32-dim two-tower head) over the feature contract (mtl.schema), with
   random weights: size and speed do not depend on the weight values. Pruning keeps the buckets
   that the ids of --users users, --items items and --categories categories hash into (what a
   training set of that many ids reaches). Throughput: rows/s of the ranking heads on batches of
   --rank-batch rows, of the user tower on --user-batch rows (scoring.users_per_batch) and of the
   item tower on --rank-batch rows, one intra-op thread (what one Spark task gets), the median of
   --repeats timed passes after a warm-up, the runtimes taking turns so load hits them alike.
2. Metrics: the small synthetic world of the tests (tests/support/model_data.py), mmoe trained on
   --train-rows rows; AUC of every task on --held-out-rows held-out rows and Recall@20 of the two
   towers over the whole catalogue for the items each held-out user clicked, of every variant
   against the float torch model on the same rows.

    .venv/bin/python benchmarks/export.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mtl.export.compress import pruned, quantise_int8, used_buckets  # noqa: E402
from mtl.export.graphs import ITEM_TOWER, RANKING, USER_TOWER, example_inputs, export_graphs, graph_specs  # noqa: E402
from mtl.export.job import read_export  # noqa: E402
from mtl.export.runtime import INT8_VARIANTS, OnnxModel  # noqa: E402
from mtl.models.model import build_model  # noqa: E402
from mtl.models.model_config import load_model_config  # noqa: E402
from mtl.schema import model_fields  # noqa: E402
from tests.support.export_models import HeldOut, gated_metrics, trained_model  # noqa: E402
from tests.support.model_data import World, random_hashes  # noqa: E402


def torch_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def variants(model, pruned_model, work: Path) -> dict:
    """Variant name -> (scoring model, artifact bytes)."""
    out = {"torch": (model, torch_bytes(model))}
    for name, source in (("onnx", model), ("onnx_pruned", pruned_model)):
        if source is None:
            continue
        export_graphs(source, work / name, {"model_version": "benchmark"})
        quantise_int8(work / name, work / INT8_VARIANTS[name])
        for variant in (name, INT8_VARIANTS[name]):
            exported = read_export(work / variant, variant)
            out[variant] = (OnnxModel(exported, 1), exported.size_bytes)
    return out


def throughput(runtimes: dict, model, args) -> dict:
    """Variant -> graph -> rows/s, median of the repeats; the variants take turns each repeat."""
    specs = {s.name: s for s in graph_specs(model)}
    rows = {RANKING: args.rank_batch, USER_TOWER: args.user_batch, ITEM_TOWER: args.rank_batch}
    batches = {
        g: specs[g].module.batch(example_inputs(model, specs[g].module.input_names, rows[g], seed=1)) for g in rows
    }
    calls = {RANKING: "predict_proba", USER_TOWER: "user_vectors", ITEM_TOWER: "item_vectors"}
    times: dict = {v: {g: [] for g in rows} for v in runtimes}
    passes = args.passes
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):  # the first is the warm-up
            for variant, (runtime, _) in runtimes.items():
                for graph, batch in batches.items():
                    call = getattr(runtime, calls[graph])
                    start = time.perf_counter()
                    for _ in range(passes):
                        call(batch)
                    if repeat:
                        times[variant][graph].append(time.perf_counter() - start)
    return {v: {g: rows[g] * passes / statistics.median(t) for g, t in graphs.items()} for v, graphs in times.items()}


def production(args, work: Path) -> dict:
    cfg = load_model_config(ROOT / "conf" / "models" / "mmoe.yaml", args.model_set)
    torch.manual_seed(0)
    model = build_model(cfg, model_fields(), None).eval()
    rng = np.random.default_rng(0)
    ids = {
        "user_hash": random_hashes(rng, args.users),
        "item_hash": random_hashes(rng, args.items),
        "category_hash": random_hashes(rng, args.categories),
    }
    keep = {vocab: b for vocab, b in used_buckets(model, [{k: torch.from_numpy(v) for k, v in ids.items()}]).items()}
    runtimes = variants(model, pruned(model, keep), work)
    speed = throughput(runtimes, model, args)
    return {
        "kept_rows": {vocab: int(len(b)) for vocab, b in keep.items()},
        "bytes": {v: size for v, (_, size) in runtimes.items()},
        "rows_per_s": speed,
    }


def metrics(args, work: Path) -> dict:
    world = World.create(seed=0)
    model, train, _ = trained_model(world, "mmoe", args.train_rows, args.epochs)
    runtimes = variants(model, pruned(model, used_buckets(model, [train])), work)
    held_out = HeldOut.sample(world, args.held_out_rows)
    values = {v: gated_metrics(runtime, world, held_out) for v, (runtime, _) in runtimes.items()}
    return {
        "bytes": {v: size for v, (_, size) in runtimes.items()},
        "metrics": values,
        "changes": {v: {k: m[k] - values["torch"][k] for k in m} for v, m in values.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--categories", type=int, default=1_000)
    parser.add_argument("--rank-batch", type=int, default=4096)
    parser.add_argument("--user-batch", type=int, default=512)
    parser.add_argument("--passes", type=int, default=5, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-rows", type=int, default=30_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--held-out-rows", type=int, default=30_000)
    parser.add_argument("--model-set", action="append", default=[], help="override of the production model YAML")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "export.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "torch": torch.__version__,
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="mtl-export-bench-") as tmp:
        start = time.perf_counter()
        out["production"] = production(args, Path(tmp) / "production")
        print(json.dumps(out["production"]), flush=True)
        out["world"] = metrics(args, Path(tmp) / "world")
        out["seconds"] = time.perf_counter() - start
    out["load_after"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["world"]), flush=True)
    print(report(out))
    return 0


def report(out: dict) -> str:
    p, w = out["production"], out["world"]
    base = p["bytes"]["torch"]
    lines = ["| variant | size (production) | x float torch | ranking rows/s | user tower rows/s | item tower rows/s |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for v, size in p["bytes"].items():
        speed = p["rows_per_s"].get(v)
        cells = [f"{speed[g]:,.0f}" for g in (RANKING, USER_TOWER, ITEM_TOWER)] if speed else ["-"] * 3
        lines.append(f"| {v} | {size / 1e6:.1f} MB | {size / base:.2f} | " + " | ".join(cells) + " |")
    keys = list(w["metrics"]["torch"])
    lines += ["", "| variant (small world) | size | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for v, m in w["metrics"].items():
        cells = [f"{m[k]:.4f}" if v == "torch" else f"{w['changes'][v][k]:+.4f}" for k in keys]
        lines.append(f"| {v} | {w['bytes'][v] / 1e3:.0f} kB | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
