"""What evaluation reads for a held-out ds: its training_examples rows, the features as of ds, and
the item-recommendation task over the full catalogue. Every table is read at one pinned version,
recorded in the run."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from mtl import delta_io
from mtl import metric_functions as M
from mtl.config import Config
from mtl.errors import InputError
from mtl.features.assemble import model_inputs
from mtl.features.job import date_range
from mtl.models.artifacts import read_feature_stats
from mtl.schema import LABELS, unobserved_labels
from mtl.tables import (
    ITEM_FEATURES,
    TRAINING_EXAMPLES,
    USER_CATEGORY_FEATURES,
    USER_FEATURES,
    USER_ITEM_FEATURES,
    TableSpec,
)


@dataclass(frozen=True)
class Split:
    """The held-out day: its examples and the feature tables as of it."""

    ds: dt.date
    examples: DataFrame
    users: DataFrame
    items: DataFrame
    user_categories: DataFrame
    user_items: DataFrame
    defaults: dict[str, float]
    rows: int
    # label -> (negatives, positives) among the rows that have it
    label_counts: dict[str, tuple[int, int]]
    # True when the day's negatives were sampled (a log without impressions): click AUC then
    # separates interactions from popularity-sampled items, not clicks from skipped impressions.
    sampled_negatives: bool
    tables_read: dict[str, int] = field(default_factory=dict)


def read_split(spark: SparkSession, cfg: Config, ds: dt.date) -> Split:
    tables_read: dict[str, int] = {}

    def day(spec: TableSpec) -> DataFrame:
        path = spec.path(cfg.storage)
        version = delta_io.table_version(spark, path)
        if version is None:
            raise InputError(f"no {spec.name} table at {path}: run build_features --ds {ds}")
        tables_read[spec.name] = version
        return spark.read.format("delta").option("versionAsOf", version).load(path).where(F.col("ds") == F.lit(ds))

    examples = day(TRAINING_EXAMPLES)
    summary = examples.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("is_sampled_negative").cast("long")).alias("sampled"),
        *label_count_columns(),
    ).first()
    if not summary["rows"]:
        raise InputError(f"training_examples has no rows for ds {ds}: run build_features --ds {ds}")
    return Split(
        ds=ds,
        examples=examples,
        users=day(USER_FEATURES),
        items=day(ITEM_FEATURES),
        user_categories=day(USER_CATEGORY_FEATURES),
        user_items=day(USER_ITEM_FEATURES),
        defaults=read_feature_stats(spark, cfg, ds)["defaults"],
        rows=summary["rows"],
        label_counts=label_counts(summary),
        sampled_negatives=summary["sampled"] > 0,
        tables_read=tables_read,
    )


def label_count_columns() -> list[Column]:
    """Aggregates counting each label's negatives and positives (read back with label_counts)."""
    return [
        F.sum((F.col(label) == value).cast("long")).alias(f"{label}__{value}") for label in LABELS for value in (0, 1)
    ]


def label_counts(row: Row) -> dict[str, tuple[int, int]]:
    return {label: (int(row[f"{label}__0"] or 0), int(row[f"{label}__1"] or 0)) for label in LABELS}


