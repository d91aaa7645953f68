"""The recommendation list of one model version for ds, as DataFrames: what the score job
publishes and what evaluation measures on a held-out ds.

1. The model travels to the executors once, as one broadcast; each Python worker rebuilds it
   once (``mtl.recommend.workers``).
2. Catalogue: the item tower runs over the catalogue's model inputs on the executors; the
   vectors (N x d float32, 12.8 MB for 100k items at d = 32) are collected once and broadcast
   with the item ids. A broadcast needs no filesystem access from Python on any cluster
   storage; at a few million items it is a few hundred MB per executor.
3. Candidates: the two-tower top-M of each user (the user tower in ``mapInArrow`` batches, then
   the exact blocked top-M over the broadcast vectors, ``mtl.recommend.top_m``), joined with the
   user's rows of the ``candidates`` table (re-visits, item neighbours, popular items) that are
   in the catalogue: one row per (user, item) with every source's rank and score.
4. Ranking: ``model_inputs`` joins the as-of-ds features onto the candidate pairs exactly as for
   training; recently bought items go (unless repurchasable); the multi-task heads score the
   rest in ``mapInPandas``; score formula, per-category cap and top K are window functions.
   ``finish`` applies the same filters and top K to any other scored candidates (a baseline's).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Optional

import numpy as np
from pyspark import Accumulator, Broadcast
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl import delta_io
from mtl.candidates.pool import source_score_columns
from mtl.config import Config
from mtl.data.batch import MODEL_FIELDS
from mtl.errors import InputError
from mtl.export.runtime import ExportedGraphs
from mtl.features.assemble import model_inputs, user_inputs
from mtl.models.artifacts import load_model
from mtl.recommend import rank
from mtl.recommend.workers import (
    ITEM_VECTORS_SCHEMA,
    RETRIEVED_SCHEMA,
    USER_TOWER_COLUMNS,
    Catalogue,
    ModelShipment,
    item_vectors_stage,
    prediction_stage,
    retrieval_stage,
)
from mtl.registry import Artifact
from mtl.schema import CANDIDATE_SOURCES
from mtl.tables import CANDIDATES, ITEM_FEATURES, USER_CATEGORY_FEATURES, USER_FEATURES, USER_ITEM_FEATURES

RECOMMENDATION_TASKS = {"click": "p_click", "purchase": "p_purchase"}
# The columns of the candidate pool besides the pair: each source's rank and score.
SOURCE_COLUMNS = tuple(f"{s}_{what}" for s in CANDIDATE_SOURCES for what in ("rank", "score"))
LIST_COLUMNS = ("user_id", "rank", "item_id", "category_id", "score")


@dataclass(frozen=True)
class FeatureInputs:
    """The four feature tables of ds (ds column dropped) and the candidates of ds, read at
    pinned Delta versions."""

    users: DataFrame
    items: DataFrame
    user_cats: DataFrame
    user_items: DataFrame
    candidates: DataFrame
    versions: dict[str, int]

    @property
    def no_pairs(self) -> tuple[DataFrame, DataFrame]:
        """Empty user-category and user-item sides: model_inputs then joins nothing there (the
        optimiser drops a join with an empty relation) and fills their defaults."""
        return self.user_cats.limit(0), self.user_items.limit(0)


@dataclass(frozen=True)
class ListContext:
    """What every list of ds is made from: the features, one model version on the executors,
    and its fill values."""

    spark: SparkSession
    cfg: Config
    ds: dt.date
    features: FeatureInputs
    model_version: str
    tasks: tuple[str, ...]
    defaults: dict[str, float]
    shipment: Broadcast


def read_features(spark: SparkSession, cfg: Config, ds: dt.date) -> FeatureInputs:
    frames, versions = {}, {}
    for spec in (USER_FEATURES, ITEM_FEATURES, USER_CATEGORY_FEATURES, USER_ITEM_FEATURES, CANDIDATES):
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
    for spec in (ITEM_FEATURES, CANDIDATES):
        if frames[spec.name].limit(1).count() == 0:
            raise InputError(f"{spec.name} has no rows for ds {ds}: run build_features --ds {ds} first")
    return FeatureInputs(
        frames[USER_FEATURES.name],
        frames[ITEM_FEATURES.name],
        frames[USER_CATEGORY_FEATURES.name],
        frames[USER_ITEM_FEATURES.name],
        frames[CANDIDATES.name],
        versions,
    )


def recommendable(artifact: Artifact) -> tuple[str, ...]:
    """The version's tasks, checked on the driver before any executor work: it must rebuild, and
    have the heads a list needs."""
    model = load_model(artifact)
    missing = [t for t in RECOMMENDATION_TASKS if t not in model.tasks]
    if model.retrieval is None or missing:
        lacks = ["the retrieval head"] if model.retrieval is None else []
        lacks = ", ".join(lacks + [f"the {t} task" for t in missing])
        raise InputError(f"model version {artifact.version} cannot score recommendations: it lacks {lacks}")
    return model.tasks


def prepare(
    spark: SparkSession,
    cfg: Config,
    ds: dt.date,
    artifact: Artifact,
    features: FeatureInputs,
    export: Optional[ExportedGraphs] = None,
) -> ListContext:
    """``export``: the version's ONNX graphs to score with instead of the torch model."""
    tasks = recommendable(artifact)
    defaults = artifact.feature_stats.get("defaults")
    if not defaults:
        raise InputError(f"model version {artifact.version} has no fill values (feature_stats.defaults)")
    shipment = spark.sparkContext.broadcast(ModelShipment(artifact, export))
    return ListContext(spark, cfg, ds, features, str(artifact.version), tasks, defaults, shipment)


