"""Point-in-time feature transforms: DataFrame (events) in, DataFrames (features) out.

Everything "as of D" is computed from events strictly before D. The plan reads ``events`` twice
(the history window before D and the label window from D on, disjoint date ranges) and
aggregates in three steps so no exact distinct count needs an Expand:

  events before D -> daily grain (user, item, day) -> pairs (user, item) -> items
                                                   -> users, (user, category)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from mtl.config import FeaturesConfig
from mtl.schema import (
    EVENT_TYPES,
    HISTORY_LENGTH,
    INTERACTION_TYPES,
    PAD_HASH,
    RATE_WINDOW_DAYS,
    REPURCHASE_HORIZONS_DAYS,
    TOP_CATEGORIES,
    USER_ITEM_DENSE,
    WINDOWS_DAYS,
)

AGE = "days_ago"  # 1 for the day before D, 2 for the day before that, ...


@dataclass(frozen=True)
class Priors:
    """Global rates over the rate window, the targets the per-entity rates are smoothed towards."""

    ctr: float
    cvr: float
    repurchase_rate: float
    has_impressions: bool


def id_hash(col: Column) -> Column:
    """64-bit id hash the model buckets; PAD_HASH for a missing id."""
    return F.when(col.isNull(), F.lit(PAD_HASH).cast("long")).otherwise(F.xxhash64(col))


def _in_window(w: int) -> Column:
    return F.col(AGE) <= w


def _sum_if(cond: Column, value: Column) -> Column:
    return F.coalesce(F.sum(F.when(cond, value)), F.lit(0))


def _smoothed(hits: Column, trials: Column, prior: float, strength: float) -> Column:
    rate = (hits + F.lit(strength * prior)) / (trials + F.lit(strength))
    return F.least(F.greatest(rate, F.lit(0.0)), F.lit(1.0))


def history(events: DataFrame, ds: dt.date, history_days: int) -> DataFrame:
    """Events in [D - history_days, D) with their age in days."""
    start = ds - dt.timedelta(days=history_days)
    return events.where((F.col("event_date") >= F.lit(start)) & (F.col("event_date") < F.lit(ds))).withColumn(
        AGE, F.datediff(F.lit(ds), F.col("event_date"))
    )


def daily_grain(hist: DataFrame) -> DataFrame:
    """One row per (user, item, day): counts per event type, spend, prices, last times."""
    is_purchase = F.col("event_type") == "purchase"
    return hist.groupBy("user_id", "item_id", "event_date", AGE).agg(
        *[F.sum((F.col("event_type") == t).cast("int")).alias(f"n_{t}") for t in EVENT_TYPES],
        F.max("category_id").alias("category_id"),
        _sum_if(is_purchase, F.col("price") * F.coalesce(F.col("quantity"), F.lit(1))).cast("double").alias("spend"),
        F.sum("price").alias("price_sum"),
        F.count("price").alias("price_n"),
        F.max(F.when(F.col("event_type") != "impression", F.col("event_ts"))).alias("last_interaction_ts"),
        F.max(F.when(is_purchase, F.col("event_ts"))).alias("last_purchase_ts"),
        F.min("event_ts").alias("first_ts"),
    )


def _interactions() -> Column:
    return sum((F.col(f"n_{t}") for t in INTERACTION_TYPES), F.lit(0))


def _window_counts(prefix: str) -> list[Column]:
    return [
        _sum_if(_in_window(w), F.col(f"n_{t}")).cast("double").alias(f"{prefix}_{t}_{w}d")
        for t in EVENT_TYPES
        for w in WINDOWS_DAYS
    ]


def _days_since_purchase(cap: int) -> Column:
    return F.coalesce(F.min(F.when(F.col("n_purchase") > 0, F.col(AGE))), F.lit(cap)).cast("double")


def _purchase_interval(days: Column, first_age: Column, last_age: Column, cap: int) -> Column:
    """Mean days between purchase days; the cap when there are fewer than two."""
    return F.when(days >= 2, (first_age - last_age) / (days - 1)).otherwise(F.lit(float(cap)))


def priors(grain: DataFrame, pairs: DataFrame) -> Priors:
    recent = grain.where(_in_window(RATE_WINDOW_DAYS))
    row = recent.agg(
        F.sum("n_impression").alias("impressions"),
        F.sum("n_click").alias("clicks"),
        F.sum(F.col("n_view") + F.col("n_click")).alias("engaged"),
        F.sum("n_purchase").alias("purchases"),
    ).first()
    # The repurchase prior: share of (user, item) pairs bought on two or more days.
    rep = pairs.agg(
        F.sum((F.col("ui_purchase_days") >= 1).cast("long")).alias("buyers"),
        F.sum((F.col("ui_purchase_days") >= 2).cast("long")).alias("repeat"),
    ).first()
    impressions = row["impressions"] or 0
    engaged = row["engaged"] or 0
    return Priors(
        ctr=min(1.0, (row["clicks"] or 0) / impressions) if impressions else 0.0,
        cvr=min(1.0, (row["purchases"] or 0) / engaged) if engaged else 0.0,
        repurchase_rate=(rep["repeat"] or 0) / rep["buyers"] if rep["buyers"] else 0.0,
        has_impressions=impressions > 0,
    )


def _ctr(clicks: Column, impressions: Column, p: Priors, k: float) -> Column:
    # Without impressions in the log a click-through rate is undefined: 0 for everyone.
    return _smoothed(clicks, impressions, p.ctr, k) if p.has_impressions else F.lit(0.0)


def user_item_pairs(grain: DataFrame, cap: int) -> DataFrame:
    """(user, item) aggregates: window counts, purchase days, last interaction, category."""
    return grain.groupBy("user_id", "item_id").agg(
        *_window_counts("ui"),
        F.max("category_id").alias("category_id"),
        F.max(_in_window(RATE_WINDOW_DAYS) & (_interactions() > 0)).alias("engaged_30d"),
        F.max(_in_window(RATE_WINDOW_DAYS) & (F.col("n_purchase") > 0)).alias("bought_30d"),
        F.sum((F.col("n_purchase") > 0).cast("int")).alias("ui_purchase_days"),
        _days_since_purchase(cap).alias("ui_days_since_last_purchase"),
        _sum_if(_in_window(RATE_WINDOW_DAYS), _interactions()).cast("double").alias("ui_interactions_30d"),
        F.max("last_interaction_ts").alias("last_interaction_ts"),
        F.max("last_purchase_ts").alias("last_purchase_ts"),
        F.sum("price_sum").alias("price_sum"),
        F.sum("price_n").alias("price_n"),
        F.min("first_ts").alias("first_ts"),
        F.min(AGE).alias("last_age"),
    )


def user_item_features(pairs: DataFrame) -> DataFrame:
    """The published (user, item) facts: what scoring joins onto candidate pairs."""
    return pairs.select(
        "user_id",
        "item_id",
        "category_id",
        *USER_ITEM_DENSE,
        F.col("last_interaction_ts").alias("ui_last_interaction_ts"),
        F.col("last_purchase_ts").alias("ui_last_purchase_ts"),
    )


def item_features(pairs: DataFrame, ds: dt.date, p: Priors, cfg: FeaturesConfig) -> DataFrame:
    k = cfg.smoothing_strength
    agg = pairs.groupBy("item_id").agg(
        *[F.sum(f"ui_{t}_{w}d").alias(f"i_{t}_{w}d") for t in EVENT_TYPES for w in WINDOWS_DAYS],
        F.max_by("category_id", F.when(F.col("category_id").isNotNull(), F.col("last_interaction_ts"))).alias(
            "category_id"
        ),
        F.sum(F.col("engaged_30d").cast("long")).alias("i_users_30d"),
        F.sum(F.col("bought_30d").cast("long")).alias("i_buyers_30d"),
        F.sum((F.col("ui_purchase_days") >= 1).cast("long")).alias("buyers"),
        F.sum((F.col("ui_purchase_days") >= 2).cast("long")).alias("repeat_buyers"),
        (F.sum("price_sum") / F.sum("price_n")).alias("i_price"),
        F.min("first_ts").alias("first_seen_ts"),
        F.min("last_age").alias("i_days_since_last_event"),
    )
    return agg.select(
        "item_id",
        "category_id",
        *[F.col(f"i_{t}_{w}d") for t in EVENT_TYPES for w in WINDOWS_DAYS],
        _ctr(F.col("i_click_30d"), F.col("i_impression_30d"), p, k).alias("i_ctr_30d"),
        _smoothed(F.col("i_purchase_30d"), F.col("i_view_30d") + F.col("i_click_30d"), p.cvr, k).alias("i_cvr_30d"),
        F.col("i_users_30d").cast("double").alias("i_users_30d"),
        F.col("i_buyers_30d").cast("double").alias("i_buyers_30d"),
        _smoothed(F.col("repeat_buyers"), F.col("buyers"), p.repurchase_rate, k).alias("i_repurchase_rate"),
        F.coalesce(F.col("i_price"), F.lit(0.0)).alias("i_price"),
        F.datediff(F.lit(ds), F.to_date("first_seen_ts")).cast("double").alias("i_age_days"),
        F.col("i_days_since_last_event").cast("double"),
        F.col("first_seen_ts"),
    )


def user_features(grain: DataFrame, pairs: DataFrame, cats: DataFrame, p: Priors, cfg: FeaturesConfig) -> DataFrame:
    k, cap = cfg.smoothing_strength, cfg.history_days
    recent = _in_window(RATE_WINDOW_DAYS)
    purchase_day = F.when(F.col("n_purchase") > 0, F.col("event_date"))
    base = grain.groupBy("user_id").agg(
        *_window_counts("u"),
        F.size(F.collect_set(F.when(recent, F.col("event_date")))).cast("double").alias("u_active_days_30d"),
        F.min(AGE).cast("double").alias("u_days_since_last_event"),
        _days_since_purchase(cap).alias("u_days_since_last_purchase"),
        F.size(F.collect_set(purchase_day)).alias("purchase_days"),
        F.max(F.when(F.col("n_purchase") > 0, F.col(AGE))).alias("first_purchase_age"),
        F.min(F.when(F.col("n_purchase") > 0, F.col(AGE))).alias("last_purchase_age"),
        _sum_if(recent, F.col("spend")).alias("u_spend_30d"),
        _sum_if(recent, F.col("price_sum")).alias("price_sum_30d"),
        _sum_if(recent, F.col("price_n")).alias("price_n_30d"),
    )
    user = base.select(
        "user_id",
        *[F.col(f"u_{t}_{w}d") for t in EVENT_TYPES for w in WINDOWS_DAYS],
        _ctr(F.col("u_click_30d"), F.col("u_impression_30d"), p, k).alias("u_ctr_30d"),
        _smoothed(F.col("u_purchase_30d"), F.col("u_view_30d") + F.col("u_click_30d"), p.cvr, k).alias("u_cvr_30d"),
        "u_active_days_30d",
        "u_days_since_last_event",
        "u_days_since_last_purchase",
        F.col("purchase_days").cast("double").alias("u_purchase_days"),
        _purchase_interval(F.col("purchase_days"), F.col("first_purchase_age"), F.col("last_purchase_age"), cap)
        .cast("double")
        .alias("u_mean_purchase_interval_days"),
        F.col("u_spend_30d").cast("double"),
        F.when(F.col("price_n_30d") > 0, F.col("price_sum_30d") / F.col("price_n_30d"))
        .otherwise(F.lit(0.0))
        .alias("u_avg_price_30d"),
    )
    return user.join(recent_items(pairs), "user_id", "left").join(top_categories(cats), "user_id", "left")


def recent_items(pairs: DataFrame) -> DataFrame:
    """The user's last HISTORY_LENGTH distinct items before D (and their categories), newest first."""
    ordered = F.slice(
        F.sort_array(
            F.collect_list(
                F.when(
                    F.col("last_interaction_ts").isNotNull(),
                    F.struct(F.col("last_interaction_ts").alias("ts"), F.col("item_id"), F.col("category_id")),
                )
            ),
            asc=False,
        ),
        1,
        HISTORY_LENGTH,
    )
    return (
        pairs.groupBy("user_id")
        .agg(ordered.alias("recent"))
        .select(
            "user_id",
            F.col("recent.item_id").alias("hist_item_ids"),
            F.col("recent.category_id").alias("hist_category_ids"),
        )
    )


