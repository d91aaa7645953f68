"""Baselines the model must beat, scored on the same held-out rows as the model.

Binary tasks get score columns on the day's training_examples rows (named by
``metrics_table.score_column``); item recommendation gets a score tile over the catalogue for
``predict.top_k``. Everything is as of ds: counts from the feature tables of ds (events strictly
before ds), models fitted on days before ds.

- ``popularity``: the item's interactions (click), purchases (purchase) over the rate window;
  for repurchase, the share of the item's (or the category's) buyers who bought it again;
  recommends the most popular items to everyone.
- ``category_popularity``: the user's own categories first (interactions in the item's category),
  the item's popularity breaking ties; recommends popular items of the user's categories.
- ``als``: Spark MLlib ALS with implicit feedback on (user, item) interaction counts.
- ``logistic_regression`` / ``gbt``: Spark MLlib, one per task, on the model's dense feature
  columns (log1p), trained on the candidate's training window.
- ``recency_frequency``: repurchase only; how close the user's next purchase is due (days since
  the last purchase vs. the user's mean interval in the category), weighted by purchase frequency.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pyspark import StorageLevel
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.feature import IndexToString, StandardScaler, StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.recommendation import ALS
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl.config import Config
from mtl.evaluate.data import RankingTask, Split
from mtl.evaluate.model_metrics import BinaryTask, score_column
from mtl.evaluate.predict import ScoreTile, inner_product
from mtl.schema import (
    INTERACTION_TYPES,
    RATE_WINDOW_DAYS,
    REPURCHASE_HORIZONS_DAYS,
    REPURCHASE_ROW_KINDS,
    dense_columns,
)
from mtl.tables import EVENTS

log = logging.getLogger(__name__)

TabularKind = Literal["logistic_regression", "gbt"]
REPURCHASE_LABELS = tuple(f"repurchase_{n}d" for n in REPURCHASE_HORIZONS_DAYS)


def item_interactions() -> Column:
    """An item's interactions over the rate window before ds (item feature columns)."""
    return sum((F.col(f"i_{t}_{RATE_WINDOW_DAYS}d") for t in INTERACTION_TYPES), F.lit(0.0))


def item_purchases() -> Column:
    return F.col(f"i_purchase_{RATE_WINDOW_DAYS}d")


@dataclass(frozen=True)
class Popularity:
    """Item popularity as of ds, from item_features: interactions per item, and the catalogue's
    largest interaction and purchase counts (they scale popularity into [0, 1))."""

    interactions: dict[str, float]
    max_interactions: float
    max_purchases: float

    @classmethod
    def of(cls, split: Split) -> Popularity:
        rows = split.items.select("item_id", item_interactions().alias("n"), item_purchases().alias("p")).collect()
        return cls(
            {r.item_id: float(r.n) for r in rows},
            max((float(r.n) for r in rows), default=0.0),
            max((float(r.p) for r in rows), default=0.0),
        )


# ---------------------------------------------------------------------------------------------
# popularity


def add_popularity(df: DataFrame, split: Split, smoothing_strength: float) -> DataFrame:
    """popularity__<label> for click, purchase and repurchase.

    Repurchase: an item row scores the item's repurchase rate (features: smoothed share of its
    buyers who bought on two or more days); a category row the same share over the category's
    buyers, from user_category_features of ds, smoothed towards the overall share alike."""
    buyers = split.user_categories.where("uc_purchase_days >= 1").select(
        "category_id", (F.col("uc_purchase_days") >= 2).cast("double").alias("again")
    )
    prior = buyers.agg(F.avg("again")).first()[0] or 0.0
    k = smoothing_strength
    category_rate = buyers.groupBy("category_id").agg(
        ((F.sum("again") + k * prior) / (F.count(F.lit(1)) + k)).alias("_category_repurchase_rate")
    )
    repurchase = F.when(F.col("row_kind") == "repurchase_item", F.col("i_repurchase_rate")).otherwise(
        F.coalesce(F.col("_category_repurchase_rate"), F.lit(prior))
    )
    return (
        df.join(F.broadcast(category_rate), "category_id", "left")
        .withColumns(
            {
                score_column("popularity", "click"): item_interactions(),
                score_column("popularity", "purchase"): item_purchases(),
                **{score_column("popularity", label): repurchase for label in REPURCHASE_LABELS},
            }
        )
        .drop("_category_repurchase_rate")
    )


def popularity_tile(popularity: Popularity, task: RankingTask) -> ScoreTile:
    counts = np.array([popularity.interactions[i] for i in task.items], dtype=np.float32)
    return inner_product(np.ones((len(task.users), 1), np.float32), counts[:, None])


