"""Ranking and business rules as DataFrame transforms: the score formula, the catalogue, the
recent-purchase filter, the per-category cap and the top K."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from mtl.config import ScoringConfig, ScoringFiltersConfig, ScoringItemsConfig
from mtl.errors import InputError
from mtl.tables import resolve_path

# Below this, pCTR counts as this when dividing by it (a sigmoid that underflowed to 0).
_MIN_PROBABILITY = 1e-12


def score_column(cfg: ScoringConfig) -> Column:
    """pCTR x pCVR^alpha x price^beta. The purchase task is click-and-buy (CTCVR), so
    pCVR = p_purchase / p_click, capped at 1 for heads trained apart (only ESMM ties them)."""
    p_click = F.col("p_click")
    p_cvr = F.least(F.col("p_purchase") / F.greatest(p_click, F.lit(_MIN_PROBABILITY)), F.lit(1.0))
    price = F.greatest(F.col("i_price"), F.lit(cfg.min_price))
    return p_click * F.pow(p_cvr, F.lit(cfg.alpha)) * F.pow(price, F.lit(cfg.beta))


def catalogue(spark: SparkSession, items: DataFrame, cfg: ScoringItemsConfig, ds: dt.date) -> DataFrame:
    """(item_id, category_id) of the items that may be recommended on ds: the items table's
    available items when one is configured (new items without features included), else every
    item of item_features."""
    if cfg.path is None:
        return items.select("item_id", "category_id")
    table = spark.read.format(cfg.format).load(resolve_path(cfg.path))
    wanted = ["item_id", "category_id", cfg.available_column, cfg.available_from_column]
    missing = [c for c in wanted if c is not None and c not in table.columns]
    if missing:
        raise InputError(f"the items table at {cfg.path} lacks the column(s) {', '.join(missing)}")
    if cfg.available_column:
        table = table.where(F.coalesce(F.col(cfg.available_column).cast("boolean"), F.lit(True)))
    if cfg.available_from_column:
        table = table.where(F.coalesce(F.col(cfg.available_from_column).cast("date") <= F.lit(ds), F.lit(True)))
    return table.where(F.col("item_id").isNotNull()).groupBy("item_id").agg(F.max("category_id").alias("category_id"))


@dataclass(frozen=True)
class Repurchasable:
    """What people rebuy: ``categories`` (category_id) for items with a category, ``items``
    (item_id) for items without one, each of which is a group of its own (as for the cap)."""

    categories: DataFrame
    items: DataFrame


def _rebought(pairs: DataFrame, key: str, days: str, cfg: ScoringFiltersConfig) -> DataFrame:
    """(key) where at least ``repurchasable_min_rate`` of the buyers (at least
    ``repurchasable_min_buyers``) bought on two or more days."""
    return (
        pairs.where(F.col(days) >= 1)
        .groupBy(key)
        .agg(F.count(F.lit(1)).alias("buyers"), F.sum((F.col(days) >= 2).cast("long")).alias("repeat"))
        .where(
            (F.col("buyers") >= cfg.repurchasable_min_buyers)
            & (F.col("repeat") >= F.lit(cfg.repurchasable_min_rate) * F.col("buyers"))
        )
        .select(key)
    )


def repurchasable(
    spark: SparkSession, user_cats: DataFrame, user_items: DataFrame, cfg: ScoringFiltersConfig
) -> Repurchasable:
    """The categories listed in config or measured over (user, category) purchase days, and the
    items measured over (user, item) purchase days, by the same rule. The item rule matters on
    logs without categories (a retailer's order history), where the category rule finds nothing
    and every item bought in the window would be dropped, repeat purchases included."""
    listed = spark.createDataFrame([(c,) for c in cfg.repurchasable_categories], "category_id string")
    if cfg.repurchasable_min_rate is None:
        return Repurchasable(listed, spark.createDataFrame([], "item_id string"))
    categories = listed.unionByName(_rebought(user_cats, "category_id", "uc_purchase_days", cfg)).distinct()
    return Repurchasable(categories, _rebought(user_items, "item_id", "ui_purchase_days", cfg))


def drop_recent_purchases(rows: DataFrame, rebuy: Repurchasable, days: int) -> DataFrame:
    """Rows of model_inputs without the items the user bought in the ``days`` before ds, unless
    the item's category is repurchasable, or, for an item without a category, the item itself.
    ``ui_days_since_last_purchase`` is the history cap for a pair never bought, and the cap
    exceeds ``days`` (config check)."""
    if days == 0:
        return rows
    categories = F.broadcast(rebuy.categories.select("category_id", F.lit(True).alias("_category_rebought")))
    # Item-sized: a plain join, not a broadcast.
    items = rebuy.items.select("item_id", F.lit(True).alias("_item_rebought"))
    kept = (
        (F.col("ui_days_since_last_purchase") > days)
        | F.coalesce(F.col("_category_rebought"), F.lit(False))
        | (F.col("category_id").isNull() & F.coalesce(F.col("_item_rebought"), F.lit(False)))
    )
    return (
        rows.join(categories, "category_id", "left")
        .join(items, "item_id", "left")
        .where(kept)
        .drop("_category_rebought", "_item_rebought")
    )


def top_k(scored: DataFrame, k: int, max_per_category: int | None) -> DataFrame:
    """The best ``k`` rows per user by score (ties: by item_id), at most ``max_per_category`` per
    category, with ``rank`` 1..n. An item without a category is a group of its own: on a log
    without categories the cap changes nothing."""
    order = (F.col("score").desc(), F.col("item_id").asc())
    if max_per_category is not None:
        alone = F.when(F.col("category_id").isNull(), F.col("item_id"))
        in_category = Window.partitionBy(F.col("user_id"), F.col("category_id"), alone).orderBy(*order)
        scored = (
            scored.withColumn("_in_category", F.row_number().over(in_category))
            .where(F.col("_in_category") <= max_per_category)
            .drop("_in_category")
        )
    in_user = Window.partitionBy("user_id").orderBy(*order)
    return scored.withColumn("rank", F.row_number().over(in_user)).where(F.col("rank") <= k)
