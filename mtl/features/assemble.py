"""Model inputs for (user, item) rows: the as-of-D features joined on, defaults, id hashes.

One function serves training examples (build_features) and scoring, so both feed the model
exactly the same columns, filled the same way.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from mtl.features.transforms import Priors, id_hash
from mtl.schema import (
    CANDIDATE_DENSE,
    HISTORY_LENGTH,
    ITEM_DENSE,
    PAD_HASH,
    ROW_KIND_FIELD,
    ROW_KINDS,
    TOP_CATEGORIES,
    USER_CATEGORY_DENSE,
    USER_DENSE,
    USER_ITEM_DENSE,
    dense_columns,
)

DEFAULT_AT_CAP = (
    "u_days_since_last_event",
    "u_days_since_last_purchase",
    "u_mean_purchase_interval_days",
    "i_days_since_last_event",
    "uc_days_since_last_purchase",
    "uc_mean_purchase_interval_days",
    "ui_days_since_last_purchase",
)


def feature_defaults(p: Priors, cap: int) -> dict[str, float]:
    """Values for users, items and pairs with no history before D: never null.

    Saved per ds in feature_stats (``default_value``) so scoring fills gaps identically.
    """
    defaults = {c: 0.0 for c in dense_columns()}
    for col in DEFAULT_AT_CAP:
        defaults[col] = float(cap)
    defaults["u_ctr_30d"] = defaults["i_ctr_30d"] = defaults["uc_ctr_30d"] = p.ctr if p.has_impressions else 0.0
    defaults["u_cvr_30d"] = defaults["i_cvr_30d"] = p.cvr
    defaults["i_repurchase_rate"] = p.repurchase_rate
    return defaults


def _padded_hashes(ids: Column, length: int) -> Column:
    """Fixed-length array of id hashes, padded with PAD_HASH (Petastorm and the model want fixed shapes)."""
    hashed = F.transform(F.coalesce(ids, F.array().cast("array<string>")), lambda x: id_hash(x))
    return F.slice(F.concat(hashed, _pad(length)), 1, length)


def _user_side(users: DataFrame) -> DataFrame:
    """Per user, once: history and favourite-category hashes (the costly part of the inputs)."""
    empty = F.array().cast("array<string>")
    return users.select(
        "user_id",
        _padded_hashes(F.col("hist_item_ids"), HISTORY_LENGTH).alias("hist_item_hashes"),
        _padded_hashes(F.col("hist_category_ids"), HISTORY_LENGTH).alias("hist_category_hashes"),
        F.size(F.coalesce("hist_item_ids", empty)).cast("int").alias("hist_length"),
        _padded_hashes(F.col("u_top_category_ids"), TOP_CATEGORIES).alias("u_top_category_hashes"),
        *USER_DENSE,
    )


def _pad(length: int) -> Column:
    return F.array_repeat(F.lit(PAD_HASH).cast("long"), length)


def model_inputs(
    rows: DataFrame,
    users: DataFrame,
    items: DataFrame,
    user_cats: DataFrame,
    user_items: DataFrame,
    defaults: dict[str, float],
    passthrough: tuple[str, ...] = (),
) -> DataFrame:
    """Join the as-of-D features onto ``rows`` (user_id, item_id, day_category_id, row_kind and
    the ``passthrough`` columns); fill defaults; add id hashes and padded sequences.

    ``day_category_id`` is the row's category when the item has no features (new items) or
    there is no item (category rows).

    Scoring joins millions of candidate rows, so the narrow item and pair sides join first and
    the wide user side (its sequences hashed once per user, not once per row) joins last: the
    shuffles before it move narrow rows."""
    item_side = items.select("item_id", F.col("category_id").alias("item_category_id"), *ITEM_DENSE)
    # Only candidate rows carry the sources' scores; every other row gets their default.
    rows = rows.withColumns({c: F.lit(None).cast("double") for c in CANDIDATE_DENSE if c not in rows.columns})
    joined = (
        rows.join(item_side, "item_id", "left")
        .withColumn("category_id", F.coalesce("item_category_id", "day_category_id"))
        .join(user_cats.select("user_id", "category_id", *USER_CATEGORY_DENSE), ["user_id", "category_id"], "left")
        .join(user_items.select("user_id", "item_id", *USER_ITEM_DENSE), ["user_id", "item_id"], "left")
        .join(_user_side(users), "user_id", "left")
    )
    return _finish(joined, defaults, passthrough)


def user_inputs(users: DataFrame, defaults: dict[str, float]) -> DataFrame:
    """What ``model_inputs`` gives for one exposure row per user of ``users`` with no item (the
    user tower's inputs), built from the user side alone: joining ``users`` to itself would move
    every user's wide row once more (as a broadcast or a shuffle) for nothing."""
    null = F.lit(None)
    joined = _user_side(users).select(
        "*",
        null.cast("string").alias("item_id"),
        null.cast("string").alias("category_id"),
        F.lit("exposure").alias("row_kind"),
        *[null.cast("double").alias(c) for c in dense_columns() if c not in USER_DENSE],
    )
    return _finish(joined, defaults, ())


def _finish(joined: DataFrame, defaults: dict[str, float], passthrough: tuple[str, ...]) -> DataFrame:
    """The model's columns of rows with their features joined on: id hashes, padded sequences
    and dense values, each missing one filled."""
    # 1-based, as mtl.schema.row_kind_code
    kind_code = F.array_position(F.array(*[F.lit(k) for k in ROW_KINDS]), F.col("row_kind")).cast("long")
    return joined.select(
        "user_id",
        "item_id",
        "category_id",
        "row_kind",
        id_hash(F.col("user_id")).alias("user_hash"),
        id_hash(F.col("item_id")).alias("item_hash"),
        id_hash(F.col("category_id")).alias("category_hash"),
        kind_code.alias(ROW_KIND_FIELD),
        F.coalesce("hist_item_hashes", _pad(HISTORY_LENGTH)).alias("hist_item_hashes"),
        F.coalesce("hist_category_hashes", _pad(HISTORY_LENGTH)).alias("hist_category_hashes"),
        F.coalesce("hist_length", F.lit(0)).alias("hist_length"),
        F.coalesce("u_top_category_hashes", _pad(TOP_CATEGORIES)).alias("u_top_category_hashes"),
        *[F.coalesce(F.col(c).cast("double"), F.lit(defaults[c])).alias(c) for c in dense_columns()],
        *passthrough,
    )
