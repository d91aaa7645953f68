"""The evaluate and publish jobs on generated worlds: metrics table, report, MLflow, the gate.

The fast world (one training day) checks the plumbing end to end; the slow one is large enough
for the model's quality to be judged against its baselines.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from mtl import registry
from mtl.errors import InputError
from mtl.evaluate.job import main as evaluate_main
from mtl.evaluate.job import run_evaluate
from mtl.evaluate.publish import GATE_TAG, GateRefused, run_publish
from mtl.tables import MODEL_METRICS, TRAINING_EXAMPLES
from mtl.train.job import run_train
from tests.broken_model import register_shuffled_label_model
from tests.generated import START, build_world, world_config
from tests.helpers import read_table, runs

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning:petastorm", "ignore::DeprecationWarning")

DAY = dt.timedelta(days=1)
D = START + 8 * DAY  # 16 days generated: repurchase_7d labels of D are observed
FAST_BASELINES = "evaluation.baselines=[popularity, category_popularity, recency_frequency]"
FAST_GATE = ("gate.metrics=[{task: click, metric: auc, floor: 0.6}, {task: purchase, metric: auc, floor: 0.55}, "
             "{task: retrieval, metric: recall, k: 20, floor: 0.01}]")


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """Train on D-2, validate on D-1, evaluate D."""
    root = tmp_path_factory.mktemp("evaluate_world")
    cfg = world_config(root, "training.window_days=2", FAST_BASELINES, FAST_GATE, days=16)
    return build_world(spark, cfg, [D - 2 * DAY, D - DAY, D])


@pytest.fixture(scope="module")
def evaluated(spark, world):
    version = run_train(spark, world, D, "full").model_version
    return version, run_evaluate(spark, world, D, version)


def _row_tuples(rows):
    return {(r.model_kind, r.scored_version, r.task, r.metric, r.k, r.value, r.n_examples) for r in rows}


def test_metrics_table_report_and_mlflow(spark, world, evaluated):
    version, result = evaluated
    written = read_table(spark, world, MODEL_METRICS).where((F.col("ds") == F.lit(D)) & (F.col("model_version") == version))
    assert _row_tuples(written.collect()) == _row_tuples(result.rows)
    assert {r.run_id for r in written.select("run_id").distinct().collect()} == {result.run_id}

    metrics = {(r.model_kind, r.task, r.metric, r.k): r for r in result.rows}
    binary = {"auc", "gauc", "log_loss", "calibration"}
    ranking = {(m, k) for m in ("recall", "ndcg", "hit_rate") for k in (10, 20, 50)} | {("mrr", None)}
    expected = (
        {("multi_task", t, m, None) for t in ("click", "purchase", "purchase_cvr", "repurchase_7d") for m in binary}
        | {("popularity", t, m, None) for t in ("click", "purchase", "purchase_cvr", "repurchase_7d") for m in ("auc", "gauc")}
        | {("category_popularity", t, m, None) for t in ("click", "purchase", "purchase_cvr") for m in ("auc", "gauc")}
        | {("recency_frequency", "repurchase_7d", m, None) for m in ("auc", "gauc")}
        | {(kind, "retrieval", m, k) for kind in ("multi_task", "popularity", "category_popularity") for m, k in ranking}
    )
    assert set(metrics) == expected
    assert any("repurchase_30d" in note for note in result.notes)  # not observed: no rows, said so

    # the model learned the generator's click signal; a model that did not sits at 0.5
    assert metrics["multi_task", "click", "auc", None].value > 0.6
    examples = read_table(spark, world, TRAINING_EXAMPLES).where(F.col("ds") == F.lit(D))
    exposures = examples.where("row_kind = 'exposure'").count()
    assert metrics["multi_task", "click", "auc", None].n_examples == exposures
    assert metrics["popularity", "click", "auc", None].n_examples == exposures
    clickers = examples.where("click = 1").select("user_id").distinct().count()
    assert metrics["multi_task", "retrieval", "recall", 20].n_examples == clickers
    assert 0 < metrics["multi_task", "retrieval", "recall", 20].value <= metrics["multi_task", "retrieval", "recall", 50].value

    record = runs(spark, world).where(F.col("run_id") == result.run_id).first()
    assert record.job == "evaluate" and record.status == "succeeded" and record.model_version == version
    details = json.loads(record.details)
    assert details["report"] == result.report_uri
    assert record.tables_written[MODEL_METRICS.name] >= 0
    assert record.tables_read[TRAINING_EXAMPLES.name] >= 0

    page = Path(urlparse(result.report_uri).path).read_text()
    assert page.count("data:image/png;base64,") == 3  # ROC, calibration, Recall@K (no history yet)
    for text in ("multi_task", "category_popularity", "recency_frequency", "purchase_cvr", "Quality gate: would publish"):
        assert text in page

    # next to the artifact, and the version's metrics in its own MLflow run
    uri = registry.tracking_uri(world)
    client = MlflowClient(uri, uri)
    model_run = client.get_run(client.get_model_version(world.tracking.registered_model, version).run_id)
    assert result.report_uri.startswith(model_run.info.artifact_uri + "/evaluation/")
    assert model_run.data.metrics["eval_click_auc"] == pytest.approx(metrics["multi_task", "click", "auc", None].value)
    assert model_run.data.metrics["eval_retrieval_recall_at_20"] == pytest.approx(
        metrics["multi_task", "retrieval", "recall", 20].value)


def test_gate_publishes_a_good_model_and_refuses_a_broken_one(spark, world, evaluated):
    good, _ = evaluated
    with pytest.raises(InputError, match="no evaluation of version"):
        run_publish(spark, world, D + DAY, good)
    published = run_publish(spark, world, D, good)
    assert published.published and registry.champion_version(world) == good
    assert not run_publish(spark, world, D, good).published  # already the champion

    broken = register_shuffled_label_model(spark, world, D)
    result = run_evaluate(spark, world, D, broken)
    assert result.champion_version == good
    values = {(r.model_kind, r.task, r.metric, r.k): r.value for r in result.rows}
    assert values["multi_task", "click", "auc", None] < 0.58 < values["champion", "click", "auc", None]
    assert not result.decision.passed

    with pytest.raises(GateRefused) as refused:
        run_publish(spark, world, D, broken)
    assert "click auc" in str(refused.value) and "below the floor 0.6" in str(refused.value)
    assert "worse than the champion (version " + good in str(refused.value)
    assert registry.champion_version(world) == good  # scoring keeps the previous champion
    record = runs(spark, world).where("job = 'publish'").orderBy("started_at").collect()[-1]
    assert record.status == "failed" and record.model_version == broken
    assert json.loads(record.details)["gate"]["passed"] is False
    uri = registry.tracking_uri(world)
    tag = MlflowClient(uri, uri).get_model_version(world.tracking.registered_model, broken).tags[GATE_TAG]
    assert json.loads(tag)["passed"] is False


def test_evaluating_a_training_day_is_refused(spark, world, evaluated, capsys):
    version, _ = evaluated
    with pytest.raises(InputError, match="is not held out"):
        run_evaluate(spark, world, D - DAY, version)
    code = evaluate_main(["--ds", str(D - DAY), "--model", version,
                          "--set", f"storage.warehouse={world.storage.warehouse}"])
    assert code == 1
    assert f"ds {D - DAY} is not held out from version {version}" in capsys.readouterr().err
