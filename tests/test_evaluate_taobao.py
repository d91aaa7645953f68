"""The whole evaluation on the real Taobao sample: train on the early days, evaluate the last one
with every baseline, write the report, let the gate decide. No quality target: the sample is
small; BENCHMARKS.md records its numbers (benchmarks/evaluate.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pyspark.sql import functions as F

from mtl import registry
from mtl.evaluate.job import run_evaluate
from mtl.evaluate.model_metrics import CANDIDATES, RECOMMENDATIONS
from mtl.evaluate.publish import GateRefused, run_publish
from mtl.features.job import build_features
from mtl.ingest.job import run_ingest
from mtl.tables import TRAINING_EXAMPLES
from mtl.train.job import run_train
from tests.conftest import SHARED_DATA
from tests.support.tables import read_table
from tests.support.worlds import TINY_MODEL

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::FutureWarning:petastorm", "ignore::DeprecationWarning"),
]

SAMPLE = SHARED_DATA / "taobao_user_behavior_sample.csv"
D = dt.date(2017, 12, 3)  # the sample's last day: trained on 11-30..12-01, validated on 12-02
WINDOW = 3


def test_whole_evaluation_on_the_taobao_sample(spark, make_config, tmp_path):
    model = tmp_path / "model.yaml"
    model.write_text(TINY_MODEL)
    cfg = make_config(
        f"ingest.input={SAMPLE}",
        f"training.window_days={WINDOW}",
        f"model_config={model}",
        "training.torch_threads=1",
        "evaluation.twin_epochs=2",
    )
    run_ingest(spark, cfg)
    for offset in range(WINDOW, -1, -1):
        build_features(spark, cfg, D - dt.timedelta(days=offset))
    version = run_train(spark, cfg, D, "full").model_version
    result = run_evaluate(spark, cfg, D, version)

    kinds = {r.model_kind for r in result.rows if r.task not in (RECOMMENDATIONS, CANDIDATES)}
    assert kinds == {"multi_task", "popularity", "category_popularity", "als", "logistic_regression", "single_task"}
    tasks = {r.task for r in result.rows}
    # 7-day repurchase is past the sample's end
    assert tasks == {"click", "purchase", "purchase_cvr", "retrieval", RECOMMENDATIONS, CANDIDATES}
    assert any("repurchase_7d: no labelled rows" in n for n in result.notes)
    assert any("negatives are sampled" in n for n in result.notes)
    exposures = read_table(spark, cfg, TRAINING_EXAMPLES).where(
        (F.col("ds") == F.lit(D)) & (F.col("row_kind") == "exposure")
    )
    click = {r.model_kind: r for r in result.rows if r.task == "click" and r.metric == "auc"}
    assert {r.n_examples for r in click.values()} == {exposures.count()}
    assert all(0.0 <= r.value <= 1.0 for r in click.values())

    page = Path(urlparse(result.report_uri).path).read_text()
    assert page.count("data:image/png;base64,") == 3 and "sampled (no impressions)" in page

    try:
        run_publish(spark, cfg, D, version)
        assert result.decision.passed and registry.champion_version(cfg) == version
    except GateRefused:
        assert not result.decision.passed and registry.champion_version(cfg) is None
