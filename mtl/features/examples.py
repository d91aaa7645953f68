"""Training examples for ds D: which rows exist, their labels, and their features as of D.

Three kinds of row share one table (``row_kind``), so one model learns every task:

- ``exposure``: (user, item) pairs of day D with ``click`` and ``purchase`` labels. A log with
  impressions gives impression -> click rows; a log without (Taobao) gives the items the user
  interacted with on D as positives plus ``negatives_per_positive`` sampled items per positive
  that the user did not touch on D (``is_sampled_negative``). Exposure rows with click = 1 are
  also the retrieval task's targets, with the user's history before D as context.
- ``repurchase_item`` / ``repurchase_category``: pairs bought in the look-back window before D,
  labelled ``repurchase_<N>d`` = bought again in [D, D + N). A label whose window reaches past
  the last day present in ``events`` is null (unknown), never 0.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from mtl.config import FeaturesConfig
from mtl.features.transforms import RATE_WINDOW_DAYS
from mtl.schema import INTERACTION_TYPES, REPURCHASE_HORIZONS_DAYS

LABEL_HORIZON_COLUMNS = {n: f"repurchase_{n}d" for n in REPURCHASE_HORIZONS_DAYS}


def day_has_impressions(day: DataFrame) -> bool:
    return day.where(F.col("event_type") == "impression").limit(1).count() > 0


def _interaction() -> Column:
    return F.col("event_type").isin(*INTERACTION_TYPES)


def exposure_rows(day: DataFrame, with_impressions: bool) -> DataFrame:
    """(user, item) rows of day D with click and purchase labels (sampled negatives not included)."""
    pairs = day.groupBy("user_id", "item_id").agg(
        F.max(F.col("event_type") == "impression").alias("shown"),
        F.max(_interaction()).alias("engaged"),
        F.max(F.col("event_type") == "purchase").alias("bought"),
        F.max("category_id").alias("day_category_id"),
    )
    if with_impressions:
        # Impression -> click: an interaction with an item shown that day counts as its click.
        pairs = pairs.where("shown").withColumn("click", F.col("engaged").cast("int"))
    else:
        pairs = pairs.where("engaged").withColumn("click", F.lit(1))
    return pairs.select(
        "user_id",
        "item_id",
        "day_category_id",
        "click",
        (F.col("bought") & (F.col("click") == 1)).cast("int").alias("purchase"),
        F.lit(False).alias("is_sampled_negative"),
    )


def sampling_table(items: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """``cfg.sampling_slots`` slots, each holding one item; an item holds a share of the slots
    proportional to (interactions in the rate window) ** exponent. Drawing a uniform slot is
    then an equi-join (broadcast), not a nested-loop join against the catalogue."""
    weight = sum((F.col(f"i_{t}_{RATE_WINDOW_DAYS}d") for t in INTERACTION_TYPES), F.lit(0))
    popular = items.where(weight > 0).select(
        "item_id", "category_id", F.pow(weight.cast("double"), cfg.negative_sampling_exponent).alias("w")
    )
    # One ordered pass to lay items end to end; the catalogue of items seen in 30 days is small.
    ordered = Window.orderBy("item_id").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    total = F.sum("w").over(Window.partitionBy())
    slots = cfg.sampling_slots
    laid = popular.select(
        "item_id",
        "category_id",
        F.floor((F.sum("w").over(ordered) - F.col("w")) / total * slots).cast("long").alias("lo"),
        F.floor(F.sum("w").over(ordered) / total * slots).cast("long").alias("hi"),
    )
    return laid.where(F.col("hi") > F.col("lo")).select(
        F.explode(F.sequence(F.col("lo"), F.col("hi") - 1)).alias("slot"), "item_id", "category_id"
    )


def sampled_negatives(
    positives: DataFrame, day: DataFrame, table: DataFrame, ds: dt.date, cfg: FeaturesConfig
) -> DataFrame:
    """k draws per positive (seeded by ds, user, item and draw number, so reruns agree), minus
    items the user touched on D and repeated draws."""
    k = cfg.negatives_per_positive
    draws = positives.select("user_id", "item_id", F.explode(F.sequence(F.lit(0), F.lit(k - 1))).alias("draw")).select(
        "user_id",
        F.pmod(
            F.xxhash64(F.lit(cfg.seed), F.lit(ds.isoformat()), "user_id", "item_id", "draw"), F.lit(cfg.sampling_slots)
        ).alias("slot"),
    )
    touched = day.select("user_id", "item_id").distinct()
    return (
        draws.join(F.broadcast(table), "slot")
        .select("user_id", "item_id", F.col("category_id").alias("day_category_id"))
        .distinct()
        .join(touched, ["user_id", "item_id"], "left_anti")
        .select(
            "user_id",
            "item_id",
            "day_category_id",
            F.lit(0).alias("click"),
            F.lit(0).alias("purchase"),
            F.lit(True).alias("is_sampled_negative"),
        )
    )


def _horizon_label(bought_within: dict[int, Column], ds: dt.date, observed_until: Optional[dt.date]) -> list[Column]:
    out = []
    for n, col in LABEL_HORIZON_COLUMNS.items():
        complete = observed_until is not None and ds + dt.timedelta(days=n - 1) <= observed_until
        out.append((bought_within[n].cast("int") if complete else F.lit(None).cast("int")).alias(col))
    return out


def repurchase_rows(
    pairs: DataFrame,
    user_cats: DataFrame,
    future: DataFrame,
    ds: dt.date,
    observed_until: Optional[dt.date],
    cfg: FeaturesConfig,
) -> DataFrame:
    """(user, item) and (user, category) pairs bought within the look-back, with their labels."""
    lookback = cfg.repurchase_lookback_days
    buys = future.where(F.col("event_type") == "purchase")
    item_later = buys.groupBy("user_id", "item_id").agg(F.min("days_ahead").alias("next_buy"))
    cat_later = (
        buys.where(F.col("category_id").isNotNull())
        .groupBy("user_id", "category_id")
        .agg(F.min("days_ahead").alias("next_buy"))
    )
    within = {n: F.coalesce(F.col("next_buy") < n, F.lit(False)) for n in REPURCHASE_HORIZONS_DAYS}
    items = (
        pairs.where((F.col("ui_purchase_days") > 0) & (F.col("ui_days_since_last_purchase") <= lookback))
        .select("user_id", "item_id")
        .join(item_later, ["user_id", "item_id"], "left")
        .select(
            "user_id",
            "item_id",
            F.lit("repurchase_item").alias("row_kind"),
            *_horizon_label(within, ds, observed_until),
        )
    )
    cats = (
        user_cats.where((F.col("uc_purchase_days") > 0) & (F.col("uc_days_since_last_purchase") <= lookback))
        .select("user_id", "category_id")
        .join(cat_later, ["user_id", "category_id"], "left")
        .select(
            "user_id",
            F.lit(None).cast("string").alias("item_id"),
            F.col("category_id").alias("day_category_id"),
            F.lit("repurchase_category").alias("row_kind"),
            *_horizon_label(within, ds, observed_until),
        )
    )
    no_exposure_labels = (
        F.lit(None).cast("int").alias("click"),
        F.lit(None).cast("int").alias("purchase"),
        F.lit(False).alias("is_sampled_negative"),
    )
    return (
        items.withColumn("day_category_id", F.lit(None).cast("string"))
        .unionByName(cats)
        .select("*", *no_exposure_labels)
    )
