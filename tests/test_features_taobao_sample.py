"""Labels of training_examples on the real Taobao sample equal a plain-Python recomputation."""

import csv
import datetime as dt
from collections import defaultdict
from zoneinfo import ZoneInfo

from pyspark.sql import functions as F

from mtl.features.job import build_features
from mtl.ingest.job import run_ingest
from mtl.tables import TRAINING_EXAMPLES
from tests.conftest import SHARED_DATA
from tests.support.tables import read_table

SAMPLE = SHARED_DATA / "taobao_user_behavior_sample.csv"
CHINA = ZoneInfo("Asia/Shanghai")
D = dt.date(2017, 11, 27)  # D + 6 is still inside the sample, so 7-day labels are observed


def _reference_labels():
    """(positives, purchases, item repurchase labels, category repurchase labels) for D."""
    events = set()
    with open(SAMPLE, newline="") as f:
        for row in csv.reader(f):
            if len(row) != 5:
                continue  # the cut-short last line is quarantined by ingest
            date = dt.datetime.fromtimestamp(int(row[4]), CHINA).date()
            if dt.date(2017, 11, 25) <= date < dt.date(2017, 12, 4):
                events.add((row[0], row[1], row[2], row[3], date))
    positives = {(u, i) for u, i, c, b, d in events if d == D}
    purchases = {(u, i) for u, i, c, b, d in events if d == D and b == "buy"}
    buys = [(u, i, c, d) for u, i, c, b, d in events if b == "buy"]
    bought_items = {(u, i) for u, i, c, d in buys if D - dt.timedelta(days=90) <= d < D}
    bought_cats = {(u, c) for u, i, c, d in buys if D - dt.timedelta(days=90) <= d < D}
    later_items, later_cats = defaultdict(bool), defaultdict(bool)
    for u, i, c, d in buys:
        if D <= d < D + dt.timedelta(days=7):
            later_items[(u, i)] = later_cats[(u, c)] = True
    return (
        positives,
        purchases,
        {k: int(later_items[k]) for k in bought_items},
        {k: int(later_cats[k]) for k in bought_cats},
    )


def test_labels_match_plain_python(spark, make_config):
    cfg = make_config(f"ingest.input={SAMPLE}")
    run_ingest(spark, cfg)
    result = build_features(spark, cfg, D)
    assert result.exposure_source == "sampled"
    positives, purchases, item_labels, cat_labels = _reference_labels()

    rows = read_table(spark, cfg, TRAINING_EXAMPLES).where(F.col("ds") == F.lit(D))
    exposure = rows.where("row_kind = 'exposure' AND NOT is_sampled_negative").collect()
    assert {(r.user_id, r.item_id) for r in exposure} == positives
    assert {(r.user_id, r.item_id) for r in exposure if r.purchase == 1} == purchases
    assert all(r.click == 1 for r in exposure)

    negatives = rows.where("is_sampled_negative").select("user_id", "item_id", "click", "purchase").collect()
    assert len(negatives) >= 2 * len(positives)  # 4 draws per positive, minus repeats and touched items
    assert not {(r.user_id, r.item_id) for r in negatives} & positives
    assert all(r.click == 0 and r.purchase == 0 for r in negatives)

    items = rows.where("row_kind = 'repurchase_item'").collect()
    assert {(r.user_id, r.item_id): r.repurchase_7d for r in items} == item_labels
    cats = rows.where("row_kind = 'repurchase_category'").collect()
    assert {(r.user_id, r.category_id): r.repurchase_7d for r in cats} == cat_labels
    assert all(r.repurchase_30d is None for r in items + cats)  # the sample ends before D + 29
    assert sum(item_labels.values()) > 0  # the check compares real positives, not only zeros
