"""The real Taobao sample through the whole chain: ingest, build_features, train, publish, score.
Both tables are written; who gets recommendations and which pairs get repurchase predictions
equal a plain-Python reading of the sample."""

import csv
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from pyspark.sql import functions as F

from mtl import registry
from mtl.features.job import build_features
from mtl.ingest.job import run_ingest
from mtl.score.job import run_score
from mtl.tables import DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS
from mtl.train.job import run_train
from tests.conftest import ROOT, SHARED_DATA
from tests.support.tables import read_table, runs

SAMPLE = SHARED_DATA / "taobao_user_behavior_sample.csv"
CHINA = ZoneInfo("Asia/Shanghai")
D = dt.date(2017, 11, 28)  # trains on D-2, validates on D-1, scores D
MODEL = f"""\
extends: {ROOT / "conf" / "models" / "mmoe.yaml"}
embedding: {{dim: 8, buckets: {{user: 4096, item: 65536, category: 4096, row_kind: 8}}}}
architecture: {{experts: 2, expert_units: [16], tower_units: [8], dropout: 0.0}}
retrieval: {{dim: 16, tower_units: [32], frequency_buckets: 65536}}
trainer: {{epochs: 1, batch_size: 1024, checkpoint_every_steps: 0, log_every_steps: 50}}
"""


def _sample_before_d():
    """(users with an event before D, (user, item) and (user, category) bought before D)."""
    users, items, categories = set(), set(), set()
    with open(SAMPLE, newline="") as f:
        for row in csv.reader(f):
            if len(row) != 5:
                continue  # the cut-short last line
            day = dt.datetime.fromtimestamp(int(row[4]), CHINA).date()
            if dt.date(2017, 11, 25) <= day < D:  # the valid range starts on 11-25; all within 30 days of D
                users.add(row[0])
                if row[3] == "buy":
                    items.add((row[0], row[1]))
                    categories.add((row[0], row[2]))
    return users, items, categories


@pytest.mark.slow
def test_scoring_with_the_published_model_of_the_real_sample(spark, make_config, tmp_path):
    (tmp_path / "model.yaml").write_text(MODEL)
    cfg = make_config(
        f"ingest.input={SAMPLE}",
        f"model_config={tmp_path / 'model.yaml'}",
        "training.window_days=2",
        "training.torch_threads=1",
        "scoring.filters.repurchasable_min_rate=null",
        "scoring.filters.max_per_category=null",
    )
    run_ingest(spark, cfg)
    for day in (D - dt.timedelta(days=2), D - dt.timedelta(days=1), D):
        build_features(spark, cfg, day)
    trained = run_train(spark, cfg, D, "full")
    registry.set_champion(cfg, trained.model_version)

    result = run_score(spark, cfg, D)

    users, bought_items, bought_categories = _sample_before_d()
    recs = read_table(spark, cfg, DAILY_RECOMMENDATIONS).where(F.col("ds") == F.lit(D))
    per_user = {r.user_id: r.n for r in recs.groupBy("user_id").agg(F.count(F.lit(1)).alias("n")).collect()}
    assert set(per_user) == users  # every active user gets a list...
    assert set(per_user.values()) == {cfg.scoring.k}  # ...of K items (55k items, 200 candidates each)
    recommended = {(r.user_id, r.item_id) for r in recs.select("user_id", "item_id").collect()}
    assert not recommended & bought_items  # everything bought before D is recent and not repurchasable
    assert {r.model_version for r in recs.select("model_version").distinct().collect()} == {trained.model_version}

    rep = read_table(spark, cfg, REPURCHASE_PREDICTIONS).where(F.col("ds") == F.lit(D)).collect()
    assert {(r.user_id, r.item_id) for r in rep if r.item_id is not None} == bought_items
    assert {(r.user_id, r.category_id) for r in rep if r.item_id is None} == bought_categories
    assert all(0 <= r.p_repurchase_7d <= 1 and 0 <= r.p_repurchase_30d <= 1 for r in rep)

    assert result.rows == {"daily_recommendations": len(users) * cfg.scoring.k, "repurchase_predictions": len(rep)}
    record = runs(spark, cfg).where("job = 'score'").first()
    assert record.status == "succeeded" and record.model_version == trained.model_version
    assert record.output_rows == len(users) * cfg.scoring.k and record.input_rows == len(users)
