"""Model vs. baselines: the evaluate job's tables on generated data (with the generator's oracle
AUCs) and on the public Taobao sample, as Markdown for BENCHMARKS.md.

Generated data: a canonical-format world (impressions, so real negatives) is generated,
ingested and featurised once under --work; the train job trains the model of --model-config on
ds D-window..D-2 (validating on D-1), then evaluate scores D with every baseline and the gate
decides. The oracle rows come from the generator's truth on the same rows (see oracle_aucs):
click, the day-level probability of a click over the pair's impressions that day, and its
taste + popularity part alone; purchase_cvr, the true purchase probability of the clicked
impression; repurchase_7d, the true repurchase probability.

Taobao sample (../shared/data): ingested, featurised for every day, trained on the early days,
evaluated on the last one (its 7-day repurchase labels are not observed: no repurchase rows).

    .venv/bin/python benchmarks/evaluate.py --part generator taobao
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import click_bound  # noqa: E402  (benchmarks/, this script's folder)
import pandas as pd  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from mtl import metric_functions as M  # noqa: E402
from mtl.config import load_config  # noqa: E402
from mtl.errors import JobError  # noqa: E402
from mtl.evaluate.job import EvaluationResult, run_evaluate  # noqa: E402
from mtl.evaluate.model_metrics import BINARY_TASKS, MetricRow  # noqa: E402
from mtl.evaluate.publish import run_publish  # noqa: E402
from mtl.evaluate.report import KIND_ORDER  # noqa: E402
from mtl.features.job import build_features  # noqa: E402
from mtl.generate.job import run_generate  # noqa: E402
from mtl.generate.world import CLICK, build_world  # noqa: E402
from mtl.ingest.job import run_ingest  # noqa: E402
from mtl.spark import build_spark  # noqa: E402
from mtl.tables import TRAINING_EXAMPLES  # noqa: E402
from mtl.train.job import run_train  # noqa: E402

DAY = dt.timedelta(days=1)
SAMPLE = ROOT.parent / "shared" / "data" / "taobao_user_behavior_sample.csv"
ALL_BASELINES = (
    "evaluation.baselines=[popularity, category_popularity, als, logistic_regression, gbt, single_task, "
    "recency_frequency]"
)
MODEL = ROOT / "conf" / "models" / "mmoe_small.yaml"


def base_overrides(work: Path) -> list[str]:
    work.mkdir(parents=True, exist_ok=True)
    return [
        "spark.show_progress=false",
        "spark.log_level=ERROR",
        f"storage.warehouse={work / 'warehouse'}",
        f"model_config={MODEL}",
        ALL_BASELINES,
        "training.torch_threads=2",
    ]


def featurise(spark, cfg, days: list[dt.date], work: Path) -> None:
    for ds in days:
        marker = work / f"_features_{ds}"
        if not marker.exists():
            started = time.perf_counter()
            build_features(spark, cfg, ds)
            print(f"features {ds}: {time.perf_counter() - started:.0f} s", flush=True)
            marker.touch()


def train_evaluate_publish(spark, cfg, ds: dt.date) -> tuple[EvaluationResult, str]:
    started = time.perf_counter()
    trained = run_train(spark, cfg, ds, "full")
    print(
        f"trained version {trained.model_version} in {time.perf_counter() - started:.0f} s "
        f"({trained.train_rows:,} rows, ds {trained.train_days[0]}..{trained.train_days[1]})",
        flush=True,
    )
    started = time.perf_counter()
    result = run_evaluate(spark, cfg, ds, trained.model_version)
    print(f"evaluated in {time.perf_counter() - started:.0f} s; report {result.report_uri}", flush=True)
    try:
        run_publish(spark, cfg, ds, trained.model_version)
        gate = "published (the champion alias now points at it)"
    except JobError as exc:
        gate = f"refused: {exc}"
    return result, gate


# ---------------------------------------------------------------------------------------------


def generator_part(args) -> str:
    work = Path(args.work) / f"generator_{args.users}u_{args.items}i_{args.days}d_pop{args.popularity_exponent:g}"
    start = dt.date(2024, 3, 1)
    ds = start + (args.days - 7) * DAY  # the last day whose 7-day repurchase window is observed
    cfg = load_config(
        args.conf,
        base_overrides(work)
        + [
            "generator.output_format=canonical",
            f"generator.users={args.users}",
            f"generator.items={args.items}",
            f"generator.categories={args.categories}",
            f"generator.days={args.days}",
            f"generator.start_date={start}",
            f"generator.popularity_exponent={args.popularity_exponent}",
            f"generator.output={work / 'raw'}",
            "ingest.format=canonical",
            f"ingest.input={work / 'raw' / 'events'}",
            f"training.window_days={args.window}",
            *args.overrides,
        ],
    )
    spark = build_spark(cfg.spark)
    if not (work / "_INGESTED").exists():
        run_generate(spark, cfg)
        run_ingest(spark, cfg)
        (work / "_INGESTED").touch()
    featurise(spark, cfg, [ds - k * DAY for k in range(args.window, -1, -1)], work)
    result, gate = train_evaluate_publish(spark, cfg, ds)
    oracle = oracle_aucs(spark, cfg, work, ds, (ds - start).days)
    title = (
        f"Generated world: {args.users:,} users, {args.items:,} items, {args.categories} categories, "
        f"{args.days} days, popularity exponent {args.popularity_exponent:g} (canonical: real impressions); "
        f"trained on ds {ds - args.window * DAY}..{ds - 2 * DAY}, "
        f"validated on {ds - DAY}, evaluated on {ds}"
    )
    return tables(title, result, gate, oracle)


def oracle_aucs(spark, cfg, work: Path, ds: dt.date, day: int) -> dict[str, dict[str, float]]:
    """The generator's true probabilities scored like a model on the evaluated rows: per task,
    oracle name -> AUC.

    click has two oracles. The full one knows each impression's position and hour and how many
    impressions the pair got that day, none of which a model scoring (user, item) as of D can
    know. The taste one is the part a model can learn: the impression logit's taste and
    popularity terms (position and hour dropped), the same for every impression of the pair
    that day. repurchase_7d's truth covers the replenishment process only; at category level an
    organic purchase of another item of the category also counts as a repurchase, so the
    item-level rows are the exact oracle."""
    truth = work / "raw" / "truth"
    examples = spark.read.format("delta").load(TRAINING_EXAMPLES.path(cfg.storage)).where(F.col("ds") == F.lit(ds))
    taste = F.lit(CLICK.taste) * F.col("true_affinity") + F.lit(CLICK.popularity) * F.col("true_popularity")
    truth_impressions = spark.read.parquet(str(truth / "impressions"))
    impressions = (
        truth_impressions.where(F.col("day") == day)
        .groupBy("user_id", "item_id")
        .agg(
            (1 - F.exp(F.sum(F.log1p(-F.col("p_click"))))).alias("p_click"),
            F.max("p_purchase").alias("p_purchase"),
            F.avg(taste).alias("taste_logit"),
            F.avg("true_popularity").alias("true_popularity"),
        )
    )
    exposure = examples.where("row_kind = 'exposure'").join(impressions, ["user_id", "item_id"]).toPandas()
    # The bound of benchmarks/click_bound.py on these rows: users learned from their impressions
    # before D, everything else known.
    world = build_world(cfg.generator, "UTC")
    history = click_bound.from_truth(truth_impressions.where(F.col("day") < day).toPandas())
    users = click_bound.learned_user_vectors(
        history, world.item_vec, cfg.generator.users, click_bound.prior_var(cfg.generator)
    )
    exposure["learned_logit"] = click_bound.learned_logits(
        users,
        world.item_vec,
        click_bound.index_of(exposure["user_id"]),
        click_bound.index_of(exposure["item_id"]),
        exposure["true_popularity"],
    )
    clicked = exposure[(exposure["click"] == 1) & exposure["p_purchase"].notna()]
    repurchase = spark.read.parquet(str(truth / "repurchase")).where(F.col("day") == day)
    item_rows = examples.where("row_kind = 'repurchase_item' AND repurchase_7d IS NOT NULL").join(
        repurchase.where("level = 'item'").select("user_id", "item_id", "p_repurchase"), ["user_id", "item_id"]
    )
    category_rows = examples.where("row_kind = 'repurchase_category' AND repurchase_7d IS NOT NULL").join(
        repurchase.where("level = 'category'").select("user_id", "category_id", "p_repurchase"),
        ["user_id", "category_id"],
    )
    items = item_rows.select("repurchase_7d", "p_repurchase").toPandas()
    rebuy = pd.concat([items, category_rows.select("repurchase_7d", "p_repurchase").toPandas()])

    def auc(frame, label, score):
        return M.auc(frame[label].to_numpy(), frame[score].to_numpy())

    return {
        "click": {
            "oracle, full (knows position, hour, impressions)": auc(exposure, "click", "p_click"),
            "oracle, taste + popularity (what features can know)": auc(exposure, "click", "taste_logit"),
            "bound: users learned from their impressions before D, items known": auc(
                exposure, "click", "learned_logit"
            ),
        },
        "purchase_cvr": {"oracle (true probabilities)": auc(clicked, "purchase", "p_purchase")},
        "repurchase_7d": {
            "oracle, item and category rows (replenishment only)": auc(rebuy, "repurchase_7d", "p_repurchase"),
            "oracle, item rows (exact)": auc(items, "repurchase_7d", "p_repurchase"),
        },
    }


def taobao_part(args) -> str:
    work = Path(args.work) / "taobao_sample"
    ds = dt.date(2017, 12, 3)
    cfg = load_config(
        args.conf,
        base_overrides(work)
        + [
            f"ingest.input={SAMPLE}",
            "ingest.format=taobao_user_behavior",
            f"training.window_days={args.taobao_window}",
            *args.overrides,
        ],
    )
    spark = build_spark(cfg.spark)
    if not (work / "_INGESTED").exists():
        run_ingest(spark, cfg)
        (work / "_INGESTED").touch()
    featurise(spark, cfg, [ds - k * DAY for k in range(args.taobao_window, -1, -1)], work)
    result, gate = train_evaluate_publish(spark, cfg, ds)
    title = (
        f"Taobao UserBehavior sample ({SAMPLE.name}): trained on ds {ds - args.taobao_window * DAY}..{ds - 2 * DAY}, "
        f"validated on {ds - DAY}, evaluated on {ds}"
    )
    return tables(title, result, gate, {})


# ---------------------------------------------------------------------------------------------


def tables(title: str, result: EvaluationResult, gate: str, oracle: dict[str, dict[str, float]]) -> str:
    by = {(r.model_kind, r.task, r.metric, r.k): r for r in result.rows}
    kinds = [k for k in KIND_ORDER if any(r.model_kind == k for r in result.rows)]
    out = [f"### {title}", "", f"Model version {result.model_version}; quality gate: {gate}", ""]
    out += [f"- {note}" for note in result.notes]
    for task in BINARY_TASKS:
        present = [k for k in kinds if (k, task.name, "auc", None) in by]
        if not present:
            continue
        n = by[present[0], task.name, "auc", None].n_examples
        out += [
            "",
            f"**{task.name}** ({n:,} rows)",
            "",
            "| model | AUC | GAUC | log loss | calibration |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind in present:
            cells = [_fmt(by.get((kind, task.name, m, None))) for m in ("auc", "gauc", "log_loss", "calibration")]
            out.append(f"| {kind} | " + " | ".join(cells) + " |")
        for name, value in oracle.get(task.name, {}).items():
            out.append(f"| {name} | {value:.4f} | | | |")
    ranking = [k for k in kinds if (k, "retrieval", "recall", 20) in by]
    if ranking:
        ks = sorted({r.k for r in result.rows if r.task == "retrieval" and r.k})
        users = by[ranking[0], "retrieval", "recall", ks[0]].n_examples
        head = " | ".join(f"{m}@{k}" for m in ("Recall", "NDCG", "HitRate") for k in ks)
        out += [
            "",
            f"**retrieval** over the full catalogue ({users:,} users)",
            "",
            f"| model | {head} |",
            "|---|" + "---:|" * (3 * len(ks)),
        ]
        for kind in ranking:
            cells = [_fmt(by.get((kind, "retrieval", m, k))) for m in ("recall", "ndcg", "hit_rate") for k in ks]
            out.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _fmt(row: MetricRow | None) -> str:
    return "" if row is None or row.value is None else f"{row.value:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=("generator", "taobao"), default=["generator", "taobao"])
    parser.add_argument("--conf", default=str(ROOT / "conf" / "local.yaml"))
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "evaluate"))
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--popularity-exponent", type=float, default=1.0, help="generator.popularity_exponent")
    parser.add_argument("--window", type=int, default=7, help="training.window_days on generated data")
    parser.add_argument("--taobao-window", type=int, default=7, help="training.window_days on the Taobao sample")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sections = []
    for part in args.part:
        started = time.perf_counter()
        sections.append(generator_part(args) if part == "generator" else taobao_part(args))
        print(f"{part}: {time.perf_counter() - started:.0f} s", flush=True)
    print("\n" + "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
