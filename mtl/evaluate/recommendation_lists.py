"""The recommendations task: the list the score job would publish for the held-out ds (same
candidates, ranking, filters and K, ``mtl.recommend.lists``), made for the ranking task's users,
next to every baseline's list made through the same filters, all against the items each user
clicked on ds.

Lists (model_kind):
- ``multi_task`` / ``champion``: the version's own list: its two-tower top-M and the candidates
  table, ranked by its multi-task heads;
- ``revisits``, ``item_neighbours``, ``two_tower``: one source of the candidate's pool alone, in
  that source's order;
- ``source_union``: the whole pool ordered by a fixed hand-made rule (``candidates.fusion_weights``);
- ``popularity``, ``category_popularity``, ``als``: the retrieval baselines' top-M over the catalogue.

Besides Recall, NDCG and HitRate at each K and MRR, each list has ``coverage`` (distinct items
listed / catalogue items) and ``new_to_user`` (share of listed items the user never interacted
with before ds). Task ``candidates`` holds the recall of each source's whole candidate set and of
their union (``recall``, no K), and the mean candidates per user (``per_user``): the most any
ranking of the pool can reach.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Optional

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl import metric_functions as M
from mtl.candidates.sources import fused_score
from mtl.config import Config
from mtl.evaluate.data import RankingTask
from mtl.evaluate.model_metrics import (
    CANDIDATES,
    RECOMMENDATIONS,
    MetricRow,
    Scorer,
    finite_or_none,
    ranking_metric_rows,
)
from mtl.evaluate.predict import ScoreTile, top_k
from mtl.recommend import lists
from mtl.registry import Artifact
from mtl.schema import CANDIDATE_SOURCES

log = logging.getLogger(__name__)

# Sources whose order alone is a baseline list (popular items have their own baseline, popularity).
SOURCE_BASELINES = ("revisits", "item_neighbours", "two_tower")


def list_rows(
    spark: SparkSession,
    cfg: Config,
    ds: dt.date,
    task: RankingTask,
    versions: Mapping[str, Optional[Artifact]],
    tiles: Mapping[str, ScoreTile],
) -> tuple[list[MetricRow], dict[str, pd.DataFrame]]:
    """Metric rows of the recommendations and candidates tasks, and each kind's list
    (user_id, rank, item_id) as pandas. ``versions``: multi_task (the candidate) and champion
    (or None); ``tiles``: the retrieval baselines' score tiles over ``task.items``."""
    features = lists.read_features(spark, cfg, ds)
    active = features.users.where(F.col("u_days_since_last_event") <= cfg.scoring.active_days)
    users = active.join(task.user_ids, "user_id", "left_semi")
    frames: dict[str, DataFrame] = {}
    pool_frame = None
    broadcasts = []
    try:
        for kind, artifact in versions.items():
            if artifact is None:
                continue
            ctx = lists.prepare(spark, cfg, ds, artifact, features)
            broadcasts.append(ctx.shipment)
            catalogue = spark.sparkContext.broadcast(lists.embed_catalogue(ctx))
            broadcasts.append(catalogue)
            pool = lists.candidate_pool(ctx, catalogue, users, spark.sparkContext.accumulator(0.0))
            pool = pool.persist(StorageLevel.MEMORY_AND_DISK)
            frames[kind] = lists.model_list(ctx, pool).select(*lists.LIST_COLUMNS)
            if kind != "multi_task":
                continue
            for source in SOURCE_BASELINES:
                ranked = pool.where(F.col(f"{source}_rank").isNotNull())
                by_rank = ranked.select("user_id", "item_id", (-F.col(f"{source}_rank")).alias("score"))
                frames[source] = lists.finish(ctx, by_rank)
            fused = fused_score(cfg.candidates.fusion_weights, cfg.candidates.fusion_rank_offset, CANDIDATE_SOURCES)
            frames["source_union"] = lists.finish(ctx, pool.select("user_id", "item_id", fused.alias("score")))
            for kind_, tile in tiles.items():
                frames[kind_] = lists.finish(ctx, _tile_candidates(spark, tile, task, cfg.scoring.candidates))
            pool_frame = pool.select("user_id", "item_id", *[f"{s}_rank" for s in CANDIDATE_SOURCES]).toPandas()
        if not frames:
            return [], {}
        stacked = None
        for kind, df in frames.items():
            part = df.select(F.lit(kind).alias("kind"), "user_id", "rank", "item_id")
            stacked = part if stacked is None else stacked.unionByName(part)
        collected = stacked.toPandas()
    finally:
        for broadcast in broadcasts:
            broadcast.destroy()
        spark.catalog.clearCache()

    seen = features.user_items.join(task.user_ids, "user_id").select("user_id", "item_id").toPandas()
    rows: list[MetricRow] = []
    by_kind = {kind: part for kind, part in collected.groupby("kind", sort=False)}
    for kind in frames:
        listed = by_kind.get(kind, collected.iloc[:0])
        ranked = ranked_array(listed, task, cfg.scoring.k)
        version = versions.get(kind)
        scorer = Scorer(kind, False, version.version if version is not None else None)
        rows += ranking_metric_rows(scorer, ranked, task.clicked, cfg.evaluation.ks, task_name=RECOMMENDATIONS)
        rows += _list_shape_rows(scorer, listed, seen, len(task.items), len(task.users))
    if pool_frame is not None:
        rows += candidate_recall_rows(pool_frame, task)
    return rows, by_kind


