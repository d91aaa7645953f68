"""Candidate sources as DataFrame transforms, each as of ds (events strictly before ds).

Every source starts from the same weighted interactions (``interactions``): the interactions of
the ``candidates.window_days`` before ds, each weighing its event type's weight, halved every
``recency_half_life_days`` of age (an event of the day before ds weighs its full type weight).

- ``revisits``: the user's own items, by summed weight (recency, frequency and event type at once).
- ``co_visitation``: item-to-item neighbours, the ``item_neighbours`` table. Two items co-visit
  when one user interacted with both within ``co_visitation.window_hours`` (their latest
  interactions); each such user adds sqrt(w_a x w_b) / ln(2 + n_u), n_u the user's distinct
  items, so a heavy user's many pairs count less; the sum is divided by sqrt(users of a x users
  of b), so the most popular items do not become everyone's neighbour.
- ``neighbours_of_recent``: the neighbours of the user's top ``recent_items`` revisit items,
  sum over them of revisit weight x neighbour score.
- ``popular``: the items of largest summed weight, the same list for every active user.
- ``category_popular``: the user's ``top_categories`` categories (by the user's weight there),
  each category's items by their share of its weight; score = the user's weight in the category
  x the item's share.

A source's output is (user_id, item_id, score, rank) with rank 1..n per user by score (ties: by
item_id). ``union`` joins them into one row per (user, item) with each source's rank and score.
"""

from __future__ import annotations

import datetime as dt
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from mtl.config import CandidatesConfig, CoVisitationConfig
from mtl.schema import TABLE_CANDIDATE_SOURCES

SOURCE_COLUMNS = ("user_id", "item_id", "score", "rank")


def interactions(events: DataFrame, ds: dt.date, cc: CandidatesConfig) -> DataFrame:
    """(user_id, item_id, category_id, event_ts, weight) of the weighted interactions before ds."""
    start = ds - dt.timedelta(days=cc.window_days)
    type_weight = F.create_map(*[F.lit(x) for pair in sorted(cc.event_weights.items()) for x in pair])
    age = F.datediff(F.lit(ds), F.col("event_date"))
    decay = F.pow(F.lit(0.5), (age - 1) / F.lit(cc.recency_half_life_days))
    return (
        events.where((F.col("event_date") >= F.lit(start)) & (F.col("event_date") < F.lit(ds)))
        .where(F.col("event_type").isin(*cc.event_weights))
        .select(
            "user_id", "item_id", "category_id", "event_ts", (type_weight[F.col("event_type")] * decay).alias("weight")
        )
    )


def top_per(df: DataFrame, key: str, n: int, score: str = "score", tie: str = "item_id") -> DataFrame:
    """The ``n`` rows of largest ``score`` per ``key`` with ``rank`` 1..n (ties: smallest ``tie``)."""
    order = Window.partitionBy(key).orderBy(F.col(score).desc(), F.col(tie).asc())
    return df.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= n)


def revisits(weighted: DataFrame, n: int) -> DataFrame:
    pairs = weighted.groupBy("user_id", "item_id").agg(F.sum("weight").alias("score"))
    return top_per(pairs, "user_id", n).select(*SOURCE_COLUMNS)


def co_visitation(weighted: DataFrame, cv: CoVisitationConfig) -> DataFrame:
    """(item_id, neighbour_id, score, co_users, rank): the top ``neighbours_per_item`` per item."""
    per_pair = weighted.groupBy("user_id", "item_id").agg(
        F.sum("weight").alias("w"), F.max(F.unix_timestamp("event_ts")).alias("t")
    )
    latest = top_per(per_pair, "user_id", cv.max_items_per_user, score="t").withColumn(
        "n_u", F.count(F.lit(1)).over(Window.partitionBy("user_id"))
    )
    item_users = latest.groupBy("item_id").agg(F.count(F.lit(1)).alias("users"))
    a = latest.select("user_id", "n_u", F.col("item_id").alias("a"), F.col("w").alias("w_a"), F.col("t").alias("t_a"))
    b = latest.select("user_id", F.col("item_id").alias("b"), F.col("w").alias("w_b"), F.col("t").alias("t_b"))
    pairs = a.join(b, "user_id").where(
        (F.col("a") != F.col("b")) & (F.abs(F.col("t_a") - F.col("t_b")) <= F.lit(cv.window_hours * 3600.0))
    )
    summed = pairs.groupBy("a", "b").agg(
        F.sum(F.sqrt(F.col("w_a") * F.col("w_b")) / F.log(F.col("n_u") + 2.0)).alias("raw"),
        F.count(F.lit(1)).alias("co_users"),
    )
    users_a = item_users.select(F.col("item_id").alias("a"), F.col("users").alias("users_a"))
    users_b = item_users.select(F.col("item_id").alias("b"), F.col("users").alias("users_b"))
    scored = (
        summed.join(users_a, "a")
        .join(users_b, "b")
        .select(
            F.col("a").alias("item_id"),
            F.col("b").alias("neighbour_id"),
            (F.col("raw") / F.sqrt(F.col("users_a") * F.col("users_b"))).alias("score"),
            F.col("co_users").cast("int").alias("co_users"),
        )
    )
    ranked = top_per(scored, "item_id", cv.neighbours_per_item, tie="neighbour_id")
    return ranked.select("item_id", "neighbour_id", "score", "co_users", F.col("rank").cast("int").alias("rank"))