def training_window(
    spark: SparkSession,
    cfg: Config,
    ds_from: dt.date,
    ds_to: dt.date,
    version: Optional[int],
    as_of: Optional[dt.date] = None,
) -> DataFrame:
    """training_examples of ds_from..ds_to, at ``version`` (the one a model was trained on) if given.
    With ``as_of`` (the ds a model is trained for), the labels it must not learn are null, as the
    train job reads them (mtl.schema.unobserved_labels)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    rows = reader.load(TRAINING_EXAMPLES.path(cfg.storage)).where(F.col("ds").between(F.lit(ds_from), F.lit(ds_to)))
    if as_of is None:
        return rows
    for label in LABELS:
        hidden = [day for day in date_range(ds_from, ds_to) if label in unobserved_labels(day, as_of)]
        if hidden:
            rows = rows.withColumn(label, F.when(F.col("ds").isin(hidden), F.lit(None)).otherwise(F.col(label)))
    return rows


@dataclass(frozen=True)
class RankingTask:
    """Next-item recommendation on ds: rank the whole catalogue for each user who clicked.

    ``relevant`` holds, per user row, the items clicked on ds as catalogue indices; a clicked
    item outside the catalogue (first seen on ds) gets an index past its end, so it counts as
    relevant but no scorer can find it."""

    users: np.ndarray  # user ids, row order of every ranked list
    items: np.ndarray  # the catalogue: items with features as of ds
    item_categories: np.ndarray
    relevant: M.Relevance
    # The items clicked on ds, seen before or not: what a published list is measured against.
    clicked: M.Relevance
    # (user rows, catalogue indices) that must not be recommended (exclude_seen)
    exclude: Optional[tuple[np.ndarray, np.ndarray]]
    clicking_users: int  # users with a click on ds, before sampling down to ranking_users
    relevant_outside_catalogue: int
    user_ids: DataFrame  # ``users`` as a one-column (user_id) DataFrame
    user_rows: DataFrame  # model inputs of ``users``, for retrieval vectors
    item_rows: DataFrame  # model inputs of ``items``


def ranking_task(split: Split, cfg: Config) -> RankingTask:
    positives = split.examples.where("row_kind = 'exposure' AND click = 1").select("user_id", "item_id").distinct()
    clickers = positives.select("user_id").distinct()
    clicking_users = clickers.count()
    # A fixed pseudo-random subset: hashing gives the same users on every rerun, whatever the partitioning.
    chosen = clickers.orderBy(F.xxhash64("user_id"), "user_id").limit(cfg.evaluation.ranking_users)
    users = np.array(sorted(r.user_id for r in chosen.collect()), dtype=object)
    catalogue = split.items.select("item_id", "category_id").orderBy("item_id").toPandas()
    items = catalogue["item_id"].to_numpy(dtype=object)
    seen = None
    if cfg.evaluation.exclude_seen:
        seen = split.user_items.select("user_id", "item_id").join(chosen, "user_id").toPandas()
    clicked_pairs = positives.join(chosen, "user_id").toPandas()
    relevant, exclude = index_pairs(users, items, clicked_pairs, seen)
    clicked = relevant if seen is None else index_pairs(users, items, clicked_pairs, None)[0]

    none, exposure = F.lit(None).cast("string"), F.lit("exposure").alias("row_kind")
    features = (split.users, split.items, split.user_categories, split.user_items, split.defaults)
    user_rows = model_inputs(
        chosen.select("user_id", none.alias("item_id"), none.alias("day_category_id"), exposure), *features
    )
    item_rows = model_inputs(
        split.items.select(none.alias("user_id"), "item_id", F.col("category_id").alias("day_category_id"), exposure),
        *features,
    )
    return RankingTask(
        users=users,
        items=items,
        item_categories=catalogue["category_id"].to_numpy(dtype=object),
        relevant=relevant,
        clicked=clicked,
        exclude=exclude,
        clicking_users=clicking_users,
        relevant_outside_catalogue=int(np.count_nonzero(relevant.item >= len(items))),
        user_ids=chosen,
        user_rows=user_rows,
        item_rows=item_rows,
    )


def index_pairs(
    users: np.ndarray, items: np.ndarray, clicked: pd.DataFrame, seen: Optional[pd.DataFrame]
) -> tuple[M.Relevance, Optional[tuple[np.ndarray, np.ndarray]]]:
    """Clicked (user_id, item_id) pairs as relevance over (rows of ``users``, indices of ``items``);
    an item outside the catalogue gets an index past its end. With ``seen`` pairs, those are
    returned as exclusions and dropped from the relevant items: what can never be recommended
    cannot be missed either."""
    user_index, item_index = pd.Index(users), pd.Index(items)
    exclude = None
    if seen is not None:
        columns = item_index.get_indexer(seen["item_id"])
        known = columns >= 0
        exclude = (user_index.get_indexer(seen["user_id"])[known], columns[known])
        marked = clicked.merge(seen.drop_duplicates(), on=["user_id", "item_id"], how="left", indicator=True)
        clicked = marked[marked["_merge"] == "left_only"]
    columns = item_index.get_indexer(clicked["item_id"])
    outside = columns < 0
    columns[outside] = len(items) + pd.factorize(clicked["item_id"].to_numpy()[outside])[0]
    return M.Relevance(user_index.get_indexer(clicked["user_id"]).astype(np.int64), columns.astype(np.int64)), exclude