def catalogue_items(ctx: ListContext) -> DataFrame:
    """(item_id, category_id) of the items that may be recommended on ds."""
    return rank.catalogue(ctx.spark, ctx.features.items, ctx.cfg.scoring.items, ctx.ds)


def embed_catalogue(ctx: ListContext) -> Catalogue:
    """Item-tower vectors of every item that may be recommended, computed once, on the executors,
    and collected in item_id order."""
    f = ctx.features
    rows = catalogue_items(ctx).select(
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


def active_users(ctx: ListContext) -> DataFrame:
    return ctx.features.users.where(F.col("u_days_since_last_event") <= ctx.cfg.scoring.active_days)


def two_tower(ctx: ListContext, catalogue: Broadcast, users: DataFrame, scan_seconds: Accumulator) -> DataFrame:
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
    return inputs.mapInArrow(stage, RETRIEVED_SCHEMA)


def candidate_pool(ctx: ListContext, catalogue: Broadcast, users: DataFrame, scan_seconds: Accumulator) -> DataFrame:
    """(user_id, item_id, day_category_id, sources, <source>_rank, <source>_score): the union of the
    two-tower top-M and the candidates table's rows of ``users`` whose item is in the catalogue."""
    retrieved = two_tower(ctx, catalogue, users, scan_seconds)
    in_user = F.row_number().over(
        Window.partitionBy("user_id").orderBy(F.col("retrieval_score").desc(), F.col("item_id").asc())
    )
    retrieved = retrieved.select(
        "user_id",
        "item_id",
        "day_category_id",
        in_user.cast("int").alias("two_tower_rank"),
        F.col("retrieval_score").cast("double").alias("two_tower_score"),
    )
    table = ctx.features.candidates.join(users.select("user_id"), "user_id", "left_semi").join(
        catalogue_items(ctx).select("item_id"), "item_id", "left_semi"
    )
    pool = table.join(retrieved, ["user_id", "item_id"], "full_outer")
    from_model = F.when(F.col("two_tower_rank").isNotNull(), F.array(F.lit("two_tower"))).otherwise(
        F.array().cast(T.ArrayType(T.StringType()))
    )
    sources = F.concat(F.coalesce(F.col("sources"), F.array().cast(T.ArrayType(T.StringType()))), from_model)
    return pool.select("user_id", "item_id", "day_category_id", sources.alias("sources"), *SOURCE_COLUMNS)


def drop_recent_purchases(ctx: ListContext, rows: DataFrame) -> DataFrame:
    """The recent-purchase filter as every list of ds applies it (the model's and each baseline's)."""
    f, filters = ctx.features, ctx.cfg.scoring.filters
    rebuy = rank.repurchasable(ctx.spark, f.user_cats, f.user_items, filters)
    return rank.drop_recent_purchases(rows, rebuy, filters.recent_purchase_days)


def model_list(ctx: ListContext, pool: DataFrame) -> DataFrame:
    """The top K per user: the pool ranked by the multi-task heads, after the filters, with
    p_click and p_purchase."""
    f, sc = ctx.features, ctx.cfg.scoring
    inputs = model_inputs(
        pool.withColumns(source_score_columns()).withColumn("row_kind", F.lit("candidate")),
        f.users,
        f.items,
        f.user_cats,
        f.user_items,
        ctx.defaults,
    )
    inputs = drop_recent_purchases(ctx, inputs)
    scored = predict(ctx, inputs, ("user_id", "item_id", "category_id", "i_price"), RECOMMENDATION_TASKS)
    return rank.top_k(scored.withColumn("score", rank.score_column(sc)), sc.k, sc.filters.max_per_category)


def finish(ctx: ListContext, scored: DataFrame) -> DataFrame:
    """(LIST_COLUMNS): any scored candidates (user_id, item_id, score) through the model list's
    filters: catalogue items only, recent purchases dropped unless repurchasable, the category
    cap and the top K. How a baseline's list is made."""
    f, sc = ctx.features, ctx.cfg.scoring
    days_since = f.user_items.select("user_id", "item_id", "ui_days_since_last_purchase")
    rows = (
        scored.join(F.broadcast(catalogue_items(ctx)), "item_id")
        .join(days_since, ["user_id", "item_id"], "left")
        .withColumn(
            "ui_days_since_last_purchase",
            F.coalesce(F.col("ui_days_since_last_purchase"), F.lit(float(ctx.cfg.features.history_days))),
        )
    )
    rows = drop_recent_purchases(ctx, rows)
    return rank.top_k(rows, sc.k, sc.filters.max_per_category).select(*LIST_COLUMNS)


def predict(ctx: ListContext, inputs: DataFrame, keep: tuple[str, ...], outputs: dict[str, str]) -> DataFrame:
    """The ``keep`` columns of model_inputs rows plus one probability column per task (task ->
    column); only the model's own input columns travel to Python besides ``keep``. A
    probability is nullable: Arrow turns a NaN from broken weights into null, which the
    output checks then catch."""
    fields = [f.name for f in MODEL_FIELDS if f.name not in keep]
    schema = T.StructType(
        [inputs.schema[c] for c in keep] + [T.StructField(c, T.DoubleType(), True) for c in outputs.values()]
    )
    return inputs.select(*keep, *fields).mapInPandas(prediction_stage(ctx.shipment, keep, outputs), schema)
