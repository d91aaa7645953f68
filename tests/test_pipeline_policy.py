"""The chain's own decisions (mtl/pipeline/policy.py) on small hand-made state: a training_examples
table with a few ds partitions, pipeline_runs rows, registered versions with their ds tag and the
champion alias. Also the job flags that apply them for the Airflow DAG, which must reach the
same decisions as the local runner."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mtl import registry
from mtl.cli import build_features as features_cli
from mtl.cli import evaluate as evaluate_cli
from mtl.cli import publish as publish_cli
from mtl.cli import train as train_cli
from mtl.config import load_config
from mtl.errors import InputError, JobError
from mtl.evaluate import publish as publish_job
from mtl.pipeline import policy
from mtl.run_record import RunRecorder
from mtl.tables import TRAINING_EXAMPLES
from tests.conftest import LOCAL_CONF, TEST_OVERRIDES
from tests.support.tables import runs

D = dt.date(2024, 3, 13)  # a Wednesday
SUNDAY = dt.date(2024, 3, 17)
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    # One SQLite store for the module (creating one takes seconds); each test has its own model.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def overrides(tmp_path: Path, tracking_uri: str, request) -> list[str]:
    return TEST_OVERRIDES + [
        f"storage.warehouse={tmp_path / 'warehouse'}",
        f"tracking.tracking_uri={tracking_uri}",
        f"tracking.registered_model=policy-{request.node.name}",
        "training.window_days=10",
        "pipeline.full_retrain_weekday=6",
    ]


@pytest.fixture
def cfg(overrides):
    return load_config(LOCAL_CONF, overrides)


def _args(overrides: list[str], *rest: str) -> list[str]:
    return ["--conf", str(LOCAL_CONF), *[a for o in overrides for a in ("--set", o)], *rest]


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    logging.getLogger().handlers.clear()  # a job's main pointed logging at pytest's captured stderr


def _register(cfg, ds: dt.date) -> str:
    """A registered version trained for ds (its ds tag), without an artifact: no decision loads one."""
    uri = registry.tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not client.search_registered_models(f"name = '{cfg.tracking.registered_model}'"):
        client.create_registered_model(cfg.tracking.registered_model)
    version = client.create_model_version(
        cfg.tracking.registered_model, source="file:///nowhere", tags={"ds": ds.isoformat(), "mode": "full"}
    )
    return str(version.version)


def _training_examples(spark, cfg, days: list[dt.date]) -> None:
    # feature_days reads only the ds partitions of training_examples
    (
        spark.createDataFrame([(d, "u1") for d in days], "ds date, user_id string")
        .write.format("delta")
        .mode("append")
        .partitionBy("ds")
        .save(TRAINING_EXAMPLES.path(cfg.storage))
    )


def _score_run(spark, cfg, ds: dt.date, version: str, fail: bool = False) -> None:
    try:
        with RunRecorder(spark, cfg, "score", ds) as run:
            run.model_version = version
            if fail:
                raise JobError("scoring broke")
    except JobError:
        assert fail


# ------------------------------------------------------------------------------------------------
# build_features


def test_feature_days_without_training_examples_is_the_whole_window_and_ds(spark, cfg):
    assert policy.feature_days(spark, cfg, D) == [D - k * DAY for k in range(10, -1, -1)]


def test_feature_days_adds_missing_window_days_and_matured_labels(spark, cfg):
    window = [D - k * DAY for k in range(10, 0, -1)]
    _training_examples(spark, cfg, [d for d in window if d != D - 3 * DAY] + [D + DAY])
    # D - 3 is missing; D - 7 has its 7-day repurchase labels complete now (D - 30 is outside the window)
    assert policy.feature_days(spark, cfg, D) == [D - 7 * DAY, D - 3 * DAY, D]


def test_build_features_with_pending_days_builds_the_policy_days(spark, cfg, overrides, monkeypatch):
    _training_examples(spark, cfg, [D - k * DAY for k in range(10, 0, -1)])
    built = []
    monkeypatch.setattr(features_cli, "build_features_days", lambda spark, cfg, days: built.append(days) or [])
    assert features_cli.main(_args(overrides, "--ds", str(D), "--with-pending-days")) == 0
    assert features_cli.main(_args(overrides, "--ds", str(D))) == 0
    assert built == [[D - 7 * DAY, D], [D]]
    with pytest.raises(SystemExit):  # a backfill range has no pending days
        features_cli.main(_args(overrides, "--start", str(D), "--end", str(D), "--with-pending-days"))


# ------------------------------------------------------------------------------------------------
# train


def test_train_mode_full_first_then_incremental_and_full_on_the_weekday(cfg):
    assert policy.train_mode(cfg, D) == "full"  # nothing published yet
    registry.set_champion(cfg, _register(cfg, D - DAY))
    assert policy.train_mode(cfg, D) == "incremental"
    assert policy.train_mode(cfg, SUNDAY) == "full"  # pipeline.full_retrain_weekday=6
    never = load_config(
        LOCAL_CONF,
        [
            f"storage.warehouse={cfg.storage.warehouse}",
            f"tracking.tracking_uri={cfg.tracking.tracking_uri}",
            f"tracking.registered_model={cfg.tracking.registered_model}",
            "pipeline.full_retrain_weekday=null",
        ],
    )
    assert policy.train_mode(never, SUNDAY) == "incremental"


def test_choose_training_reuses_the_version_of_ds_unless_retrain_or_an_explicit_mode(cfg):
    first = policy.choose_training(cfg, D)
    assert (first.mode, first.reuse) == ("full", None) and "nothing is published" in first.reason
    v1 = _register(cfg, D)
    registry.set_champion(cfg, v1)
    _register(cfg, D + DAY)  # a later day's version: not D's
    v3 = _register(cfg, D)  # D retrained: the newest of D's versions counts
    assert policy.trained_version(cfg, D) == v3 == policy.require_trained_version(cfg, D)
    rerun = policy.choose_training(cfg, D)
    assert (rerun.mode, rerun.reuse) == (None, v3) and "reused" in rerun.reason
    assert (policy.choose_training(cfg, D, retrain=True).mode, policy.choose_training(cfg, D, retrain=True).reuse) == (
        "incremental",
        None,
    )
    for mode in ("full", "incremental"):
        assert (policy.choose_training(cfg, D, mode).mode, policy.choose_training(cfg, D, mode).reuse) == (mode, None)
    with pytest.raises(InputError, match="no version trained for ds 2024-03-11"):
        policy.require_trained_version(cfg, D - 2 * DAY)


def test_train_job_auto_on_a_rerun_keeps_the_version_and_records_it(spark, cfg, overrides, capsys):
    version = _register(cfg, D)
    assert train_cli.main(_args(overrides, "--ds", str(D), "--mode", "auto")) == 0
    assert f"version {version} was trained for {D} already" in capsys.readouterr().out
    assert registry.versions_for_ds(cfg, D.isoformat()) == [version]  # nothing trained
    row = runs(spark, cfg).where("job = 'train'").collect()
    assert [(r.ds, r.status, r.model_version) for r in row] == [(D, "succeeded", version)]
    assert '"outcome": "reused"' in row[0].details
    with pytest.raises(SystemExit):
        train_cli.main(_args(overrides, "--ds", str(D), "--mode", "full", "--retrain"))


# ------------------------------------------------------------------------------------------------
# evaluate and publish


def test_is_superseded():
    assert policy.is_superseded("3", "10")  # numeric, not text order
    assert not policy.is_superseded("10", "3")
    assert not policy.is_superseded("3", "3")
    assert not policy.is_superseded("3", None)


def test_publish_skips_a_version_older_than_the_champion(spark, cfg, overrides, capsys):
    old = _register(cfg, D)
    new = _register(cfg, D + DAY)
    registry.set_champion(cfg, new)

    result = publish_job.run_publish(spark, cfg, D, old)
    assert (result.published, result.outcome, result.previous_champion) == (False, publish_job.SUPERSEDED, new)
    assert registry.champion_version(cfg) == new
    assert publish_cli.main(_args(overrides, "--ds", str(D), "--trained-for-ds")) == 0
    assert f"skipped: a newer version ({new}) is already the champion" in capsys.readouterr().out
    assert registry.champion_version(cfg) == new
    outcomes = [r.details for r in runs(spark, cfg).where("job = 'publish'").collect()]
    assert len(outcomes) == 2 and all(publish_job.SUPERSEDED in d for d in outcomes)
    # --allow-older goes on to the gate, which needs the version's evaluation on ds
    with pytest.raises(InputError, match="no evaluation of version"):
        publish_job.run_publish(spark, cfg, D, old, allow_older=True)


def test_evaluate_and_publish_trained_for_ds_need_a_version_of_ds(cfg, overrides, capsys):
    _register(cfg, D + DAY)  # the latest registered version is another day's
    for main in (evaluate_cli.main, publish_cli.main):
        assert main(_args(overrides, "--ds", str(D), "--trained-for-ds")) == 1
        assert "has no version trained for ds 2024-03-13" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(_args(overrides, "--ds", str(D), "--trained-for-ds", "--model", "1"))


# ------------------------------------------------------------------------------------------------
# score


def test_keep_scored_model_uses_the_last_successful_score_run_of_ds(spark, cfg):
    assert policy.scored_version(spark, cfg, D) is None  # no pipeline_runs table yet
    assert policy.keep_scored_model(spark, cfg, D) is cfg
    _score_run(spark, cfg, D, "2")
    _score_run(spark, cfg, D, "3")
    _score_run(spark, cfg, D, "4", fail=True)  # a failed run scored nothing
    _score_run(spark, cfg, D + DAY, "5")  # another day
    assert policy.scored_version(spark, cfg, D) == "3"
    assert policy.scored_version(spark, cfg, D - DAY) is None
    aliased = load_config(LOCAL_CONF, [f"storage.warehouse={cfg.storage.warehouse}", "scoring.model_alias=staging"])
    kept = policy.keep_scored_model(spark, aliased, D)
    assert (kept.scoring.model_version, kept.scoring.model_alias) == ("3", None)
    assert kept.scoring.k == cfg.scoring.k
