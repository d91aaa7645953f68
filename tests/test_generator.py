"""The synthetic generator: deterministic, sized as configured, ingestible, and with structure a
good model can learn (checked against its own ground truth)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F

from mtl.config import load_config
from mtl.generate.job import run_generate
from mtl.generate.truth import auc, oracle_auc, oracle_repurchase_auc, repurchase_labels
from mtl.ingest.job import run_ingest
from tests.conftest import LOCAL_CONF, TEST_OVERRIDES

SMALL = ["generator.users=300", "generator.items=800", "generator.categories=20", "generator.days=7"]
# The Taobao preset's valid range is the public dataset's; generated dates are elsewhere.
ANY_DATE = ["formats.taobao_user_behavior.valid_from=", "formats.taobao_user_behavior.valid_until="]


def _config(tmp: Path, *overrides: str):
    return load_config(LOCAL_CONF, TEST_OVERRIDES + [f"storage.warehouse={tmp / 'wh'}", *ANY_DATE, *overrides])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*"))}


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """One mid-sized generated log (28 days, so replenishment cycles fit), generated once."""
    tmp = tmp_path_factory.mktemp("gen")
    cfg = _config(tmp, "generator.users=1500", "generator.days=28", f"generator.output={tmp / 'out'}")
    result = run_generate(spark, cfg)
    return cfg, result, tmp / "out"


def test_same_seed_same_bytes_other_seed_other_rows(spark, tmp_path):
    outs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        cfg = _config(tmp_path, *SMALL, f"generator.seed={seed}", f"generator.output={tmp_path / name}")
        run_generate(spark, cfg)
        outs.append(tmp_path / name)
    a, b, c = (_files(o / "events") for o in outs)
    assert a and a == b
    assert a != c
    truth = [
        spark.read.parquet(str(o / "truth" / "impressions")).orderBy("user_id", "impression_ts", "position").toPandas()
        for o in outs[:2]
    ]
    assert truth[0].equals(truth[1])


def test_sizes_side_tables_and_dates(spark, world):
    cfg, result, out = world
    g = cfg.generator
    assert spark.read.parquet(str(out / "items")).count() == g.items
    assert spark.read.parquet(str(out / "users")).count() == g.users
    assert spark.read.parquet(str(out / "truth" / "categories")).count() == g.categories
    log = spark.read.csv(
        str(out / "events"), schema="user string, item string, category string, behavior string, ts long"
    )
    assert log.count() == result.events > 50_000
    assert {r.behavior for r in log.select("behavior").distinct().collect()} == {"pv", "fav", "cart", "buy"}
    users = log.select("user").distinct().count()
    assert 0.8 * g.users < users <= g.users
    # Many light users, few heavy ones: the busiest 10% make far more than 10% of the events.
    per_user = sorted((r["count"] for r in log.groupBy("user").count().collect()), reverse=True)
    assert sum(per_user[: len(per_user) // 10]) > 0.3 * sum(per_user)
    # Popularity is power-law: the top 1% of items take a large share of the views.
    views = sorted((r["count"] for r in log.filter("behavior = 'pv'").groupBy("item").count().collect()), reverse=True)
    assert sum(views[: max(1, g.items // 100)]) > 0.1 * sum(views)


def test_new_items_appear_only_from_their_release_date(spark, world):
    cfg, _, out = world
    items = spark.read.parquet(str(out / "items"))
    start = F.lit(cfg.generator.start_date).cast("date")
    assert items.filter(F.col("first_available_date") > start).count() > 0.1 * cfg.generator.items
    log = spark.read.csv(
        str(out / "events"), schema="user string, item_id string, category string, behavior string, ts long"
    )
    dated = log.withColumn("date", F.to_date(F.from_utc_timestamp(F.timestamp_seconds("ts"), "Asia/Shanghai")))
    early = dated.join(items, "item_id").filter(F.col("date") < F.col("first_available_date"))
    assert early.count() == 0
    late_items = dated.join(items.filter(F.col("first_available_date") > start), "item_id")
    assert late_items.select("item_id").distinct().count() > 0


def test_taobao_output_ingests_with_nothing_quarantined(spark, world):
    cfg, result, out = world
    ingested = run_ingest(spark, cfg, str(out / "events"), format_name="taobao_user_behavior")
    assert ingested.rows_read == result.events
    assert ingested.quarantined == 0
    assert ingested.accepted + ingested.duplicates == result.events
    assert ingested.duplicates == 0


def test_canonical_and_transactions_outputs_ingest_with_nothing_quarantined(spark, tmp_path):
    cfg = _config(tmp_path, *SMALL, "generator.output_format=canonical", f"generator.output={tmp_path / 'c'}")
    result = run_generate(spark, cfg)
    ingested = run_ingest(spark, cfg, str(tmp_path / "c" / "events"), format_name="canonical")
    assert (ingested.rows_read, ingested.quarantined, ingested.duplicates) == (result.events, 0, 0)
    types = {
        r.event_type
        for r in spark.read.format("delta")
        .load(str(tmp_path / "wh" / "events"))
        .select("event_type")
        .distinct()
        .collect()
    }
    assert types == {"impression", "click", "fav", "cart", "purchase"}

    # The same world as a purchase-only order log (no category, no other event): exactly its purchases.
    out = tmp_path / "t"
    cfg = _config(tmp_path / "t", *SMALL, "generator.output_format=transactions", f"generator.output={out}")
    orders = run_generate(spark, cfg)
    raw = spark.read.option("header", "true").csv(str(out / "events"))
    assert raw.columns == ["customer_id", "product_id", "invoice_ts", "quantity", "unit_price"]
    canonical = spark.read.option("header", "true").csv(str(tmp_path / "c" / "events"))
    assert orders.events == raw.count() == canonical.where("event_type = 'purchase'").count() > 0
    ingested = run_ingest(spark, cfg, str(out / "events"), format_name="transactions")
    assert (ingested.rows_read, ingested.quarantined) == (orders.events, 0)
    assert ingested.accepted + ingested.duplicates == orders.events
    events = spark.read.format("delta").load(str(tmp_path / "t" / "wh" / "events"))
    assert {r.event_type for r in events.select("event_type").distinct().collect()} == {"purchase"}
    assert events.where(F.col("category_id").isNotNull()).count() == 0


def _within_sampling_error(observed_mean: float, mean_p: float, var_sum: float, n: int) -> bool:
    """|observed rate - mean true probability| within 4 standard errors of independent Bernoullis."""
    se = math.sqrt(var_sum) / n
    return abs(observed_mean - mean_p) <= 4 * se + 1e-9


def test_truth_averages_match_observed_rates(spark, world):
    cfg, _, out = world
    imp = spark.read.parquet(str(out / "truth" / "impressions"))
    for subset, p, y in ((imp, "p_click", "clicked"), (imp.filter("clicked"), "p_purchase", "purchased")):
        s = subset.agg(
            F.count("*").alias("n"),
            F.avg(F.col(y).cast("double")).alias("rate"),
            F.avg(p).alias("mean_p"),
            F.sum(F.col(p) * (1 - F.col(p))).alias("var"),
        ).first()
        assert s.n > 1000
        assert _within_sampling_error(s.rate, s.mean_p, s.var, s.n), (p, s)

    # Windows that do not overlap, so each repurchase is counted once and rows are independent.
    horizon = cfg.generator.repurchase_horizon_days
    labelled = _repurchase_labelled(spark, cfg, out).filter((F.col("day") - 1) % horizon == 0)
    s = (
        labelled.filter("level = 'item'")
        .agg(
            F.count("*").alias("n"),
            F.avg(F.col("repurchased").cast("double")).alias("rate"),
            F.avg("p_repurchase").alias("mean_p"),
            F.sum(F.col("p_repurchase") * (1 - F.col("p_repurchase"))).alias("var"),
        )
        .first()
    )
    assert s.n > 1000 and s.rate > 0.005
    assert _within_sampling_error(s.rate, s.mean_p, s.var, s.n), s


def _repurchase_labelled(spark, cfg, out):
    g = cfg.generator
    log = spark.read.csv(
        str(out / "events"), schema="user_id string, item_id string, category_id string, b string, ts long"
    )
    start = F.lit(g.start_date).cast("date")
    purchases = log.filter("b = 'buy'").withColumn(
        "day", F.datediff(F.to_date(F.from_utc_timestamp(F.timestamp_seconds("ts"), "Asia/Shanghai")), start)
    )
    truth = spark.read.parquet(str(out / "truth" / "repurchase"))
    return repurchase_labels(truth, purchases, g.repurchase_horizon_days, g.days)


def test_consumables_are_rebought_far_more_than_durables(spark, world):
    cfg, _, out = world
    # Item level: an already-bought item is never shown again, so a rebuy is a replenishment.
    labelled = _repurchase_labelled(spark, cfg, out).filter("level = 'item'")
    rate = {
        r.consumable: r.rate
        for r in labelled.groupBy("consumable").agg(F.avg(F.col("repurchased").cast("double")).alias("rate")).collect()
    }
    assert rate[True] > 5 * rate[False], rate
    assert oracle_repurchase_auc(labelled, "item") > 0.8


def test_a_model_of_the_true_factors_reaches_the_oracle_and_popularity_does_not(spark, world):
    cfg, _, out = world
    imp = spark.read.parquet(str(out / "truth" / "impressions")).withColumns(
        {
            "label": F.col("clicked").cast("double"),
            "hour_sin": F.sin(F.col("hour") * (2 * math.pi / 24)),
            "hour_cos": F.cos(F.col("hour") * (2 * math.pi / 24)),
            "position_d": F.col("position").cast("double"),
        }
    )
    split = cfg.generator.days * 2 // 3
    train, test = imp.filter(F.col("day") < split), imp.filter(F.col("day") >= split)

    def fit_auc(columns):
        assemble = VectorAssembler(inputCols=columns, outputCol="features")
        model = LogisticRegression(maxIter=50, regParam=0.0).fit(assemble.transform(train))
        scored = model.transform(assemble.transform(test)).withColumn(
            "score", F.udf(lambda v: float(v[1]), "double")("probability")
        )
        return auc(scored, "score", "label")

    oracle = oracle_auc(test, "click")
    factors = fit_auc(["true_affinity", "true_popularity", "position_d", "hour_sin", "hour_cos"])
    popularity = fit_auc(["true_popularity"])
    assert oracle > 0.75
    assert abs(factors - oracle) < 0.01, (factors, oracle)
    assert popularity < oracle - 0.05, (popularity, oracle)
    assert oracle_auc(test, "purchase") > 0.65