def ranked_array(listed: pd.DataFrame, task: RankingTask, k: int) -> np.ndarray:
    """[users of the task, k] catalogue indices of each user's list by rank; -1 pads."""
    out = np.full((len(task.users), k), -1, dtype=np.int64)
    if listed.empty:
        return out
    rows = pd.Index(task.users).get_indexer(listed["user_id"])
    cols = listed["rank"].to_numpy(dtype=np.int64) - 1
    keep = (rows >= 0) & (cols < k)
    out[rows[keep], cols[keep]] = pd.Index(task.items).get_indexer(listed["item_id"])[keep]
    return out


def candidate_recall_rows(pool: pd.DataFrame, task: RankingTask) -> list[MetricRow]:
    """Recall of each source's candidates and of the whole pool, over the task's users."""
    rows = []
    for source in (*CANDIDATE_SOURCES, "union"):
        mine = pool if source == "union" else pool[pool[f"{source}_rank"].notna()]
        width = max(int(mine.groupby("user_id").size().max()) if len(mine) else 1, 1)
        ranked = np.full((len(task.users), width), -1, dtype=np.int64)
        user_rows = pd.Index(task.users).get_indexer(mine["user_id"])
        position = mine.groupby("user_id").cumcount().to_numpy()
        known = user_rows >= 0
        ranked[user_rows[known], position[known]] = pd.Index(task.items).get_indexer(mine["item_id"])[known]
        values = M.ranking_metrics(ranked, task.clicked, (width,))
        users = int(values["users"])
        rows += [
            MetricRow(source, CANDIDATES, "recall", None, finite_or_none(values[f"recall_at_{width}"]), users, None),
            MetricRow(source, CANDIDATES, "per_user", None, len(mine) / max(len(task.users), 1), users, None),
        ]
    return rows


def _list_shape_rows(
    scorer: Scorer, listed: pd.DataFrame, seen: pd.DataFrame, catalogue_items: int, users: int
) -> list[MetricRow]:
    coverage = listed["item_id"].nunique() / catalogue_items if catalogue_items else None
    if listed.empty:
        new = None
    else:
        marked = listed.merge(seen.drop_duplicates(), on=["user_id", "item_id"], how="left", indicator=True)
        new = float((marked["_merge"] == "left_only").mean())
    return [
        MetricRow(scorer.kind, RECOMMENDATIONS, "coverage", None, coverage, users, scorer.scored_version),
        MetricRow(scorer.kind, RECOMMENDATIONS, "new_to_user", None, new, users, scorer.scored_version),
    ]


def _tile_candidates(spark: SparkSession, tile: ScoreTile, task: RankingTask, m: int) -> DataFrame:
    """A retrieval baseline's top-m per task user as (user_id, item_id, score = -position)."""
    ranked = top_k(tile, len(task.users), len(task.items), m)
    user_rows, position = np.nonzero(ranked >= 0)
    frame = pd.DataFrame(
        {
            "user_id": task.users[user_rows].astype(str),
            "item_id": task.items[ranked[user_rows, position]].astype(str),
            "score": -position.astype(np.float64),
        }
    )
    return spark.createDataFrame(frame, "user_id string, item_id string, score double")
