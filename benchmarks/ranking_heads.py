"""Model variants against the ranking baselines, over several training seeds: every ranking
task's AUC on the held-out ds (the ``model_metrics`` rows of the evaluate job) for each variant,
next to the logistic regression, the GBT and the single-task twins, plus each variant's list.

Run it on a warehouse the daily chain has built up to --ds (e.g. by ``make demo``). For each
variant and seed, the train job trains a full version for --ds with the variant's model-config
overrides and ``trainer.seed``; the evaluate job scores it with the configured baselines.

    .venv/bin/python benchmarks/ranking_heads.py --conf conf/demo.yaml --ds 2024-03-15 --seeds 42 7 123 \\
        --variant "default" --variant "per_task trainer.head_selection=per_task" \\
        --set 'evaluation.baselines=[logistic_regression, gbt]'
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

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from mtl.config import load_config  # noqa: E402
from mtl.evaluate.job import run_evaluate  # noqa: E402
from mtl.spark import build_spark  # noqa: E402
from mtl.train.job import run_train  # noqa: E402

MODEL = "multi_task"
LIST_COLUMNS = [("recall", 20), ("ndcg", 20)]


def nested(overrides: list[str]) -> dict:
    """``a.b=v`` overrides as the nested mapping a model YAML holds (values parsed as YAML)."""
    out: dict = {}
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", required=True)
    parser.add_argument("--ds", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 123])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='"NAME key=value ..." model-config overrides of one variant (repeat; default: the config as it is)',
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    variants = [v.split() for v in args.variant] or [["default"]]
    base = load_config(args.conf, ["spark.show_progress=false", "spark.log_level=ERROR", *args.overrides])
    spark = build_spark(base.spark)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mtl-variants-") as tmp:
        for name, *model_overrides in variants:
            for seed in args.seeds:
                started = time.perf_counter()
                model = Path(tmp) / f"{name}_seed{seed}.yaml"
                body = nested([*model_overrides, f"trainer.seed={seed}"])
                model.write_text(yaml.safe_dump({"extends": str(Path(base.model_config).resolve()), **body}))
                cfg = load_config(args.conf, [*args.overrides, "spark.show_progress=false", f"model_config={model}"])
                version = run_train(spark, cfg, args.ds, "full").model_version
                result = run_evaluate(spark, cfg, args.ds, version)
                rows += [dict(r.__dict__, seed=seed, variant=name) for r in result.rows]
                aucs = {r.task: r.value for r in result.rows if r.model_kind == MODEL and r.metric == "auc"}
                print(
                    f"{name} seed {seed}: version {version}, {time.perf_counter() - started:.0f} s, "
                    + ", ".join(f"{t} {v:.4f}" for t, v in aucs.items() if v is not None),
                    flush=True,
                )
    print(markdown(pd.DataFrame(rows), [v[0] for v in variants], args.seeds))
    return 0


def _cell(values: pd.Series, spread: bool) -> str:
    if not len(values):
        return ""
    if spread and len(values) > 1:
        return f"{values.mean():.4f} ({values.min():.4f}..{values.max():.4f})"
    return f"{values.mean():.4f}"


def markdown(frame: pd.DataFrame, variants: list[str], seeds: list[int]) -> str:
    auc = frame[(frame.metric == "auc") & frame.value.notna()]
    tasks = [t for t in auc[auc.model_kind == MODEL].task.unique()]
    baselines = sorted(set(auc.model_kind) - {MODEL, "champion"})
    out = [f"AUC on the held-out ds; the model's mean (min..max) over seeds {seeds}", ""]
    out += ["| task | " + " | ".join(variants + baselines) + " |", "|---|" + "---:|" * (len(variants) + len(baselines))]
    for task in tasks:
        cells = []
        for name in variants:
            mine = auc[(auc.variant == name) & (auc.model_kind == MODEL) & (auc.task == task)]
            cells.append(_cell(mine.groupby("seed").value.first(), True))
        for kind in baselines:
            theirs = auc[(auc.model_kind == kind) & (auc.task == task)]
            # single-task twins are trained with each seed; the tabular baselines do not depend on it
            cells.append(_cell(theirs.groupby("seed").value.first(), True))
        out.append(f"| {task} | " + " | ".join(cells) + " |")
    lists = frame[(frame.task == "recommendations") & (frame.model_kind == MODEL)]
    out += ["", "| variant | " + " | ".join(f"list {m}@{k}" for m, k in LIST_COLUMNS) + " |", "|---|---:|---:|"]
    for name in variants:
        cells = []
        for metric, k in LIST_COLUMNS:
            mine = lists[(lists.variant == name) & (lists.metric == metric) & (lists.k == k)]
            cells.append(_cell(mine.groupby("seed").value.first(), True))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
