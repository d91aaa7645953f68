"""The candidates of ds: every source's proposals for the users active before ds, joined into one
row per (user, item), and the item_neighbours table they use; plus the training rows made from
them (the day's candidates labelled with the day's interactions), so the ranker learns on the
distribution it scores.

build_features writes both tables with the features of the same ds (``mtl.features.job``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from mtl.candidates import sources as src
from mtl.config import Config
from mtl.schema import CANDIDATE_DENSE, INTERACTION_TYPES, TABLE_CANDIDATE_SOURCES

# Hash draws in [0, 1) with this resolution pick the negatives a day keeps.
_DRAW_SLOTS = 1_000_000


@dataclass(frozen=True)
class CandidateFrames:
    neighbours: DataFrame  # item_neighbours rows (no ds column)
    candidates: DataFrame  # candidates rows (no ds column)


def active_users(events: DataFrame, ds: dt.date, active_days: int) -> DataFrame:
    """(user_id) of the users with any event in the ``active_days`` before ds: the users the score
    job scores (user_features' u_days_since_last_event <= active_days)."""
    start = ds - dt.timedelta(days=active_days)
    return (
        events.where((F.col("event_date") >= F.lit(start)) & (F.col("event_date") < F.lit(ds)))
        .select("user_id")
        .distinct()
    )


def compute(events: DataFrame, ds: dt.date, cfg: Config) -> CandidateFrames:
    """Both outputs of ds from ``events`` (any dates: only those before ds are read). The
    weighted interactions, revisits, neighbours and the union are each used more than once and
    are persisted; the caller clears the cache once the outputs are written."""
    cc = cfg.candidates
    keep = StorageLevel.MEMORY_AND_DISK
    users = active_users(events, ds, cfg.scoring.active_days)
    everyone = src.interactions(events, ds, cc).persist(keep)
    weighted = everyone.join(users, "user_id", "left_semi")
    revisits = src.revisits(weighted, max(cc.revisits, cc.recent_items)).persist(keep)
    neighbours = src.co_visitation(everyone, cc.co_visitation).persist(keep)
    proposed = {
        "revisits": revisits.where(F.col("rank") <= cc.revisits),
        "item_neighbours": src.neighbours_of_recent(revisits, neighbours, cc.recent_items, cc.item_neighbours),
        "popular": src.popular(everyone, users, cc.popular),
        "category_popular": src.category_popular(weighted, cc.top_categories, cc.category_popular),
    }
    wanted = {name: df for name, df in proposed.items() if getattr(cc, name) > 0}
    # written to its table and labelled into training rows: computed once
    return CandidateFrames(neighbours, src.union(wanted).persist(keep))


def training_rows(candidates: DataFrame, day: DataFrame, ds: dt.date, negatives_per_positive: int) -> DataFrame:
    """Rows for model_inputs (user_id, item_id, day_category_id, click, purchase,
    is_sampled_negative, the sources' scores): the candidates of ds labelled with ds's events ``day`` (click: any
    interaction with the item on ds; purchase: bought on ds). Every positive is kept and, of the
    negatives, a fixed hash-drawn share that leaves about ``negatives_per_positive`` per positive."""
    engaged = day.groupBy("user_id", "item_id").agg(
        F.max(F.col("event_type").isin(*INTERACTION_TYPES)).cast("int").alias("click"),
        F.max(F.col("event_type") == "purchase").cast("int").alias("purchase"),
    )
    labelled = (
        source_scores(candidates)
        .join(engaged, ["user_id", "item_id"], "left")
        .select(
            "user_id",
            "item_id",
            F.coalesce("click", F.lit(0)).alias("click"),
            F.coalesce("purchase", F.lit(0)).alias("purchase"),
            *CANDIDATE_DENSE,
        )
    )
    counts = labelled.agg(F.sum("click").alias("pos"), F.count(F.lit(1)).alias("n")).first()
    positives, negatives = int(counts["pos"] or 0), int(counts["n"] or 0) - int(counts["pos"] or 0)
    keep = 1.0 if negatives == 0 else min(1.0, negatives_per_positive * positives / negatives)
    draw = (F.abs(F.xxhash64("user_id", "item_id", F.lit(ds.isoformat()))) % _DRAW_SLOTS) / F.lit(float(_DRAW_SLOTS))
    return labelled.where((F.col("click") == 1) | (draw < F.lit(keep))).select(
        "user_id",
        "item_id",
        F.lit(None).cast("string").alias("day_category_id"),
        "click",
        "purchase",
        F.lit(False).alias("is_sampled_negative"),
        *CANDIDATE_DENSE,
    )


def source_score_columns() -> dict[str, Column]:
    """The model's inputs cand_<source>_score from a candidates row's <source>_score columns."""
    return {f"cand_{s}_score": F.col(f"{s}_score") for s in TABLE_CANDIDATE_SOURCES}


def source_scores(candidates: DataFrame) -> DataFrame:
    """(user_id, item_id, cand_<source>_score...) of candidates rows: the model's view of the sources."""
    return candidates.select("user_id", "item_id", *[c.alias(n) for n, c in source_score_columns().items()])
