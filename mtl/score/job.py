"""The score job: the published model -> ``daily_recommendations`` and ``repurchase_predictions``
for one ds.

1. Recommendations: the published version's list of ds (``mtl.recommend.lists``: the two-tower
   top-M and the candidates table, ranked by the multi-task heads, after the business filters).
2. Repurchase: the same heads on (user, item) and (user, category) pairs bought in the look-back.
3. Both outputs are written once to a staging folder, checked there, and only then each replaces
   its ds partition in one Delta transaction; a failed check or a failure before that leaves the
   published partitions as they were.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl import delta_io, registry
from mtl.config import Config
from mtl.export.job import load_export
from mtl.export.runtime import ExportedGraphs
from mtl.features.assemble import model_inputs
from mtl.recommend import lists
from mtl.recommend.lists import ListContext
from mtl.recommend.top_m import retrieval_flops
from mtl.registry import Artifact
from mtl.run_record import RunRecorder
from mtl.schema import REPURCHASE_HORIZONS_DAYS
from mtl.score.output_checks import CheckResult, check_recommendations, check_repurchase, raise_on_violations
from mtl.score.pseudonym import pseudonym_key, pseudonymised
from mtl.tables import DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS, TableSpec, warehouse_root

log = logging.getLogger(__name__)

REPURCHASE_TASKS = {f"repurchase_{n}d": f"p_repurchase_{n}d" for n in REPURCHASE_HORIZONS_DAYS}


@dataclass
class ScoreResult:
    ds: dt.date
    model_version: str
    active_users: int
    catalogue_items: int
    retrieval_flop: int
    rows: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def load_published(cfg: Config) -> Artifact:
    """The configured version (default: the champion)."""
    sc = cfg.scoring
    return registry.load_version(cfg, version=sc.model_version, alias=sc.model_alias)


def runtime_export(cfg: Config, artifact: Artifact) -> Optional[ExportedGraphs]:
    """The version's graphs that scoring.runtime asks for; None for the torch model."""
    runtime = cfg.scoring.runtime
    return None if runtime == "torch" else load_export(cfg, str(artifact.version), runtime)


def recommendations(ctx: ListContext, pool: DataFrame) -> DataFrame:
    """daily_recommendations rows: the model's list of the candidate pool."""
    return lists.model_list(ctx, pool).select(
        F.lit(ctx.ds).alias("ds"),
        "user_id",
        "rank",
        "item_id",
        "category_id",
        "score",
        "p_click",
        "p_purchase",
        F.lit(ctx.model_version).alias("model_version"),
    )


def repurchase_predictions(ctx: ListContext) -> DataFrame:
    """p_repurchase_<N>d of every (user, item) and (user, category) bought within
    features.repurchase_lookback_days before ds: the population repurchase rows are trained on."""
    f = ctx.features
    lookback = ctx.cfg.features.repurchase_lookback_days
    item_rows = f.user_items.where(
        (F.col("ui_purchase_days") > 0) & (F.col("ui_days_since_last_purchase") <= lookback)
    ).select(
        "user_id",
        "item_id",
        F.col("category_id").alias("day_category_id"),
        F.lit("repurchase_item").alias("row_kind"),
    )
    category_rows = f.user_cats.where(
        (F.col("uc_purchase_days") > 0) & (F.col("uc_days_since_last_purchase") <= lookback)
    ).select(
        "user_id",
        F.lit(None).cast("string").alias("item_id"),
        F.col("category_id").alias("day_category_id"),
        F.lit("repurchase_category").alias("row_kind"),
    )
    rows = item_rows.unionByName(category_rows)
    inputs = model_inputs(rows, f.users, f.items, f.user_cats, f.user_items, ctx.defaults)
    days = F.when(F.col("row_kind") == "repurchase_item", F.col("ui_days_since_last_purchase")).otherwise(
        F.col("uc_days_since_last_purchase")
    )
    inputs = inputs.withColumn("days_since_last_purchase", days.cast("int"))
    outputs = {task: column for task, column in REPURCHASE_TASKS.items() if task in ctx.tasks}
    predicted = lists.predict(ctx, inputs, ("user_id", "item_id", "category_id", "days_since_last_purchase"), outputs)
    absent = [F.lit(None).cast("double").alias(c) for t, c in REPURCHASE_TASKS.items() if t not in outputs]
    return predicted.select(
        F.lit(ctx.ds).alias("ds"),
        "*",
        *absent,
        F.lit(ctx.model_version).alias("model_version"),
    )


