"""The candidate sources on a small hand-made log: exact re-visit weights, co-visitation scores,
neighbours of recent items, popular items, the union with its source columns, the labelled
training rows, point-in-time correctness, and the tables build_features writes."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from mtl.candidates import pool
from mtl.candidates import sources as src
from mtl.config import load_config
from mtl.features.job import build_features
from mtl.recommend.rank import top_k
from mtl.tables import CANDIDATES, ITEM_NEIGHBOURS, TRAINING_EXAMPLES
from tests.conftest import LOCAL_CONF, TEST_OVERRIDES
from tests.support.tables import read_table, write_events

D = dt.date(2024, 3, 10)
HALF = 0.5 ** (4 / 3)  # the weight of a view 5 days before D (half-life 3 days)

# (user, item, category, event_type, time); u3 only saw an impression, so it is active but has
# no interaction.
LOG = [
    ("u1", "i1", "c1", "view", "2024-03-09 10:00"),
    ("u1", "i2", "c1", "view", "2024-03-09 11:00"),
    ("u1", "i1", "c1", "cart", "2024-03-06 09:00"),  # 4 days before D: 3 x 0.5
    ("u2", "i1", "c1", "view", "2024-03-09 12:00"),
    ("u2", "i3", "c2", "view", "2024-03-09 20:00"),  # 8 h after i1: co-visits it
    ("u2", "i2", "c1", "view", "2024-03-05 12:00"),  # 4 days before the others: co-visits nothing
    ("u3", "i4", "c2", "impression", "2024-03-09 08:00"),
]
# On D and after: never a candidate of D, but the labels of D's training rows.
LATER = [
    ("u1", "i3", "c2", "view", "2024-03-10 09:00"),
    ("u2", "i2", "c1", "purchase", "2024-03-10 10:00"),
    ("u3", "i9", "c9", "view", "2024-03-11 10:00"),
]


def _events(spark, rows):
    records = [
        (u, i, c, kind, dt.datetime.fromisoformat(ts), dt.date.fromisoformat(ts[:10])) for u, i, c, kind, ts in rows
    ]
    return spark.createDataFrame(
        records,
        "user_id string, item_id string, category_id string, event_type string, event_ts timestamp, event_date date",
    )


def _config(*overrides: str):
    return load_config(LOCAL_CONF, TEST_OVERRIDES + list(overrides))


def _by_pair(df, value="score") -> dict:
    return {(r[0], r[1]): r[value] for r in df.collect()}


def test_revisits_weigh_recency_frequency_and_event_type(spark):
    cc = _config().candidates
    got = src.revisits(src.interactions(_events(spark, LOG + LATER), D, cc), 10)
    assert _by_pair(got) == pytest.approx(
        {("u1", "i1"): 2.5, ("u1", "i2"): 1.0, ("u2", "i1"): 1.0, ("u2", "i3"): 1.0, ("u2", "i2"): HALF}
    )
    # ties on score go by item id
    assert _by_pair(got, "rank") == {
        ("u1", "i1"): 1,
        ("u1", "i2"): 2,
        ("u2", "i1"): 1,
        ("u2", "i3"): 2,
        ("u2", "i2"): 3,
    }


def test_co_visitation_counts_pairs_within_the_window(spark):
    cc = _config().candidates
    got = src.co_visitation(src.interactions(_events(spark, LOG), D, cc), cc.co_visitation)
    u1 = math.sqrt(2.5 * 1.0) / math.log(2 + 2)  # u1 has 2 items
    u2 = math.sqrt(1.0 * 1.0) / math.log(2 + 3)  # u2 has 3 items; i2 is 3 days from the others
    expected = {
        ("i1", "i2"): u1 / math.sqrt(2 * 2),  # i1 and i2: two users each
        ("i2", "i1"): u1 / math.sqrt(2 * 2),
        ("i1", "i3"): u2 / math.sqrt(2 * 1),
        ("i3", "i1"): u2 / math.sqrt(2 * 1),
    }
    assert _by_pair(got) == pytest.approx(expected)
    assert _by_pair(got, "co_users") == dict.fromkeys(expected, 1)
    assert _by_pair(got, "rank") == {("i1", "i2"): 1, ("i1", "i3"): 2, ("i2", "i1"): 1, ("i3", "i1"): 1}

    narrow = src.co_visitation(
        src.interactions(_events(spark, LOG), D, cc),
        _config("candidates.co_visitation.window_hours=2").candidates.co_visitation,
    )
    assert set(_by_pair(narrow)) == {("i1", "i2"), ("i2", "i1")}  # u2's pair is 8 h apart


def test_neighbours_popular_and_the_union(spark):
    cfg = _config()
    frames = pool.compute(_events(spark, LOG + LATER), D, cfg)
    rows = {(r.user_id, r.item_id): r for r in frames.candidates.collect()}
    n12 = math.sqrt(2.5) / math.log(4) / 2
    n13 = 1 / math.log(5) / math.sqrt(2)

    # neighbours of recent items: sum over the user's items of revisit weight x neighbour score
    neighbours = {k: r.item_neighbours_score for k, r in rows.items() if r.item_neighbours_score is not None}
    assert neighbours == pytest.approx(
        {
            ("u1", "i2"): 2.5 * n12,
            ("u1", "i3"): 2.5 * n13,
            ("u1", "i1"): 1.0 * n12,
            ("u2", "i2"): 1.0 * n12,
            ("u2", "i3"): 1.0 * n13,
            ("u2", "i1"): 1.0 * n13 + HALF * n12,
        }
    )
    # popular: the same list for every active user, u3 (an impression only) included
    popular = {k: r for k, r in rows.items() if r.popular_rank is not None}
    weights = {"i1": 3.5, "i2": 1.0 + HALF, "i3": 1.0}
    expected = {(u, i): rank for u in ("u1", "u2", "u3") for rank, i in enumerate(("i1", "i2", "i3"), 1)}
    assert {k: r.popular_rank for k, r in popular.items()} == expected
    assert {k: r.popular_score for k, r in popular.items()} == pytest.approx({k: weights[k[1]] for k in expected})
    # per-category popular: the user's weight in the category x the item's share of the category
    c1 = 3.5 + 1.0 + HALF
    category = {k: r.category_popular_score for k, r in rows.items() if r.category_popular_score is not None}
    assert category == pytest.approx(
        {
            ("u1", "i1"): 3.5 * 3.5 / c1,
            ("u1", "i2"): 3.5 * (1 + HALF) / c1,
            ("u2", "i1"): (1 + HALF) * 3.5 / c1,
            ("u2", "i2"): (1 + HALF) * (1 + HALF) / c1,
            ("u2", "i3"): 1.0,
        }
    )
    # the union: one row per pair, the proposing sources in order; u3 has popular items only
    assert len(rows) == 9
    assert rows[("u1", "i1")].sources == ["revisits", "item_neighbours", "popular", "category_popular"]
    assert rows[("u1", "i3")].sources == ["item_neighbours", "popular"]
    assert rows[("u3", "i2")].sources == ["popular"] and rows[("u3", "i2")].revisits_rank is None
    assert {u for u, _ in rows} == {"u1", "u2", "u3"}


def test_candidates_of_d_ignore_events_on_and_after_d(spark):
    cfg = _config()

    def snapshot(rows):
        frames = pool.compute(_events(spark, rows), D, cfg)
        return sorted(map(tuple, frames.candidates.collect())), sorted(map(tuple, frames.neighbours.collect()))

    edited = LATER + [
        ("u9", "i1", "c1", "purchase", "2024-03-10 00:00"),
        ("u1", "i4", "c2", "cart", "2024-03-12 10:00"),
    ]
    assert snapshot(LOG) == snapshot(LOG + edited)


def test_training_rows_label_candidates_with_the_days_interactions(spark):
    cfg = _config()
    events = _events(spark, LOG + LATER)
    candidates = pool.compute(events, D, cfg).candidates
    day = events.where(F.col("event_date") == D)
    labelled = {(r.user_id, r.item_id): r for r in pool.training_rows(candidates, day, D, 10).collect()}
    rows = {k: (r.click, r.purchase) for k, r in labelled.items()}
    # 2 positives, 7 negatives: at most 10 per positive keeps all of them
    assert len(rows) == 9
    assert rows[("u1", "i3")] == (1, 0) and rows[("u2", "i2")] == (1, 1)
    # the sources' scores ride along as the ranker's features (null: not proposed)
    u1_i3 = labelled[("u1", "i3")]
    assert u1_i3.cand_item_neighbours_score == pytest.approx(2.5 / math.log(5) / math.sqrt(2))
    assert u1_i3.cand_popular_score == pytest.approx(1.0) and u1_i3.cand_revisits_score is None
    assert sum(click for click, _ in rows.values()) == 2
    few = pool.training_rows(candidates, day, D, 1).collect()
    assert {(r.user_id, r.item_id) for r in few if r.click} == {("u1", "i3"), ("u2", "i2")}
    assert len(few) < 9


def test_category_cap_keeps_k_items_when_the_log_has_no_categories(spark):
    scored = spark.createDataFrame(
        [(f"u{u}", f"i{i:02d}", None, float(i)) for u in range(3) for i in range(30)],
        "user_id string, item_id string, category_id string, score double",
    )
    got = top_k(scored, 12, max_per_category=2).groupBy("user_id").count().collect()
    assert {r.user_id: r["count"] for r in got} == {"u0": 12, "u1": 12, "u2": 12}
    with_categories = scored.withColumn("category_id", F.lit("c"))
    assert top_k(with_categories, 12, max_per_category=2).count() == 3 * 2


def test_build_features_writes_item_neighbours_and_candidates(spark, tmp_path):
    cfg = _config(f"storage.warehouse={tmp_path / 'warehouse'}")
    write_events(spark, cfg, [(u, i, c, kind, ts, 1.0, None) for u, i, c, kind, ts in LOG + LATER])
    result = build_features(spark, cfg, D)
    assert result.rows[CANDIDATES.name] == 9 and result.rows[ITEM_NEIGHBOURS.name] == 4
    table = read_table(spark, cfg, CANDIDATES).where(F.col("ds") == D)
    assert table.count() == 9
    examples = read_table(spark, cfg, TRAINING_EXAMPLES).where((F.col("ds") == D) & (F.col("row_kind") == "candidate"))
    assert {(r.user_id, r.item_id) for r in examples.where("click = 1").collect()} == {("u1", "i3"), ("u2", "i2")}
    # a rerun replaces the ds partition
    build_features(spark, cfg, D)
    assert read_table(spark, cfg, CANDIDATES).where(F.col("ds") == D).count() == 9
