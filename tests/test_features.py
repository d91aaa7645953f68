"""build_features on a small hand-made log: exact values, defaults, labels, CLI."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from mtl.cli.build_features import main
from mtl.config import FeaturesConfig
from mtl.features import transforms as tf
from mtl.features.job import build_features
from mtl.features.transforms import id_hash
from mtl.schema import HISTORY_LENGTH, dense_columns
from mtl.tables import (
    FEATURE_STATS,
    ITEM_FEATURES,
    TRAINING_EXAMPLES,
    USER_CATEGORY_FEATURES,
    USER_FEATURES,
    USER_ITEM_FEATURES,
)
from tests.support.tables import read_table, runs, write_events

D = dt.date(2024, 3, 10)

# (user, item, category, type, UTC time, price, quantity)
HAND_LOG = [
    ("u1", "i1", "c1", "view", "2024-03-01 10:00", 10.0, None),
    ("u1", "i1", "c1", "purchase", "2024-03-01 10:05", 10.0, 2),
    ("u1", "i2", "c2", "view", "2024-03-05 09:00", 5.0, None),
    ("u1", "i1", "c1", "purchase", "2024-03-08 12:00", 10.0, 1),
    ("u1", "i3", "c1", "view", "2024-03-09 08:00", 20.0, None),
    ("u2", "i1", "c1", "view", "2024-03-09 18:00", None, None),
    ("u2", "i1", "c1", "cart", "2024-03-09 18:01", None, None),
    # day D and after: labels only
    ("u1", "i2", "c2", "view", "2024-03-10 09:00", 5.0, None),
    ("u1", "i2", "c2", "purchase", "2024-03-10 09:10", 5.0, 1),
    ("u2", "i3", "c1", "view", "2024-03-10 11:00", 20.0, None),
    ("u3", "i1", "c1", "view", "2024-03-10 12:00", 10.0, None),
    ("u1", "i1", "c1", "purchase", "2024-03-12 10:00", 10.0, 1),
    ("u2", "i2", "c2", "fav", "2024-03-17 10:00", None, None),
]


def ds_rows(spark, cfg, spec, ds=D):
    return read_table(spark, cfg, spec).where(F.col("ds") == F.lit(ds))


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    from mtl.config import load_config
    from tests.conftest import LOCAL_CONF, TEST_OVERRIDES

    cfg = load_config(LOCAL_CONF, TEST_OVERRIDES + [f"storage.warehouse={tmp_path_factory.mktemp('feat')}/wh"])
    write_events(spark, cfg, HAND_LOG)
    result = build_features(spark, cfg, D)
    return cfg, result


def test_user_features_exact(spark, built):
    cfg, _ = built
    u1 = ds_rows(spark, cfg, USER_FEATURES).where("user_id = 'u1'").first().asDict()
    # days ago: 03-01 -> 9, 03-05 -> 5, 03-08 -> 2, 03-09 -> 1
    assert (u1["u_view_1d"], u1["u_view_3d"], u1["u_view_7d"], u1["u_view_30d"]) == (1, 1, 2, 3)
    assert (u1["u_purchase_1d"], u1["u_purchase_3d"], u1["u_purchase_7d"], u1["u_purchase_30d"]) == (0, 1, 1, 2)
    assert u1["u_active_days_30d"] == 4
    assert u1["u_days_since_last_event"] == 1
    assert u1["u_days_since_last_purchase"] == 2
    assert u1["u_purchase_days"] == 2
    assert u1["u_mean_purchase_interval_days"] == 7  # (9 - 2) / (2 - 1)
    assert u1["u_spend_30d"] == 30  # 10 x 2 + 10 x 1
    assert u1["u_avg_price_30d"] == pytest.approx(11.0)  # (10 + 10 + 5 + 10 + 20) / 5
    # global CVR prior = 2 purchases / 4 views = 0.5; smoothed (2 + 20 * 0.5) / (3 + 20)
    assert u1["u_cvr_30d"] == pytest.approx(12 / 23)
    assert u1["u_ctr_30d"] == 0.0  # no impressions in this log
    assert u1["hist_item_ids"] == ["i3", "i1", "i2"]
    assert u1["hist_category_ids"] == ["c1", "c1", "c2"]
    assert u1["u_top_category_ids"] == ["c1", "c2"]
    users = {r.user_id for r in ds_rows(spark, cfg, USER_FEATURES).collect()}
    assert users == {"u1", "u2"}  # u3 has no events before D


def test_item_and_user_category_features_exact(spark, built):
    cfg, _ = built
    i1 = ds_rows(spark, cfg, ITEM_FEATURES).where("item_id = 'i1'").first().asDict()
    assert (i1["i_view_1d"], i1["i_view_30d"], i1["i_purchase_3d"], i1["i_purchase_30d"], i1["i_cart_1d"]) == (
        1,
        2,
        1,
        2,
        1,
    )
    assert (i1["i_users_30d"], i1["i_buyers_30d"]) == (2, 1)
    assert i1["i_repurchase_rate"] == pytest.approx(1.0)  # its one buyer bought on two days; prior 1.0
    assert i1["i_price"] == 10.0
    assert i1["i_age_days"] == 9
    assert i1["i_days_since_last_event"] == 1
    assert i1["i_cvr_30d"] == pytest.approx(12 / 22)
    assert i1["category_id"] == "c1"

    ui = ds_rows(spark, cfg, USER_ITEM_FEATURES).where("user_id = 'u1' AND item_id = 'i1'").first()
    assert (ui.ui_interactions_30d, ui.ui_purchase_days, ui.ui_days_since_last_purchase) == (3, 2, 2)

    uc = ds_rows(spark, cfg, USER_CATEGORY_FEATURES).where("user_id = 'u1' AND category_id = 'c1'").first().asDict()
    assert [uc[f"uc_interactions_{w}d"] for w in (1, 3, 7, 30)] == [1, 2, 2, 4]
    assert [uc[f"uc_purchases_{w}d"] for w in (1, 3, 7, 30)] == [0, 1, 1, 2]
    assert uc["uc_days_since_last_purchase"] == 2
    assert uc["uc_purchase_days"] == 2
    assert uc["uc_mean_purchase_interval_days"] == 7
    assert uc["uc_purchase_cycle_ratio"] == pytest.approx(2 / 7)
    assert uc["uc_last_purchase_ts"] == dt.datetime(2024, 3, 8, 12, 0)


def test_training_examples_labels(spark, built):
    cfg, result = built
    assert result.exposure_source == "sampled"
    assert result.observed_until == dt.date(2024, 3, 17)
    rows = ds_rows(spark, cfg, TRAINING_EXAMPLES)
    positives = {
        (r.user_id, r.item_id, r.click, r.purchase)
        for r in rows.where("row_kind = 'exposure' AND NOT is_sampled_negative").collect()
    }
    assert positives == {("u1", "i2", 1, 1), ("u2", "i3", 1, 0), ("u3", "i1", 1, 0)}
    negatives = rows.where("is_sampled_negative").collect()
    assert negatives, "sampled negatives expected"
    touched = {("u1", "i2"), ("u2", "i3"), ("u3", "i1")}
    for r in negatives:
        assert (r.user_id, r.item_id) not in touched
        assert r.item_id in {"i1", "i2", "i3"} and (r.click, r.purchase) == (0, 0)
    repurchase = {
        (r.row_kind, r.user_id, r.item_id, r.category_id, r.repurchase_7d, r.repurchase_30d)
        for r in rows.where("row_kind LIKE 'repurchase%'").collect()
    }
    # 7-day labels are observed (D + 6 <= 03-17); 30-day ones are not yet: null, not 0
    assert repurchase == {
        ("repurchase_item", "u1", "i1", "c1", 1, None),
        ("repurchase_category", "u1", None, "c1", 1, None),
    }
    # the day's candidates, labelled with the day's interactions
    candidates = {(r.user_id, r.item_id, r.click) for r in rows.where("row_kind = 'candidate'").collect()}
    assert candidates and {(u, i) for u, i, click in candidates if click} <= touched


def test_unseen_user_gets_defaults_and_hashes(spark, built):
    cfg, _ = built
    rows = ds_rows(spark, cfg, TRAINING_EXAMPLES)
    u3 = rows.where("user_id = 'u3' AND item_id = 'i1' AND row_kind = 'exposure'").first().asDict()
    assert u3["u_view_30d"] == 0 and u3["u_days_since_last_event"] == cfg.features.history_days
    assert u3["hist_item_hashes"] == [0] * HISTORY_LENGTH and u3["hist_length"] == 0
    assert u3["i_view_30d"] == 2  # the item is known
    nulls = rows.select([F.sum(F.col(c).isNull().cast("int")).alias(c) for c in dense_columns()]).first().asDict()
    assert not any(nulls.values()), {c: n for c, n in nulls.items() if n}
    u1 = rows.where("user_id = 'u1' AND item_id = 'i2' AND row_kind = 'exposure'").first()
    expected = spark.range(1).select(id_hash(F.lit("i3")).alias("h")).first().h
    assert u1.hist_item_hashes[0] == expected and u1.hist_length == 3 and u1.hist_item_hashes[3] == 0


def test_feature_stats_and_run_record(spark, built):
    cfg, result = built
    stats = {r.column: r for r in ds_rows(spark, cfg, FEATURE_STATS).collect()}
    examples = ds_rows(spark, cfg, TRAINING_EXAMPLES)
    n = examples.count()
    assert set(stats) == set(dense_columns()) | {"user_hash", "item_hash", "category_hash"}
    mean_views = examples.agg(F.mean("u_view_30d")).first()[0]
    assert stats["u_view_30d"].mean == pytest.approx(mean_views) and stats["u_view_30d"]["count"] == n
    assert stats["u_days_since_last_event"].default_value == cfg.features.history_days
    assert stats["u_cvr_30d"].default_value == pytest.approx(0.5)  # the global rate
    record = runs(spark, cfg).where("job = 'build_features'").first()
    assert record.status == "succeeded" and record.output_rows == n == result.rows["training_examples"]


def test_cli_help_and_missing_events(make_config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--start" in capsys.readouterr().out
    cfg = make_config()
    code = main(["--ds", "2024-03-10", "--set", f"storage.warehouse={cfg.storage.warehouse}"])
    assert code == 1


def test_user_category_click_through_rate_is_smoothed_over_the_rate_window(spark):
    def event(user, item, cat, kind, day: dt.date):
        return (user, item, cat, kind, dt.datetime.combine(day, dt.time(12)), day, 1.0, None)

    march = [dt.date(2024, 3, d) for d in (5, 6, 7, 8, 9)]
    log = (
        [event("u1", "i1", "c1", "impression", d) for d in march[:4]]
        + [event("u1", "i1", "c1", "click", march[3])]
        + [event("u1", "i2", "c2", "impression", march[4]), event("u2", "i2", "c2", "impression", march[4])]
        + [event("u2", "i2", "c2", "click", march[4]), event("u2", "i3", "c3", "view", march[4])]
        + [event("u1", "i3", "c3", "impression", D - dt.timedelta(days=31)) for _ in range(2)]  # before the 30 days
    )
    events = spark.createDataFrame(
        log,
        "user_id string, item_id string, category_id string, event_type string, event_ts timestamp, event_date date, "
        "price double, quantity int",
    )
    cfg = FeaturesConfig()
    grain = tf.daily_grain(tf.history(events, D, cfg.history_days))
    priors = tf.priors(grain, tf.user_item_pairs(grain, cfg.history_days))
    assert priors.ctr == pytest.approx(2 / 6)  # the two older impressions do not count
    k, p = cfg.smoothing_strength, 2 / 6
    got = {(r.user_id, r.category_id): r.uc_ctr_30d for r in tf.user_category_features(grain, priors, cfg).collect()}
    assert got == pytest.approx(
        {
            ("u1", "c1"): (1 + k * p) / (4 + k),
            ("u1", "c2"): (0 + k * p) / (1 + k),
            ("u2", "c2"): (1 + k * p) / (1 + k),
            ("u2", "c3"): p,  # a view without impressions: nothing to go on but the prior
            ("u1", "c3"): p,  # only impressions older than the rate window
        }
    )