def run_score(spark: SparkSession, cfg: Config, ds: dt.date) -> ScoreResult:
    sc = cfg.scoring
    with RunRecorder(spark, cfg, "score", ds) as run:
        key = pseudonym_key(sc) if sc.pseudonymize else None  # fail before any work without the key
        started = time.perf_counter()
        artifact = load_published(cfg)
        ctx = lists.prepare(
            spark, cfg, ds, artifact, lists.read_features(spark, cfg, ds), runtime_export(cfg, artifact)
        )
        run.model_version = ctx.model_version
        run.tables_read = dict(ctx.features.versions)
        catalogue_bc = None
        try:
            catalogue = lists.embed_catalogue(ctx)
            catalogue_bc = spark.sparkContext.broadcast(catalogue)
            users = lists.active_users(ctx)
            n_users, n_items, dim = users.count(), *catalogue.vectors.shape
            result = ScoreResult(ds, ctx.model_version, n_users, n_items, retrieval_flops(n_users, n_items, dim))
            result.seconds["prepare_and_embed_catalogue"] = time.perf_counter() - started
            log.info(
                "ds %s: scoring %d active users over %d items with model version %s",
                ds,
                result.active_users,
                result.catalogue_items,
                ctx.model_version,
            )
            scan_seconds = spark.sparkContext.accumulator(0.0)
            pool = lists.candidate_pool(ctx, catalogue_bc, users, scan_seconds)
            outputs = {
                DAILY_RECOMMENDATIONS: recommendations(ctx, pool),
                REPURCHASE_PREDICTIONS: repurchase_predictions(ctx),
            }
            if key is not None:
                outputs = {
                    spec: df.withColumn("user_id", pseudonymised(F.col("user_id"), key)) for spec, df in outputs.items()
                }
            required = [c for t, c in REPURCHASE_TASKS.items() if t in ctx.tasks]
            _stage_check_publish(spark, cfg, ds, run.run_id, outputs, required, result)
            result.seconds["retrieval_scan_task_seconds"] = scan_seconds.value
        finally:
            for broadcast in (ctx.shipment, catalogue_bc):
                if broadcast is not None:
                    broadcast.destroy()
        run.input_rows = result.active_users
        run.output_rows = result.rows[DAILY_RECOMMENDATIONS.name]
        run.tables_written = dict(result.versions)
        run.details.update(
            dataclasses.asdict(result)
            | {"k": sc.k, "candidates": sc.candidates, "pseudonymized": sc.pseudonymize, "runtime": sc.runtime}
        )
    return result


def _stage_check_publish(
    spark: SparkSession,
    cfg: Config,
    ds: dt.date,
    run_id: str,
    outputs: dict[TableSpec, DataFrame],
    repurchase_probabilities: list[str],
    result: ScoreResult,
) -> None:
    """Write each output once to staging, check it there, then replace each ds partition.
    ``repurchase_probabilities``: the p_repurchase columns the model has a task for (never null)."""
    staging = f"{warehouse_root(cfg.storage)}/_staging/score/{run_id}"
    try:
        started = time.perf_counter()
        staged = {}
        for spec, df in outputs.items():
            path = f"{staging}/{spec.name}"
            delta_io.conform(df, spec).write.parquet(path)
            staged[spec] = spark.read.parquet(path)
        result.seconds["score_and_stage"] = time.perf_counter() - started
        started = time.perf_counter()
        checks: list[CheckResult] = [
            check_recommendations(staged[DAILY_RECOMMENDATIONS], cfg.scoring.k),
            check_repurchase(staged[REPURCHASE_PREDICTIONS], repurchase_probabilities),
        ]
        result.seconds["checks"] = time.perf_counter() - started
        raise_on_violations(checks)
        started = time.perf_counter()
        for spec, check in zip(staged, checks):
            commit = delta_io.replace_partition(
                spark, staged[spec], spec, spec.path(cfg.storage), ds, cfg.storage.conflict_retries
            )
            result.versions[spec.name] = commit.version
            result.rows[spec.name] = commit.rows_written
            result.users[spec.name] = check.users
        result.seconds["publish"] = time.perf_counter() - started
    finally:
        _delete(spark, staging)


def _delete(spark: SparkSession, path: str) -> None:
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(hadoop_path, True)


def summarize(r: ScoreResult) -> str:
    rows = ", ".join(f"{name} {n:,} rows ({r.users[name]:,} users)" for name, n in r.rows.items())
    return (
        f"ds {r.ds}: model version {r.model_version}, {r.active_users:,} active users, "
        f"{r.catalogue_items:,} catalogue items; {rows}"
    )
