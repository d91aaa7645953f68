"""mtl-pipeline over two consecutive days of small generated data: incremental second day,
both days' outputs, a rerun that changes nothing, and a failing step that stops the chain."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from mtl import registry
from mtl.cli.pipeline import StepFailed, main, run_day
from mtl.config import load_config
from mtl.tables import DAILY_RECOMMENDATIONS, MONITORING_METRICS, REPURCHASE_PREDICTIONS
from tests.conftest import LOCAL_CONF
from tests.support.tables import read_table, runs
from tests.support.worlds import START, build_world, world_overrides

D1 = START + dt.timedelta(days=8)
D2 = D1 + dt.timedelta(days=1)


def _partition(spark, cfg, spec, ds):
    rows = read_table(spark, cfg, spec).where(F.col("ds") == F.lit(ds)).drop("ds").collect()
    return sorted((tuple(r) for r in rows), key=repr)


@pytest.fixture(scope="module")
def pipeline_world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_world")
    # The tiny world and model test the chain's mechanics; gate quality is tested in test_gate.py,
    # and the slower baselines (ALS, logistic regression, the twins) in test_evaluate.py.
    overrides = world_overrides(
        root,
        "pipeline.full_retrain_weekday=null",
        "gate.metrics=[{task: click, metric: auc, floor: 0.5}]",
        "evaluation.baselines=[popularity, category_popularity, recency_frequency]",
    )
    # The days before D1 come from the session's world of this flavour (test_train.py's): the chain
    # ingests the log again (nothing new) and builds D1 itself. feature_days' choice of pending days
    # is tested in test_pipeline_policy.py.
    cfg = build_world(spark, load_config(LOCAL_CONF, overrides), [D1 - dt.timedelta(days=k) for k in (3, 2, 1)])
    return cfg, overrides


def test_two_days_rerun_and_failure(spark, pipeline_world):
    cfg, overrides = pipeline_world
    first = run_day(spark, cfg, D1)
    assert any(line.startswith("train (full)") for line in first.lines), first.lines
    assert registry.champion_version(cfg) == first.model_version  # the gate published the first model
    second = run_day(spark, cfg, D2)
    assert any(line.startswith("train (incremental)") for line in second.lines), second.lines
    for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS):
        for ds in (D1, D2):
            assert _partition(spark, cfg, spec, ds), (spec.name, ds)
    # The monitor ran last: D1's outputs are D2's reference, so their drift has a value.
    assert second.lines[-1].startswith("monitor: ds"), second.lines
    monitored = read_table(spark, cfg, MONITORING_METRICS).where(F.col("ds") == F.lit(D2))
    drift = {r.subject: r.value for r in monitored.where("metric = 'prediction_psi'").collect()}
    assert drift["daily_recommendations.p_click"] is not None, drift

    before = {spec.name: _partition(spark, cfg, spec, D1) for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS)}
    day2 = _partition(spark, cfg, DAILY_RECOMMENDATIONS, D2)
    versions = registry.versions_for_ds(cfg, D1.isoformat())
    rerun = run_day(spark, cfg, D1)
    assert registry.versions_for_ds(cfg, D1.isoformat()) == versions  # no new model for the day
    assert any("reused" in line for line in rerun.lines)
    for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS):
        assert _partition(spark, cfg, spec, D1) == before[spec.name], spec.name
    assert _partition(spark, cfg, DAILY_RECOMMENDATIONS, D2) == day2

    # A step that fails stops the chain, names the step, and leaves earlier outputs alone.
    broken = load_config(LOCAL_CONF, overrides + ["ingest.input=/nonexistent/events"])
    with pytest.raises(StepFailed, match="step 'ingest' failed") as failure:
        run_day(spark, broken, D2 + dt.timedelta(days=1))
    assert failure.value.step == "ingest"
    assert _partition(spark, cfg, DAILY_RECOMMENDATIONS, D2) == day2
    failed = runs(spark, cfg).where("job = 'ingest' AND status = 'failed'").count()
    assert failed == 1
    # the command line says the same and exits 1
    args = ["run", "--conf", str(LOCAL_CONF), "--ds", str(D2 + dt.timedelta(days=1))]
    args += [a for o in overrides + ["ingest.input=/nonexistent/events"] for a in ("--set", o)]
    assert main(args) == 1