def neighbours_of_recent(user_revisits: DataFrame, neighbours: DataFrame, recent_items: int, n: int) -> DataFrame:
    recent = user_revisits.where(F.col("rank") <= recent_items).select(
        "user_id", F.col("item_id").alias("seed"), F.col("score").alias("seed_score")
    )
    links = neighbours.select(F.col("item_id").alias("seed"), F.col("neighbour_id").alias("item_id"), "score")
    summed = (
        recent.join(links, "seed")
        .groupBy("user_id", "item_id")
        .agg(F.sum(F.col("seed_score") * F.col("score")).alias("score"))
    )
    return top_per(summed, "user_id", n).select(*SOURCE_COLUMNS)


def popular(weighted: DataFrame, users: DataFrame, n: int) -> DataFrame:
    """The ``n`` most popular items for each of ``users`` (user_id): a broadcast of n rows, no shuffle of users."""
    items = weighted.groupBy("item_id").agg(F.sum("weight").alias("score"))
    top = top_per(items.withColumn("_all", F.lit(0)), "_all", n).drop("_all")
    return users.select("user_id").distinct().crossJoin(F.broadcast(top)).select(*SOURCE_COLUMNS)


def category_popular(weighted: DataFrame, top_categories: int, n: int) -> DataFrame:
    known = weighted.where(F.col("category_id").isNotNull())
    user_categories = top_per(
        known.groupBy("user_id", "category_id").agg(F.sum("weight").alias("score")),
        "user_id",
        top_categories,
        tie="category_id",
    ).select("user_id", "category_id", F.col("score").alias("user_weight"))
    in_category = known.groupBy("category_id", "item_id").agg(F.sum("weight").alias("score"))
    shares = top_per(
        in_category.withColumn("score", F.col("score") / F.sum("score").over(Window.partitionBy("category_id"))),
        "category_id",
        n,
    ).select("category_id", "item_id", F.col("score").alias("share"))
    summed = (
        user_categories.join(shares, "category_id")
        .groupBy("user_id", "item_id")
        .agg(F.sum(F.col("user_weight") * F.col("share")).alias("score"))
    )
    return top_per(summed, "user_id", n).select(*SOURCE_COLUMNS)


def union(sources: dict[str, DataFrame]) -> DataFrame:
    """One row per (user_id, item_id) proposed by any of ``sources`` (name -> source output):
    ``<name>_rank`` and ``<name>_score`` of every source (null where it did not propose the item)
    and ``sources``, the names that did, in TABLE_CANDIDATE_SOURCES order."""
    unknown = sorted(set(sources) - set(TABLE_CANDIDATE_SOURCES))
    if unknown:
        raise ValueError(f"unknown candidate sources {unknown}")
    stacked = reduce(
        DataFrame.unionByName,
        [df.select("user_id", "item_id", F.lit(name).alias("source"), "rank", "score") for name, df in sources.items()],
    )
    columns: list[Column] = []
    for name in TABLE_CANDIDATE_SOURCES:
        mine = F.col("source") == name
        columns += [
            F.max(F.when(mine, F.col("rank"))).cast("int").alias(f"{name}_rank"),
            F.max(F.when(mine, F.col("score"))).cast("double").alias(f"{name}_score"),
        ]
    merged = stacked.groupBy("user_id", "item_id").agg(*columns)
    names = F.array(*[F.when(F.col(f"{s}_rank").isNotNull(), F.lit(s)) for s in TABLE_CANDIDATE_SOURCES])
    return merged.withColumn("sources", F.filter(names, lambda s: s.isNotNull()))


def fused_score(weights: dict[str, float], rank_offset: float, sources: tuple[str, ...]) -> Column:
    """The source_union baseline's hand-made rule: sum of weight / (rank_offset + rank) over the
    ``sources`` (names with a ``<name>_rank`` column) that proposed the item."""
    terms = [
        F.coalesce(F.lit(weights.get(s, 0.0)) / (F.lit(rank_offset) + F.col(f"{s}_rank")), F.lit(0.0))
        for s in sources
        if weights.get(s, 0.0) > 0
    ]
    return reduce(lambda x, y: x + y, terms, F.lit(0.0))
