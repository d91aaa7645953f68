"""mtl-tune on the train tests' small world: real Spark, Delta, Petastorm, MLflow and Optuna.

A 3-trial study over a two-parameter space (conf/tune/tiny.yaml, 2 epochs a trial): three MLflow
child runs under the study's parent, a best config that load_model_config (and so mtl-train)
reads with the best trial's values, a restart that runs nothing new with the same budget and one
more trial with a budget of 4, and a trial left running by a kill queued again, not counted.
"""

from __future__ import annotations

import datetime as dt
import json

import optuna
import pytest
from mlflow import MlflowClient

from mtl import registry
from mtl.cli.common import load_job_config
from mtl.cli.tune import main
from mtl.config import ConfigError, load_config
from mtl.models.model_config import load_model_config
from mtl.tune.job import check_tune_inputs, run_tune
from mtl.tune.space import load_space
from mtl.tune.study import TAG_STATE, TAG_TRIAL, open_storage
from tests.conftest import LOCAL_CONF
from tests.support.worlds import START, build_world, world_config, world_overrides

D = START + dt.timedelta(days=8)  # the train tests' world: trains on D-3..D-2, validates on D-1
FEATURE_DAYS = [D - dt.timedelta(days=k) for k in (3, 2, 1)]


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_world")
    return build_world(spark, world_config(root), FEATURE_DAYS), root


def _children(cfg, parent: str):
    client = MlflowClient(tracking_uri=registry.tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")


def test_a_three_trial_study_logs_children_writes_the_best_config_and_resumes(spark, world, capsys):
    cfg, root = world
    result = run_tune(spark, cfg, D, trials=3, space="tiny")
    assert (result.trials_run, result.trials_counted, result.metric) == (3, 3, "mean_auc")
    assert registry.latest_version(cfg) is None  # tuning registers (and so publishes) nothing

    children = _children(cfg, result.parent_run_id)
    assert len(children) == 3
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in children) == [0, 1, 2]
    for run in children:
        assert run.data.tags[TAG_STATE] in ("complete", "pruned")
        assert {"optimizer.lr", "architecture.tower_units"} <= set(run.data.params)
    best_run = next(r for r in children if int(r.data.tags[TAG_TRIAL]) == result.best_trial)
    assert best_run.data.metrics["mean_auc"] == pytest.approx(result.best_value)

    # The best config is a model config mtl-train loads, holding the best trial's values.
    best = load_model_config(result.best_config_path)
    assert best.optimizer.lr == pytest.approx(result.best_params["optimizer.lr"])
    assert best.architecture.tower_units == json.loads(result.best_params["architecture.tower_units"])
    assert best.trainer.epochs == 2  # the space's fixed key
    train_cfg = load_job_config(LOCAL_CONF, world_overrides(root, f"model_config={result.best_config_path}"))
    assert load_model_config(train_cfg.model_config) == best

    # Started again with the same budget (here through the command line): nothing left to run.
    conf = ["--conf", str(LOCAL_CONF), *sum((["--set", o] for o in world_overrides(root)), [])]
    assert main([*conf, "--ds", str(D), "--trials", "3", "--space", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "ran 0 trial(s), 3 of 3 finished" in out and result.best_config_path in out
    # A budget of 4 runs exactly one more trial, under the same parent run.
    more = run_tune(spark, cfg, D, trials=4, space="tiny")
    assert (more.trials_run, more.trials_counted, more.parent_run_id) == (1, 4, result.parent_run_id)
    assert len(_children(cfg, result.parent_run_id)) == 4

    # A trial left RUNNING (its process killed) is queued again and does not count.
    study = optuna.load_study(study_name=more.study, storage=open_storage(more.storage))
    study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)})
    again = run_tune(spark, cfg, D, trials=4, space="tiny")
    assert (again.interrupted_retried, again.trials_run, again.trials_counted) == (1, 0, 4)


BAD_SPACES = [
    ("params:\n  optimizer.learning_rate: {type: float, low: 0.001, high: 0.01}\n", "optimizer.learning_rate"),
    ("params:\n  embedding.dim: {type: int, low: 16, high: 8}\n", "'embedding.dim': low (16) must be below high (8)"),
    ("params:\n  architecture.tower_units: {type: categorical, choices: []}\n", "choices must be a non-empty list"),
    ("params:\n  architecture.dropout: {type: float, low: 0.0, high: 1.5}\n", "architecture.dropout"),
    ("params:\n  tasks.clicks.weight: {type: float, low: 0.5, high: 2}\n", "'clicks' is not one of the model's tasks"),
    ("params:\n  embedding.dim: {type: float, low: 4, high: 8}\n", "embedding.dim: expected an integer"),
    ("params:\n  optimizer.lr: {type: normal, low: 0.1, high: 1}\n", "type must be one of"),
    ("params:\n  optimizer.lr: {type: float, low: 0, high: 0.1, log: true}\n", "log-scaled range must have low > 0"),
]


@pytest.mark.parametrize("text, message", BAD_SPACES)
def test_an_invalid_search_space_is_a_config_error_naming_the_parameter(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    cfg = load_config(LOCAL_CONF, [f"tuning.space={path}"])
    with pytest.raises(ConfigError) as err:
        check_tune_inputs(cfg)
    name = text.split("\n")[1].strip().split(":")[0]
    assert f"parameter {name!r}" in str(err.value) and message in str(err.value)


def test_the_shipped_spaces_load_and_tuning_numbers_are_checked():
    cfg = load_config(LOCAL_CONF)
    base = load_model_config(cfg.model_config)
    assert {p.name for p in load_space("default", base).params} >= {"optimizer.lr", "architecture.tower_units"}
    assert len(load_space("tiny", base).params) == 2
    with pytest.raises(ConfigError, match="tuning.trials: must be at least 1"):
        load_config(LOCAL_CONF, ["tuning.trials=0"])
    with pytest.raises(ConfigError, match="tuning.space: search space .* not found"):
        check_tune_inputs(load_config(LOCAL_CONF, ["tuning.space=nope"]))


@pytest.mark.slow
def test_parallel_workers_share_one_study_as_processes_and_as_spark_tasks(spark, world):
    cfg, root = world
    study = "tune-parallel"
    two = run_tune(spark, cfg, D, trials=2, parallel=2, space="tiny", study_name=study)
    assert (two.trials_run, two.trials_counted) == (2, 2)
    on_spark = load_config(LOCAL_CONF, world_overrides(root, "tuning.launcher=spark"))
    four = run_tune(spark, on_spark, D, trials=4, parallel=2, space="tiny", study_name=study)
    assert (four.trials_run, four.trials_counted, four.parent_run_id) == (2, 4, two.parent_run_id)
    children = _children(cfg, two.parent_run_id)
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in children) == [0, 1, 2, 3]