def top_categories(cats: DataFrame) -> DataFrame:
    """The user's TOP_CATEGORIES categories by interactions in the rate window (ties: by id)."""
    keyed = F.when(
        F.col(f"uc_interactions_{RATE_WINDOW_DAYS}d") > 0,
        F.struct(
            F.col(f"uc_interactions_{RATE_WINDOW_DAYS}d").alias("n"),
            (-F.xxhash64("category_id")).alias("tie"),
            F.col("category_id"),
        ),
    )
    top = F.slice(F.sort_array(F.collect_list(keyed), asc=False), 1, TOP_CATEGORIES)
    return (
        cats.groupBy("user_id")
        .agg(top.alias("top"))
        .select("user_id", F.col("top.category_id").alias("u_top_category_ids"))
    )


def user_category_features(grain: DataFrame, p: Priors, cfg: FeaturesConfig) -> DataFrame:
    """(user, category) interactions and purchases per window, the click-through rate (the
    user's taste for the category, apart from how often it was shown) and the purchase cycle."""
    cap = cfg.history_days
    with_cat = grain.where(F.col("category_id").isNotNull())
    per_day = with_cat.groupBy("user_id", "category_id", "event_date", AGE).agg(
        F.sum(_interactions()).alias("interactions"),
        F.sum("n_purchase").alias("purchases"),
        F.sum("n_click").alias("clicks"),
        F.sum("n_impression").alias("impressions"),
        F.max("last_purchase_ts").alias("last_purchase_ts"),
    )
    bought = F.col("purchases") > 0
    agg = per_day.groupBy("user_id", "category_id").agg(
        *[
            _sum_if(_in_window(w), F.col("interactions")).cast("double").alias(f"uc_interactions_{w}d")
            for w in WINDOWS_DAYS
        ],
        *[_sum_if(_in_window(w), F.col("purchases")).cast("double").alias(f"uc_purchases_{w}d") for w in WINDOWS_DAYS],
        F.coalesce(F.min(F.when(bought, F.col(AGE))), F.lit(cap)).cast("double").alias("uc_days_since_last_purchase"),
        F.sum(bought.cast("int")).alias("purchase_days"),
        F.max(F.when(bought, F.col(AGE))).alias("first_purchase_age"),
        F.max("last_purchase_ts").alias("uc_last_purchase_ts"),
        _sum_if(_in_window(RATE_WINDOW_DAYS), F.col("clicks")).alias("clicks"),
        _sum_if(_in_window(RATE_WINDOW_DAYS), F.col("impressions")).alias("impressions"),
    )
    interval = _purchase_interval(
        F.col("purchase_days"), F.col("first_purchase_age"), F.col("uc_days_since_last_purchase"), cap
    ).cast("double")
    return agg.select(
        "user_id",
        "category_id",
        *[F.col(f"uc_interactions_{w}d") for w in WINDOWS_DAYS],
        *[F.col(f"uc_purchases_{w}d") for w in WINDOWS_DAYS],
        "uc_days_since_last_purchase",
        F.col("purchase_days").cast("double").alias("uc_purchase_days"),
        interval.alias("uc_mean_purchase_interval_days"),
        F.when(F.col("purchase_days") >= 2, F.col("uc_days_since_last_purchase") / interval)
        .otherwise(F.lit(0.0))
        .alias("uc_purchase_cycle_ratio"),
        _ctr(F.col("clicks"), F.col("impressions"), p, cfg.smoothing_strength).alias("uc_ctr_30d"),
        "uc_last_purchase_ts",
    )


def label_window(events: DataFrame, ds: dt.date) -> DataFrame:
    """Events in [D, D + the longest repurchase horizon): where every label comes from."""
    end = ds + dt.timedelta(days=max(REPURCHASE_HORIZONS_DAYS))
    return events.where((F.col("event_date") >= F.lit(ds)) & (F.col("event_date") < F.lit(end))).withColumn(
        "days_ahead", F.datediff(F.col("event_date"), F.lit(ds))
    )
