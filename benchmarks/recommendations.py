"""The published list against every baseline's list, over several training seeds: the
``recommendations`` and ``candidates`` rows of model_metrics, as Markdown for BENCHMARKS.md.

Run it on a warehouse the daily chain has built up to --ds (ingest and build_features done, e.g.
by ``make demo`` or ``mtl-pipeline run``): for each seed, the train job trains a full version
for --ds with ``trainer.seed`` set to that seed, and the evaluate job scores it with every
baseline on --ds. Baselines do not depend on the seed; the table gives the model's mean and
spread (min..max) over the seeds next to them.

    .venv/bin/python benchmarks/recommendations.py --conf conf/demo.yaml --ds 2024-03-15 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from mtl.config import load_config  # noqa: E402
from mtl.evaluate.job import run_evaluate  # noqa: E402
from mtl.spark import build_spark  # noqa: E402
from mtl.train.job import run_train  # noqa: E402

COLUMNS = [("recall", 20), ("ndcg", 20), ("hit_rate", 20), ("recall", 50), ("mrr", None)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", required=True)
    parser.add_argument("--ds", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    base = load_config(args.conf, ["spark.show_progress=false", "spark.log_level=ERROR", *args.overrides])
    spark = build_spark(base.spark)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mtl-seeds-") as tmp:
        for seed in args.seeds:
            model = Path(tmp) / f"model_seed{seed}.yaml"
            model.write_text(f"extends: {Path(base.model_config).resolve()}\ntrainer: {{seed: {seed}}}\n")
            cfg = load_config(args.conf, [*args.overrides, "spark.show_progress=false", f"model_config={model}"])
            version = run_train(spark, cfg, args.ds, "full").model_version
            result = run_evaluate(spark, cfg, args.ds, version)
            rows += [dict(r.__dict__, seed=seed) for r in result.rows if r.task in ("recommendations", "candidates")]
            print(
                f"seed {seed}: version {version}, gate {'passed' if result.decision.passed else 'refused'}", flush=True
            )
            for failure in result.decision.failures:
                print("  " + failure, flush=True)
    print(markdown(pd.DataFrame(rows), args.seeds))
    return 0


def markdown(frame: pd.DataFrame, seeds: list[int]) -> str:
    lists = frame[frame.task == "recommendations"]
    head = " | ".join(f"{m}@{k}" if k else m for m, k in COLUMNS)
    out = [f"| list | {head} |", "|---|" + "---:|" * len(COLUMNS)]
    kinds = ["multi_task"] + sorted(set(lists.model_kind) - {"multi_task", "champion"})
    for kind in kinds:
        cells = []
        for metric, k in COLUMNS:
            mine = lists[(lists.model_kind == kind) & (lists.metric == metric)]
            mine = mine[mine.k.isna()] if k is None else mine[mine.k == k]
            values = mine.groupby("seed").value.first()
            if kind == "multi_task" and len(values) > 1:
                cells.append(f"{values.mean():.4f} ({values.min():.4f}..{values.max():.4f})")
            else:
                cells.append(f"{values.mean():.4f}" if len(values) else "")
        label = f"multi_task, mean over seeds {seeds} (min..max)" if kind == "multi_task" else kind
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    pool = frame[(frame.task == "candidates") & (frame.seed == seeds[0])]
    out += ["", "| candidate source | recall | candidates per user |", "|---|---:|---:|"]
    for source, part in pool.groupby("model_kind", sort=False):
        values = dict(zip(part.metric, part.value))
        out.append(
            f"| {source} | {values.get('recall', float('nan')):.4f} | {values.get('per_user', float('nan')):.1f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
