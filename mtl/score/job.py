"""The score job: the published model -> ``daily_recommendations`` and ``repurchase_predictions``
for one ds.

1. The model travels to the executors once, as one broadcast; each Python worker rebuilds it
   once (``mtl.score.workers``).
2. Catalogue: the item tower runs over the catalogue's model inputs on the executors; the
   vectors (N x d float32, 12.8 MB for 100k items at d = 32) are collected once and broadcast
   with the item ids. A broadcast needs no filesystem access from Python on any cluster
   storage; at a few million items it is a few hundred MB per executor.
3. Retrieval: the user tower's input columns of the active users, built from the user side
   alone, in ``mapInArrow`` batches: user tower, then the exact blocked top-M over the broadcast
   vectors (``mtl.score.candidates``); the M rows per user are built with Arrow takes, not
   Python strings.
4. Ranking: ``model_inputs`` joins the as-of-ds features onto the candidate pairs exactly as for
   training; recently bought items go (unless repurchasable); the multi-task heads score the rest
   in ``mapInPandas``; score formula, per-category cap and top K are window functions.
5. Repurchase: the same heads on (user, item) and (user, category) pairs bought in the look-back.
6. Both outputs are written once to a staging folder, checked there, and only then each replaces
   its ds partition in one Delta transaction; a failed check or a failure before that leaves the
   published partitions as they were.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from pyspark import Accumulator, Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl import delta_io, registry
from mtl.config import Config
from mtl.data.batch import MODEL_FIELDS
from mtl.errors import InputError
from mtl.features.assemble import model_inputs, user_inputs
from mtl.models.artifacts import load_model
from mtl.registry import Artifact
from mtl.run_record import RunRecorder
from mtl.schema import REPURCHASE_HORIZONS_DAYS
from mtl.score import rank
from mtl.score.candidates import retrieval_flops
from mtl.score.output_checks import CheckResult, check_recommendations, check_repurchase, raise_on_violations
from mtl.score.pseudonym import pseudonym_key, pseudonymised
from mtl.score.workers import (
    CANDIDATES_SCHEMA,
    ITEM_VECTORS_SCHEMA,
    USER_TOWER_COLUMNS,
    Catalogue,
    ModelShipment,
    item_vectors_stage,
    prediction_stage,
    retrieval_stage,
)
from mtl.tables import (
    DAILY_RECOMMENDATIONS,
    ITEM_FEATURES,
    REPURCHASE_PREDICTIONS,
    USER_CATEGORY_FEATURES,
    USER_FEATURES,
    USER_ITEM_FEATURES,
    TableSpec,
    warehouse_root,
)

log = logging.getLogger(__name__)

RECOMMENDATION_TASKS = {"click": "p_click", "purchase": "p_purchase"}
REPURCHASE_TASKS = {f"repurchase_{n}d": f"p_repurchase_{n}d" for n in REPURCHASE_HORIZONS_DAYS}


@dataclass(frozen=True)
class FeatureInputs:
    """The four feature tables of ds (ds column dropped), read at pinned Delta versions."""

    users: DataFrame
    items: DataFrame
    user_cats: DataFrame
    user_items: DataFrame
    versions: dict[str, int]

    @property
    def no_pairs(self) -> tuple[DataFrame, DataFrame]:
        """Empty user-category and user-item sides: model_inputs then joins nothing there (the
        optimiser drops a join with an empty relation) and fills their defaults."""
        return self.user_cats.limit(0), self.user_items.limit(0)


@dataclass(frozen=True)
class ScoringContext:
    spark: SparkSession
    cfg: Config
    ds: dt.date
    features: FeatureInputs
    model_version: str
    tasks: tuple[str, ...]
    defaults: dict[str, float]
    shipment: Broadcast


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


def read_features(spark: SparkSession, cfg: Config, ds: dt.date) -> FeatureInputs:
    frames, versions = {}, {}
    for spec in (USER_FEATURES, ITEM_FEATURES, USER_CATEGORY_FEATURES, USER_ITEM_FEATURES):
        path = spec.path(cfg.storage)
        version = delta_io.table_version(spark, path)
        if version is None:
            raise InputError(f"no {spec.name} table at {path}: run build_features --ds {ds} first")
        versions[spec.name] = version
        frames[spec.name] = (
            spark.read.format("delta")
            .option("versionAsOf", version)
            .load(path)
            .where(F.col("ds") == F.lit(ds))
            .drop("ds")
        )
    if frames[ITEM_FEATURES.name].limit(1).count() == 0:
        raise InputError(f"item_features has no rows for ds {ds}: run build_features --ds {ds} first")
    return FeatureInputs(
        frames[USER_FEATURES.name],
        frames[ITEM_FEATURES.name],
        frames[USER_CATEGORY_FEATURES.name],
        frames[USER_ITEM_FEATURES.name],
        versions,
    )


def load_published(cfg: Config) -> tuple[Artifact, tuple[str, ...]]:
    """The configured version (default: the champion) and its tasks, checked on the driver
    before any executor work: it must rebuild, and have the heads scoring needs."""
    sc = cfg.scoring
    artifact = registry.load_version(cfg, version=sc.model_version, alias=sc.model_alias)
    model = load_model(artifact)
    missing = [t for t in RECOMMENDATION_TASKS if t not in model.tasks]
    if model.retrieval is None or missing:
        lacks = ["the retrieval head"] if model.retrieval is None else []
        lacks = ", ".join(lacks + [f"the {t} task" for t in missing])
        raise InputError(f"model version {artifact.version} cannot score recommendations: it lacks {lacks}")
    return artifact, model.tasks


def prepare(spark: SparkSession, cfg: Config, ds: dt.date) -> ScoringContext:
    features = read_features(spark, cfg, ds)
    artifact, tasks = load_published(cfg)
    defaults = artifact.feature_stats.get("defaults")
    if not defaults:
        raise InputError(f"model version {artifact.version} has no fill values (feature_stats.defaults)")
    shipment = spark.sparkContext.broadcast(ModelShipment(artifact))
    return ScoringContext(spark, cfg, ds, features, str(artifact.version), tasks, defaults, shipment)


def embed_catalogue(ctx: ScoringContext) -> Catalogue:
    """Item-tower vectors of every item that may be recommended, computed once, on the executors,
    and collected in item_id order."""
    f = ctx.features
    items = rank.catalogue(ctx.spark, f.items, ctx.cfg.scoring.items, ctx.ds)
    rows = items.select(
        F.lit(None).cast("string").alias("user_id"),
        "item_id",
        F.col("category_id").alias("day_category_id"),
        F.lit("exposure").alias("row_kind"),
    )
    inputs = model_inputs(
        rows, f.users.limit(0), f.items, *f.no_pairs, ctx.defaults, passthrough=("item_category_id", "day_category_id")
    )
    # What ranking needs back besides the item id: it joins item_features again and falls back to
    # the candidate's day_category_id only where they have no category (new items).
    fallback = F.when(F.col("item_category_id").isNull(), F.col("day_category_id"))
    inputs = inputs.withColumn("fallback_category_id", fallback)
    table = inputs.mapInPandas(item_vectors_stage(ctx.shipment), ITEM_VECTORS_SCHEMA).toArrow()
    if table.num_rows == 0:
        raise InputError(f"the catalogue for ds {ctx.ds} is empty (no available items)")
    ids = table.column("item_id").to_numpy()
    flat = table.column("vector").combine_chunks().flatten().to_numpy()
    order = np.argsort(ids, kind="stable")
    return Catalogue(
        item_ids=ids[order],
        fallback_category_ids=table.column("fallback_category_id").to_numpy()[order],
        vectors=np.ascontiguousarray(flat.reshape(table.num_rows, -1)[order], dtype=np.float32),
    )


def active_users(ctx: ScoringContext) -> DataFrame:
    return ctx.features.users.where(F.col("u_days_since_last_event") <= ctx.cfg.scoring.active_days)


def candidates(ctx: ScoringContext, catalogue: Broadcast, users: DataFrame, scan_seconds: Accumulator) -> DataFrame:
    """(user_id, item_id, day_category_id, retrieval_score): each user's exact top-M items;
    day_category_id only for items without a category in item_features (model_inputs' fallback).
    ``scan_seconds`` collects the task seconds spent in the scan."""
    sc = ctx.cfg.scoring
    inputs = user_inputs(users, ctx.defaults).select("user_id", *USER_TOWER_COLUMNS)
    cores = ctx.spark.sparkContext.defaultParallelism
    if len(inputs.inputFiles()) < cores:
        # Spread the users over every core: the scan is the heavy part, and a task reads whole
        # files (row groups). With a file per core or more, the shuffle would cost more than the
        # imbalance it evens out.
        inputs = inputs.repartition(cores)
    stage = retrieval_stage(
        ctx.shipment, catalogue, sc.candidates, sc.item_block_size, sc.users_per_batch, scan_seconds
    )
    return inputs.mapInArrow(stage, CANDIDATES_SCHEMA)


def recommendations(ctx: ScoringContext, cands: DataFrame) -> DataFrame:
    """The top K per user: candidates ranked by the multi-task heads, after the filters."""
    f, sc = ctx.features, ctx.cfg.scoring
    inputs = model_inputs(
        cands.withColumn("row_kind", F.lit("exposure")), f.users, f.items, f.user_cats, f.user_items, ctx.defaults
    )
    repurchasable = rank.repurchasable_categories(ctx.spark, f.user_cats, sc.filters)
    inputs = rank.drop_recent_purchases(inputs, repurchasable, sc.filters.recent_purchase_days)
    scored = _predict(ctx, inputs, ("user_id", "item_id", "category_id", "i_price"), RECOMMENDATION_TASKS)
    top = rank.top_k(scored.withColumn("score", rank.score_column(sc)), sc.k, sc.filters.max_per_category)
    return top.select(
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


def repurchase_predictions(ctx: ScoringContext) -> DataFrame:
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
    predicted = _predict(ctx, inputs, ("user_id", "item_id", "category_id", "days_since_last_purchase"), outputs)
    absent = [F.lit(None).cast("double").alias(c) for t, c in REPURCHASE_TASKS.items() if t not in outputs]
    return predicted.select(
        F.lit(ctx.ds).alias("ds"),
        "*",
        *absent,
        F.lit(ctx.model_version).alias("model_version"),
    )


def _predict(ctx: ScoringContext, inputs: DataFrame, keep: tuple[str, ...], outputs: dict[str, str]) -> DataFrame:
    """The ``keep`` columns of model_inputs rows plus one probability column per task (task ->
    column); only the model's own input columns travel to Python besides ``keep``. A
    probability is nullable: Arrow turns a NaN from broken weights into null, which the
    output checks then catch."""
    fields = [f.name for f in MODEL_FIELDS if f.name not in keep]
    schema = T.StructType(
        [inputs.schema[c] for c in keep] + [T.StructField(c, T.DoubleType(), True) for c in outputs.values()]
    )
    return inputs.select(*keep, *fields).mapInPandas(prediction_stage(ctx.shipment, keep, outputs), schema)


def run_score(spark: SparkSession, cfg: Config, ds: dt.date) -> ScoreResult:
    sc = cfg.scoring
    with RunRecorder(spark, cfg, "score", ds) as run:
        key = pseudonym_key(sc) if sc.pseudonymize else None  # fail before any work without the key
        started = time.perf_counter()
        ctx = prepare(spark, cfg, ds)
        run.model_version = ctx.model_version
        run.tables_read = dict(ctx.features.versions)
        catalogue_bc = None
        try:
            catalogue = embed_catalogue(ctx)
            catalogue_bc = spark.sparkContext.broadcast(catalogue)
            users = active_users(ctx)
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
            outputs = {
                DAILY_RECOMMENDATIONS: recommendations(ctx, candidates(ctx, catalogue_bc, users, scan_seconds)),
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
            dataclasses.asdict(result) | {"k": sc.k, "candidates": sc.candidates, "pseudonymized": sc.pseudonymize}
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
            commit = delta_io.replace_partition(spark, staged[spec], spec, spec.path(cfg.storage), ds)
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
