"""The score job on a small hand-made log with a registered model of fixed random weights:
recommendations and repurchase predictions equal a plain PyTorch computation, filters, rerun,
output checks, pseudonyms."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl import registry
from mtl.cli.export import main as export_main
from mtl.cli.score import main
from mtl.config import ConfigError, ScoringFiltersConfig, load_config
from mtl.data.batch import in_memory_batches
from mtl.errors import JobError
from mtl.export.job import run_export
from mtl.features.assemble import model_inputs, user_inputs
from mtl.features.job import build_features
from mtl.features.transforms import id_hash
from mtl.models.artifacts import BUCKET_USAGE_KEY, encode_bucket_usage, load_model, read_feature_stats, register_model
from mtl.models.model import build_model
from mtl.models.model_config import load_model_config
from mtl.recommend.lists import read_features
from mtl.recommend.rank import drop_recent_purchases, repurchasable, score_column
from mtl.recommend.workers import USER_TOWER_COLUMNS, dense_defaults, model_batch, user_batch
from mtl.schema import CANDIDATE_DENSE, ROW_KIND_FIELD, ROW_KINDS, TABLE_CANDIDATE_SOURCES, model_fields, row_kind_code
from mtl.score.job import run_score
from mtl.score.output_checks import OutputCheckError, check_recommendations, check_repurchase
from mtl.tables import CANDIDATES, DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS
from mtl.train.bucket_usage import bucket_usage, collect_bucket_usage
from tests.conftest import LOCAL_CONF, ROOT, TEST_OVERRIDES
from tests.support.tables import read_table, runs, write_events

D = dt.date(2024, 3, 10)
CATEGORY = {f"i{n}": f"c{(n - 1) // 4 + 1}" for n in range(1, 13)}  # c1: i1-i4, c2: i5-i8, c3: i9-i12
ACTIVE = ["u1", "u2", "u3", "u4", "u5"]
TINY_MODEL = [
    "embedding.dim=8",
    "embedding.buckets={user: 101, item: 101, category: 17, row_kind: 8}",
    "architecture.experts=2",
    "architecture.expert_units=[16]",
    "architecture.tower_units=[8]",
    "architecture.dropout=0.0",
    "retrieval.dim=8",
    "retrieval.tower_units=[16]",
    "retrieval.frequency_buckets=64",
]
# Small tiles and batches so a handful of users and items still takes every path of the scan.
SCAN = ["scoring.item_block_size=4", "scoring.users_per_batch=2"]
NO_FILTERS = [
    "scoring.filters.recent_purchase_days=0",
    "scoring.filters.max_per_category=null",
    "scoring.filters.repurchasable_min_rate=null",
]


def _log() -> list[tuple]:
    """Every item seen before D; u1..u5 active in the last 30 days, u6 only 55 days before D."""
    rows = []
    for u in range(1, 6):
        for j in range(5):
            item = f"i{(u * 3 + j * 5) % 12 + 1}"
            rows.append((f"u{u}", item, CATEGORY[item], "view", f"2024-03-0{1 + j} 1{u}:00", float(j + 1), None))
    rows += [
        ("u1", "i1", "c1", "purchase", "2024-03-08 12:00", 3.0, 1),  # 2 days before D
        ("u1", "i5", "c2", "purchase", "2024-03-07 12:00", 4.0, 1),  # 3 days
        ("u2", "i6", "c2", "purchase", "2024-02-01 12:00", 5.0, 2),  # 38 days
        ("u3", "i2", "c1", "purchase", "2023-11-01 12:00", 6.0, 1),  # 130 days: outside the repurchase look-back
        ("u6", "i9", "c3", "purchase", "2024-01-15 12:00", 7.0, 1),  # 55 days, and u6 is not active
        ("u6", "i12", "c3", "view", "2024-01-15 11:00", 8.0, None),
    ]
    return rows


def _config(root: Path, *overrides: str):
    return load_config(LOCAL_CONF, TEST_OVERRIDES + [f"storage.warehouse={root / 'warehouse'}", *SCAN, *overrides])


def _publish(spark, cfg, folder: Path, broken_task: str | None = None, reached=None) -> str:
    """Register a model of fixed random weights (NaN weights in one task's towers, those of every
    row kind, if asked; recording the embedding rows the id hashes of ``reached`` reach as the
    rows its training reached, if given)."""
    stats = read_feature_stats(spark, cfg, D)
    model_cfg = load_model_config(ROOT / "conf" / "models" / "mmoe.yaml", TINY_MODEL)
    torch.manual_seed(0)
    model = build_model(model_cfg, model_fields(), stats)
    if broken_task:
        with torch.no_grad():
            for towers in [model.towers, *model.kind_towers.values()]:
                for p in towers[broken_task].parameters():
                    p.fill_(float("nan"))
    metadata = {"ds": D.isoformat()}
    if reached is not None:
        buckets = model_cfg.embedding.buckets
        used = collect_bucket_usage(bucket_usage(reached, model_fields(), buckets), list(buckets))
        metadata[BUCKET_USAGE_KEY] = encode_bucket_usage(used, buckets)
    return register_model(cfg, model, model_cfg, stats, metadata, folder=folder)[0]


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    cfg = _config(root)
    write_events(spark, cfg, _log())
    build_features(spark, cfg, D)
    version = _publish(spark, cfg, root / "model")
    registry.set_champion(cfg, version)
    return root, version


# ---------------------------------------------------------------------------------------------
# the plain PyTorch reference


def _plain(spark, cfg, rows: list[tuple]):
    """(pandas model inputs, user vectors, item vectors, probabilities) of the given
    (user_id, item_id, day_category_id, row_kind) rows, computed in one plain batch."""
    features = read_features(spark, cfg, D)
    artifact = registry.load_version(cfg)
    schema = "user_id string, item_id string, day_category_id string, row_kind string"
    if rows and len(rows[0]) > 4:  # with the candidate sources' scores
        schema += "".join(f", {c} double" for c in CANDIDATE_DENSE)
    frame = spark.createDataFrame(rows, schema)
    inputs = model_inputs(
        frame,
        features.users,
        features.items,
        features.user_cats,
        features.user_items,
        artifact.feature_stats["defaults"],
    ).toPandas()
    batch = next(in_memory_batches(inputs, len(inputs), labels=()))
    model = load_model(artifact)
    with torch.no_grad():
        return inputs, model.user_vectors(batch), model.item_vectors(batch), model.predict_proba(batch)


def _reference(spark, cfg, catalogue: dict[str, str], m: int, k: int, drop=frozenset(), cap=None):
    """user -> [(item, score, p_click, p_purchase)]: top-m by inner product over the catalogue,
    joined with the user's rows of the candidates table (catalogue items only), then score =
    pCTR x pCVR^alpha (beta 0), cap, top k."""
    proposed = {
        (r.user_id, r.item_id): tuple(r[f"{s}_score"] for s in TABLE_CANDIDATE_SOURCES)
        for r in read_table(spark, cfg, CANDIDATES).where(F.col("ds") == F.lit(D)).collect()
    }
    absent = (None,) * len(TABLE_CANDIDATE_SOURCES)
    rows = [(u, i, c, "candidate", *proposed.get((u, i), absent)) for u in ACTIVE for i, c in catalogue.items()]
    inputs, user_vec, item_vec, probs = _plain(spark, cfg, rows)
    retrieval = (user_vec * item_vec).sum(1).numpy()
    p_click, p_purchase = probs["click"].numpy().astype(float), probs["purchase"].numpy().astype(float)
    score = p_click * np.minimum(p_purchase / p_click, 1.0) ** cfg.scoring.alpha
    out = {}
    for user in ACTIVE:
        at = np.flatnonzero(inputs["user_id"].to_numpy() == user)
        retrieved = set(at[np.argsort(-retrieval[at], kind="stable")][:m])
        candidates = [r for r in at if r in retrieved or (user, inputs["item_id"][r]) in proposed]
        kept = [r for r in candidates if (user, inputs["item_id"][r]) not in drop]
        kept.sort(key=lambda r: (-score[r], inputs["item_id"][r]))
        per_category: dict[str, int] = {}
        ranked = []
        for r in kept:
            category = inputs["category_id"][r]
            per_category[category] = per_category.get(category, 0) + 1
            if cap is None or per_category[category] <= cap:
                ranked.append((inputs["item_id"][r], score[r], p_click[r], p_purchase[r]))
        out[user] = ranked[:k]
    return out


def _published(spark, cfg, spec=DAILY_RECOMMENDATIONS):
    return read_table(spark, cfg, spec).where(F.col("ds") == F.lit(D))


def _lists(spark, cfg) -> dict[str, list]:
    rows = _published(spark, cfg).orderBy("user_id", "rank").collect()
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r.user_id, []).append(r)
    return out


def _assert_matches(actual: dict[str, list], expected: dict[str, list]) -> None:
    assert sorted(actual) == sorted(expected)
    for user, ranked in expected.items():
        got = actual[user]
        assert [r.item_id for r in got] == [item for item, *_ in ranked], user
        assert [r.rank for r in got] == list(range(1, len(ranked) + 1))
        for row, (_, score, p_click, p_purchase) in zip(got, ranked):
            assert row.score == pytest.approx(score, rel=1e-5)
            assert row.p_click == pytest.approx(p_click, rel=1e-5)
            assert row.p_purchase == pytest.approx(p_purchase, rel=1e-5)


def _assert_repurchase_matches_plain_pytorch(spark, cfg, version: str) -> int:
    """The published repurchase_predictions of D against the plain PyTorch computation; their rows."""
    # Repurchase: every (user, item) and (user, category) bought within 90 days, active or not,
    # with the days since the last purchase.
    u6_days = (D - dt.date(2024, 1, 15)).days
    expected_days = {
        ("u1", "i1", "c1"): 2,
        ("u1", None, "c1"): 2,
        ("u1", "i5", "c2"): 3,
        ("u1", None, "c2"): 3,
        ("u2", "i6", "c2"): 38,
        ("u2", None, "c2"): 38,
        ("u6", "i9", "c3"): u6_days,
        ("u6", None, "c3"): u6_days,
    }
    rows = [(u, i, c, "repurchase_item" if i else "repurchase_category") for u, i, c in expected_days]
    inputs, _, _, probs = _plain(spark, cfg, rows)
    expected_rep = {
        (inputs["user_id"][r], inputs["item_id"][r], inputs["category_id"][r]): (
            probs["repurchase_7d"][r].item(),
            probs["repurchase_30d"][r].item(),
        )
        for r in range(len(inputs))
    }
    published = _published(spark, cfg, REPURCHASE_PREDICTIONS).collect()
    assert {(r.user_id, r.item_id, r.category_id): r.days_since_last_purchase for r in published} == expected_days
    for r in published:
        p7, p30 = expected_rep[(r.user_id, r.item_id, r.category_id)]
        assert (r.p_repurchase_7d, r.p_repurchase_30d) == (pytest.approx(p7, rel=1e-5), pytest.approx(p30, rel=1e-5))
        assert r.model_version == version
    return len(expected_rep)


# ---------------------------------------------------------------------------------------------
# tests


def test_recommendations_and_repurchase_equal_plain_pytorch(spark, world):
    root, version = world
    cfg = _config(root, "scoring.k=4", "scoring.candidates=6", *NO_FILTERS)
    result = run_score(spark, cfg, D)

    expected = _reference(spark, cfg, CATEGORY, m=6, k=4)
    actual = _lists(spark, cfg)
    _assert_matches(actual, expected)
    assert {r.category_id for rows in actual.values() for r in rows} <= {"c1", "c2", "c3"}
    listed = [r for rows in actual.values() for r in rows]
    assert all(r.category_id == CATEGORY[r.item_id] and r.model_version == version for r in listed)

    repurchase_rows = _assert_repurchase_matches_plain_pytorch(spark, cfg, version)

    assert result.rows == {"daily_recommendations": 20, "repurchase_predictions": repurchase_rows}
    assert (result.active_users, result.catalogue_items) == (5, 12)
    record = runs(spark, cfg).where("job = 'score'").orderBy("started_at").collect()[-1]
    assert record.status == "succeeded" and record.model_version == version
    assert (record.input_rows, record.output_rows) == (5, 20)
    assert set(record.tables_written) == {"daily_recommendations", "repurchase_predictions"}
    assert set(record.tables_read) == {
        "user_features",
        "item_features",
        "user_category_features",
        "user_item_features",
        "candidates",
    }

    # Comments for analysts on both tables and every column.
    for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS):
        path = spec.path(cfg.storage)
        assert spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first().description == spec.comment
        schema = spark.read.format("delta").load(path).schema
        assert {f.name: f.metadata.get("comment") for f in schema} == {c.name: c.comment for c in spec.columns}


def test_user_inputs_are_model_inputs_of_rows_without_an_item(spark, world):
    """The retrieval stage's inputs: the user side alone, then only the user tower's columns."""
    root, _ = world
    cfg = _config(root)
    features = read_features(spark, cfg, D)
    artifact = registry.load_version(cfg)
    defaults = artifact.feature_stats["defaults"]
    none = F.lit(None).cast("string")
    rows = features.users.select(
        "user_id", none.alias("item_id"), none.alias("day_category_id"), F.lit("exposure").alias("row_kind")
    )
    expected = model_inputs(rows, features.users, features.items.limit(0), *features.no_pairs, defaults)
    actual = user_inputs(features.users, defaults)
    assert actual.schema == expected.schema
    expected, actual = (df.orderBy("user_id").toPandas() for df in (expected, actual))
    assert len(actual) == 6 and actual.astype(str).equals(expected.astype(str))

    model = load_model(artifact)
    shipped = pa.RecordBatch.from_pandas(actual[list(USER_TOWER_COLUMNS)], preserve_index=False)
    assert len(USER_TOWER_COLUMNS) < len(actual.columns) / 2
    with torch.no_grad():
        shipped_vectors = model.user_vectors(user_batch(shipped, dense_defaults(defaults)))
        assert torch.equal(shipped_vectors, model.user_vectors(model_batch(actual)))


def test_filters_availability_recent_purchases_and_category_cap(spark, world, tmp_path):
    root, _ = world
    items = [(i, c, i not in ("i8", "i11"), dt.date(2024, 3, 20) if i == "i12" else None) for i, c in CATEGORY.items()]
    items.append(("i13", "c3", True, dt.date(2024, 3, 1)))  # a new item: no events, no features
    spark.createDataFrame(items, "item_id string, category_id string, in_stock boolean, launch date").write.parquet(
        str(tmp_path / "items")
    )
    cfg = _config(
        root,
        "scoring.k=10",
        "scoring.candidates=10",
        f"scoring.items.path={tmp_path / 'items'}",
        "scoring.items.format=parquet",
        "scoring.items.available_column=in_stock",
        "scoring.items.available_from_column=launch",
        "scoring.filters.recent_purchase_days=30",
        "scoring.filters.repurchasable_categories=[c2]",
        "scoring.filters.repurchasable_min_rate=null",
        "scoring.filters.max_per_category=3",
    )
    result = run_score(spark, cfg, D)
    assert result.catalogue_items == 10  # i8, i11 out of stock; i12 launches after D; i13 new

    actual = _lists(spark, cfg)
    by_category = {
        u: {c: {r.item_id for r in rows if r.category_id == c} for c in ("c1", "c2", "c3")}
        for u, rows in actual.items()
    }
    # u1 bought i1 (c1) 2 days ago: gone. u1 bought i5 3 days ago, but c2 is repurchasable: kept.
    assert by_category["u1"]["c1"] == {"i2", "i3", "i4"}
    for user in ACTIVE:
        assert len(by_category[user]["c1"]) == 3  # capped (4 available in c1, 3 for u1)
        assert by_category[user]["c2"] == {"i5", "i6", "i7"}
        assert by_category[user]["c3"] == {"i9", "i10", "i13"}
    catalogue = {i: c for i, c, in_stock, launch in items if in_stock and (launch is None or launch <= D)}
    _assert_matches(actual, _reference(spark, cfg, catalogue, m=10, k=10, drop={("u1", "i1")}, cap=3))


def test_repurchasable_categories_and_category_less_items_by_rate(spark):
    cats = spark.createDataFrame(
        [
            ("a", "x", 2.0),
            ("b", "x", 1.0),
            ("c", "x", 3.0),
            ("a", "y", 1.0),
            ("b", "y", 1.0),
            ("c", "y", 0.0),
            ("a", "z", 2.0),
        ],
        "user_id string, category_id string, uc_purchase_days double",
    )
    pairs = spark.createDataFrame(
        [("a", "i1", 2.0), ("b", "i1", 2.0), ("a", "i2", 1.0), ("b", "i2", 1.0), ("a", "i3", 3.0)],
        "user_id string, item_id string, ui_purchase_days double",
    )
    rule = ScoringFiltersConfig(repurchasable_categories=["w"], repurchasable_min_rate=0.5, repurchasable_min_buyers=2)
    rebuy = repurchasable(spark, cats, pairs, rule)
    # x: 2 of 3 buyers rebought; y: 0 of 2; z: 1 buyer, below the minimum. Items by the same rule.
    assert sorted(r.category_id for r in rebuy.categories.collect()) == ["w", "x"]
    assert sorted(r.item_id for r in rebuy.items.collect()) == ["i1"]

    # Bought 3 days ago: dropped unless the category is rebought, or, without a category, the item.
    rows = spark.createDataFrame(
        [
            ("u", "i1", None, 3.0),  # no category, item rebought: kept
            ("u", "i2", None, 3.0),  # no category, item not rebought: dropped
            ("u", "i1", "y", 3.0),  # a category that is not rebought decides, not the item: dropped
            ("u", "i4", "x", 3.0),  # category rebought: kept
            ("u", "i5", None, 45.0),  # bought long ago: kept
        ],
        "user_id string, item_id string, category_id string, ui_days_since_last_purchase double",
    )
    kept = drop_recent_purchases(rows, rebuy, days=30).collect()
    assert sorted((r.item_id, r.category_id) for r in kept) == [("i1", None), ("i4", "x"), ("i5", None)]
    off = repurchasable(spark, cats, pairs, ScoringFiltersConfig(repurchasable_min_rate=None))
    assert [r.item_id for r in drop_recent_purchases(rows, off, days=30).collect()] == ["i5"]


def test_score_formula(spark, make_config):
    sc = make_config("scoring.alpha=0.5", "scoring.beta=1.0", "scoring.min_price=2.0").scoring
    rows = spark.createDataFrame(
        [(0.5, 0.2, 10.0), (0.1, 0.3, 0.0)], "p_click double, p_purchase double, i_price double"
    )
    # pCTR x min(p_purchase / pCTR, 1)^alpha x max(price, min_price)^beta
    assert [r.s for r in rows.select(score_column(sc).alias("s")).collect()] == pytest.approx(
        [0.5 * 0.4**0.5 * 10.0, 0.1 * 1.0 * 2.0]
    )


def test_rerun_replaces_pseudonymises_and_a_failed_check_keeps_the_partition(spark, world, monkeypatch, caplog):
    root, _ = world
    run_score(spark, _config(root, "scoring.k=3", *NO_FILTERS), D)
    assert _published(spark, _config(root)).count() == 15

    private = _config(
        root, "scoring.k=2", "scoring.pseudonymize=true", "scoring.pseudonym_key_env=TEST_SCORE_KEY", *NO_FILTERS
    )
    monkeypatch.delenv("TEST_SCORE_KEY", raising=False)
    with pytest.raises(JobError, match="TEST_SCORE_KEY"):
        run_score(spark, private, D)
    monkeypatch.setenv("TEST_SCORE_KEY", "s3cret")
    with caplog.at_level(logging.DEBUG, logger="mtl"):
        run_score(spark, private, D)
    assert caplog.records and "s3cret" not in caplog.text  # the key is never logged
    rows = _published(spark, private).collect()
    hashed = {u: hmac.new(b"s3cret", u.encode(), hashlib.sha256).hexdigest() for u in ACTIVE + ["u6"]}
    assert sorted(r.user_id for r in rows) == sorted(hashed[u] for u in ACTIVE for _ in range(2))
    assert {r.user_id for r in _published(spark, private, REPURCHASE_PREDICTIONS).collect()} == {
        hashed[u] for u in ("u1", "u2", "u6")
    }
    history = f"DESCRIBE HISTORY delta.`{DAILY_RECOMMENDATIONS.path(private.storage)}`"
    version_before = spark.sql(history).first().version

    broken = _publish(spark, private, root / "broken", broken_task="click")
    with pytest.raises(OutputCheckError, match=r"daily_recommendations: 10 rows with a probability that is not in"):
        run_score(spark, _config(root, "scoring.k=2", f"scoring.model_version={broken}", *NO_FILTERS), D)
    assert sorted(r.user_id for r in _published(spark, private).collect()) == sorted(r.user_id for r in rows)
    assert spark.sql(history).first().version == version_before
    record = runs(spark, private).where("job = 'score'").orderBy("started_at").collect()[-1]
    assert record.status == "failed" and record.model_version == broken and "output checks failed" in record.error
    assert not (root / "warehouse" / "_staging" / "score" / record.run_id).exists()
    assert all("s3cret" not in (r.error or "") + (r.details or "") for r in runs(spark, private).collect())
    # Nor anywhere on disk: Delta logs and files, the MLflow store (runs' params and tags), staging.
    files = [p for p in (root / "warehouse").rglob("*") if p.is_file()]
    assert len(files) > 20 and [p for p in files if b"s3cret" in p.read_bytes()] == []


def test_output_checks_catch_planted_violations(spark):
    good = [
        (D, "u1", 1, "i1", "c1", 0.3, 0.5, 0.3, "1"),
        (D, "u1", 2, "i2", "c1", 0.2, 0.4, 0.2, "1"),
        (D, "u2", 1, "i1", "c1", 0.1, 0.2, 0.1, "1"),
    ]
    schema = DAILY_RECOMMENDATIONS.schema

    def violations(rows, k=2):
        return check_recommendations(spark.createDataFrame(rows, schema), k).violations

    assert violations(good) == ()
    assert violations(good + [(D, "u1", 3, "i3", "c1", 0.1, 0.2, 0.1, "1")]) == ("1 users with more than 2 rows",)
    assert violations([good[0], (D, "u1", 3, "i2", "c1", 0.2, 0.4, 0.2, "1"), good[2]]) == (
        "1 users whose ranks are not 1..n without gaps or repeats",
    )
    assert violations(good[:1] + [(D, "u1", 2, "i1", "c1", 0.2, 0.4, 0.2, "1")] + good[2:]) == (
        "1 users with an item listed twice",
    )
    bad_row = (
        "1 rows with a probability that is not in [0, 1] or a score that is not a finite number >= 0 "
        "(null and NaN count)"
    )
    assert violations(good[:2] + [(D, "u2", 1, "i1", "c1", 0.1, 1.5, 0.1, "1")]) == (bad_row,)
    assert violations(good[:2] + [(D, "u2", 1, "i1", "c1", math.nan, 0.2, 0.1, "1")]) == (bad_row,)

    rep_schema = T.StructType([T.StructField(f.name, f.dataType, True) for f in REPURCHASE_PREDICTIONS.schema])
    rep = [(D, "u1", "i1", "c1", 0.2, 0.3, 2, "1"), (D, "u1", None, "c1", 0.2, 0.3, 2, "1")]

    def rep_violations(rows):
        return check_repurchase(
            spark.createDataFrame(rows, rep_schema), ["p_repurchase_7d", "p_repurchase_30d"]
        ).violations

    assert rep_violations(rep) == ()
    assert rep_violations(
        rep
        + [
            (D, None, "i2", "c1", 0.2, 0.3, 2, "1"),
            (D, "u2", None, None, 0.2, 0.3, 2, "1"),
            rep[0],
            (D, "u3", "i3", "c1", None, 0.3, 0, "1"),
        ]
    ) == (
        "1 rows with a null user_id",
        "1 rows with neither an item nor a category",
        "1 repeated (user, item, category) rows",
        "1 rows with p_repurchase_7d, p_repurchase_30d not in [0, 1] (null and NaN count) "
        "or days_since_last_purchase below 1",
    )


def test_config_checks_and_cli_errors(make_config, tmp_path, capsys):
    with pytest.raises(ConfigError, match="scoring.candidates: must be at least scoring.k"):
        make_config("scoring.k=60", "scoring.candidates=50")
    with pytest.raises(ConfigError, match="give one of them"):
        make_config("scoring.model_version=3", "scoring.model_alias=challenger")
    with pytest.raises(ConfigError, match="recent_purchase_days"):
        make_config("scoring.filters.recent_purchase_days=180")
    with pytest.raises(ConfigError, match="scoring.items.path: required"):
        make_config("scoring.items.available_column=in_stock")
    code = main(
        [
            "--conf",
            str(LOCAL_CONF),
            "--ds",
            D.isoformat(),
            "--set",
            f"storage.warehouse={tmp_path / 'empty'}",
            *[arg for o in TEST_OVERRIDES for arg in ("--set", o)],
        ]
    )
    assert code == 1


def test_the_onnx_runtime_scores_like_plain_pytorch(spark, world, capsys):
    root, version = world
    settings = ("scoring.k=4", "scoring.candidates=6", *NO_FILTERS, "scoring.runtime=onnx")
    unexported = _publish(spark, _config(root), root / "unexported")
    with pytest.raises(JobError, match=f"has no onnx export: run mtl-export --version {unexported}"):
        run_score(spark, _config(root, *settings, f"scoring.model_version={unexported}"), D)

    cfg = _config(root, *settings, f"scoring.model_version={version}")
    args = ["--conf", str(LOCAL_CONF), "--version", version]
    args += [arg for o in [*TEST_OVERRIDES, f"storage.warehouse={root / 'warehouse'}"] for arg in ("--set", o)]
    assert export_main(args) == 0
    assert f"model version {version} exported: onnx" in capsys.readouterr().out
    run_score(spark, cfg, D)
    _assert_matches(_lists(spark, cfg), _reference(spark, cfg, CATEGORY, m=6, k=4))
    _assert_repurchase_matches_plain_pytorch(spark, cfg, version)
    record = runs(spark, cfg).where("job = 'score'").orderBy("started_at").collect()[-1]
    assert record.status == "succeeded" and '"runtime": "onnx"' in record.details


def test_the_pruned_runtime_keeps_the_lists_when_training_reached_every_id(spark, world):
    """A version whose training reached every id of the world: the pruned graphs drop most rows
    of the 101-row tables, and score exactly as the torch model does."""
    root, version = world
    ids = [(f"u{u}", f"i{i}", CATEGORY[f"i{i}"]) for u in range(1, 7) for i in range(1, 13)]
    reached = spark.createDataFrame(ids, "user_id string, item_id string, category_id string").select(
        id_hash(F.col("user_id")).alias("user_hash"),
        id_hash(F.col("item_id")).alias("item_hash"),
        id_hash(F.col("category_id")).alias("category_hash"),
        F.explode(F.array(*[F.lit(row_kind_code(k)) for k in ROW_KINDS])).alias(ROW_KIND_FIELD),
    )
    everything = _publish(spark, _config(root), root / "reached_everything", reached=reached)
    settings = ("scoring.k=4", "scoring.candidates=6", *NO_FILTERS, f"scoring.model_version={everything}")
    pruned_cfg = _config(root, *settings, "scoring.runtime=onnx_pruned")

    exported = run_export(pruned_cfg, everything)
    assert set(exported.sizes) == {"onnx", "onnx_int8", "onnx_pruned", "onnx_int8_pruned"}
    assert exported.max_abs_diff["onnx_pruned"] <= 1e-5  # against the pruned torch model
    assert exported.pruned_rows["item"] <= 12 and exported.pruned_rows["user"] <= 6
    assert exported.sizes["onnx_pruned"] < exported.sizes["onnx"]
    # A version that does not record what its training reached is exported without them.
    assert set(run_export(pruned_cfg, version).sizes) == {"onnx", "onnx_int8"}
    unrecorded = _config(root, *settings[:-1], f"scoring.model_version={version}", "scoring.runtime=onnx_pruned")
    with pytest.raises(JobError, match="has no onnx_pruned export.*trained before"):
        run_score(spark, unrecorded, D)

    run_score(spark, _config(root, *settings), D)
    with_torch = _lists(spark, pruned_cfg)
    run_score(spark, pruned_cfg, D)
    with_pruned = _lists(spark, pruned_cfg)
    assert sorted(with_pruned) == sorted(with_torch) == ACTIVE
    for user, rows in with_torch.items():
        assert [r.item_id for r in with_pruned[user]] == [r.item_id for r in rows], user
        for got, expected in zip(with_pruned[user], rows):
            assert got.p_click == pytest.approx(expected.p_click, abs=1e-5)
            assert got.p_purchase == pytest.approx(expected.p_purchase, abs=1e-5)


@pytest.mark.slow
def test_the_onnx_runtime_writes_the_tables_torch_writes(spark, world):
    root, version = world
    base = ("scoring.k=4", "scoring.candidates=6", f"scoring.model_version={version}", *NO_FILTERS)
    onnx_cfg = _config(root, *base, "scoring.runtime=onnx")

    run_score(spark, _config(root, *base), D)
    with_torch = {spec: _published(spark, onnx_cfg, spec) for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS)}
    schemas = {spec: df.schema for spec, df in with_torch.items()}
    with_torch = {spec: df.collect() for spec, df in with_torch.items()}

    run_export(onnx_cfg, version)
    run_score(spark, onnx_cfg, D)

    for spec, torch_rows in with_torch.items():
        onnx_rows = _published(spark, onnx_cfg, spec)
        assert onnx_rows.schema == schemas[spec]
        key = ("user_id", "rank") if spec is DAILY_RECOMMENDATIONS else ("user_id", "item_id", "category_id")
        expected = {tuple(r[k] for k in key): r.asDict() for r in torch_rows}
        actual = {tuple(r[k] for k in key): r.asDict() for r in onnx_rows.collect()}
        assert sorted(actual, key=str) == sorted(expected, key=str)
        for k, row in actual.items():
            for column, value in row.items():
                if column.startswith("p_") or column == "score":
                    assert value == pytest.approx(expected[k][column], abs=1e-5), (spec.name, k, column)
                else:
                    assert value == expected[k][column], (spec.name, k, column)  # same item at the same rank