# ---------------------------------------------------------------------------------------------
# per-category popularity


def add_category_popularity(df: DataFrame, popularity: Popularity) -> DataFrame:
    """category_popularity__click / __purchase: the user's interactions (purchases) in the row's
    category over the rate window, plus the item's popularity scaled into [0, 1): categories the
    user engages with first, popular items first within them."""
    return df.withColumns(
        {
            score_column("category_popularity", "click"): F.col(f"uc_interactions_{RATE_WINDOW_DAYS}d")
            + item_interactions() / (popularity.max_interactions + 1.0),
            score_column("category_popularity", "purchase"): F.col(f"uc_purchases_{RATE_WINDOW_DAYS}d")
            + item_purchases() / (popularity.max_purchases + 1.0),
        }
    )


def category_popularity_tile(split: Split, popularity: Popularity, task: RankingTask) -> ScoreTile:
    """The same order over the catalogue: affinity[user, category of item] + scaled popularity."""
    scaled = torch.tensor([popularity.interactions[i] / (popularity.max_interactions + 1.0) for i in task.items])
    categories, item_category = np.unique(task.item_categories.astype(str), return_inverse=True)
    category_code = {c: j for j, c in enumerate(categories)}
    user_row = {u: r for r, u in enumerate(task.users)}
    affinity = (
        split.user_categories.where(F.col(f"uc_interactions_{RATE_WINDOW_DAYS}d") > 0)
        .join(task.user_ids, "user_id")
        .select("user_id", "category_id", F.col(f"uc_interactions_{RATE_WINDOW_DAYS}d").alias("n"))
        .collect()
    )
    rows = np.array([user_row[r.user_id] for r in affinity if r.category_id in category_code], dtype=np.int64)
    cols = np.array([category_code[r.category_id] for r in affinity if r.category_id in category_code], dtype=np.int64)
    values = np.array([r.n for r in affinity if r.category_id in category_code], dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    rows, cols, values = rows[order], cols[order], values[order]
    item_category_t = torch.from_numpy(item_category)

    def tile(block: np.ndarray) -> torch.Tensor:
        dense = torch.zeros((len(block), len(categories)))
        lo, hi = np.searchsorted(rows, [block[0], block[-1] + 1])
        dense[torch.from_numpy(rows[lo:hi] - block[0]), torch.from_numpy(cols[lo:hi])] = torch.from_numpy(values[lo:hi])
        return dense[:, item_category_t] + scaled

    return tile


# ---------------------------------------------------------------------------------------------
# recency / frequency heuristic for repurchase


def add_recency_frequency(df: DataFrame) -> DataFrame:
    """recency_frequency__repurchase_<N>d: log(1 + purchase days) / (1 + miss / N), where miss is
    how many days the next purchase, due one mean interval after the last, falls outside
    [ds, ds + N). Item rows use the pair's last purchase and frequency, category rows the
    category's; the interval is the user's mean in the category either way (a user with one
    purchase there has the history cap as interval, so is never due)."""
    is_item = F.col("row_kind") == "repurchase_item"
    days_since = F.when(is_item, F.col("ui_days_since_last_purchase")).otherwise(F.col("uc_days_since_last_purchase"))
    frequency = F.when(is_item, F.col("ui_purchase_days")).otherwise(F.col("uc_purchase_days"))
    due_in = F.col("uc_mean_purchase_interval_days") - days_since
    scores = {}
    for n in REPURCHASE_HORIZONS_DAYS:
        miss = F.greatest(F.lit(0.0), -due_in, due_in - (n - 1))
        scores[score_column("recency_frequency", f"repurchase_{n}d")] = F.log1p(frequency) / (1.0 + miss / n)
    return df.withColumns(scores)


# ---------------------------------------------------------------------------------------------
# logistic regression / gradient-boosted trees, one per task

_TAB = "_tab_"  # prefix of the temporary columns


def _tabular_inputs(df: DataFrame) -> DataFrame:
    """log1p(max(x, 0)) of every dense column (what the model sees before standardising) and a
    category-row indicator (repurchase rows mix item and category pairs)."""
    return df.withColumns(
        {
            **{f"{_TAB}{c}": F.log1p(F.greatest(F.col(c), F.lit(0.0))) for c in dense_columns()},
            f"{_TAB}category_row": (F.col("row_kind") == "repurchase_category").cast("double"),
        }
    )


def _population(task: BinaryTask) -> Column:
    if task.population == "repurchase":
        return F.col("row_kind").isin(*REPURCHASE_ROW_KINDS)
    return F.col("row_kind") == "exposure"


@dataclass(frozen=True)
class TabularModel:
    kind: TabularKind
    label: str
    model: PipelineModel


def fit_tabular(train: DataFrame, kind: TabularKind, task: BinaryTask, cfg: Config) -> TabularModel:
    """One classifier for ``task.label`` on the labelled rows of its population in ``train``."""
    tc = cfg.evaluation.tabular
    p = f"{_TAB}{kind}_{task.label}_"
    inputs = [f"{_TAB}{c}" for c in dense_columns()] + [f"{_TAB}category_row"]
    assembler = VectorAssembler(inputCols=inputs, outputCol=f"{p}x")
    if kind == "logistic_regression":
        scaler = StandardScaler(inputCol=f"{p}x", outputCol=f"{p}xs", withMean=True, withStd=True)
        classifier = LogisticRegression(featuresCol=f"{p}xs", maxIter=tc.lr_max_iter, regParam=tc.lr_reg_param)
        stages = [assembler, scaler, classifier]
    else:
        classifier = GBTClassifier(
            featuresCol=f"{p}x", maxIter=tc.gbt_max_iter, maxDepth=tc.gbt_max_depth, seed=tc.seed
        )
        stages = [assembler, classifier]
    # Own column names per model, so several models can score the same rows one after another.
    classifier.setLabelCol(f"{p}y").setProbabilityCol(f"{p}prob").setRawPredictionCol(f"{p}raw").setPredictionCol(
        f"{p}pred"
    )
    rows = (
        _tabular_inputs(train.where(_population(task) & F.col(task.label).isNotNull()))
        .withColumn(f"{p}y", F.col(task.label).cast("double"))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        model = Pipeline(stages=stages).fit(rows)
    finally:
        rows.unpersist()
    return TabularModel(kind, task.label, model)


def add_tabular(df: DataFrame, models: Sequence[TabularModel]) -> DataFrame:
    """<kind>__<label>: each model's probability of a positive label."""
    if not models:
        return df
    scored = _tabular_inputs(df)
    for m in models:
        p = f"{_TAB}{m.kind}_{m.label}_"
        scored = m.model.transform(scored).withColumn(
            score_column(m.kind, m.label), vector_to_array(F.col(f"{p}prob"))[1]
        )
    return scored.drop(*[c for c in scored.columns if c.startswith(_TAB)])


# ---------------------------------------------------------------------------------------------
# ALS


def als_tile(spark: SparkSession, cfg: Config, ds: dt.date, events_version: int, task: RankingTask) -> ScoreTile:
    """Fit implicit-feedback ALS on the interactions of the ``als.window_days`` before ds and
    score the catalogue by user x item factors. Users or items ALS never saw rank nothing."""
    ac = cfg.evaluation.als
    events = spark.read.format("delta").option("versionAsOf", events_version).load(EVENTS.path(cfg.storage))
    pairs = (
        events.where(
            F.col("event_date").between(F.lit(ds - dt.timedelta(days=ac.window_days)), F.lit(ds - dt.timedelta(days=1)))
        )
        .where(F.col("event_type").isin(*INTERACTION_TYPES))
        .groupBy("user_id", "item_id")
        .agg(F.count(F.lit(1)).cast("float").alias("interactions"))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        users = StringIndexer(inputCol="user_id", outputCol="u").fit(pairs)
        items = StringIndexer(inputCol="item_id", outputCol="i").fit(pairs)
        als = ALS(
            rank=ac.rank,
            maxIter=ac.max_iter,
            regParam=ac.reg_param,
            alpha=ac.alpha,
            implicitPrefs=True,
            userCol="u",
            itemCol="i",
            ratingCol="interactions",
            seed=ac.seed,
            coldStartStrategy="drop",
        )
        model = als.fit(items.transform(users.transform(pairs)))
        user_factors = dict(
            IndexToString(inputCol="id", outputCol="user_id", labels=users.labels)
            .transform(model.userFactors)
            .select("user_id", "features")
            .collect()
        )
        item_factors = dict(
            IndexToString(inputCol="id", outputCol="item_id", labels=items.labels)
            .transform(model.itemFactors)
            .select("item_id", "features")
            .collect()
        )
    finally:
        pairs.unpersist()
    log.info("ALS: %d users, %d items, rank %d", len(user_factors), len(item_factors), ac.rank)
    zero = [0.0] * ac.rank
    known_users = np.array([u in user_factors for u in task.users])
    known_items = np.array([i in item_factors for i in task.items])
    return inner_product(
        np.array([user_factors.get(u, zero) for u in task.users], dtype=np.float32).reshape(len(task.users), ac.rank),
        np.array([item_factors.get(i, zero) for i in task.items], dtype=np.float32).reshape(len(task.items), ac.rank),
        known_users,
        known_items,
    )
