"""The daily DAG with real Airflow, in its own virtual environment (scripts/bootstrap_airflow.sh):
it parses (DagBag) with the expected tasks, order, retries and timeouts; ``dag.test()`` runs the
whole chain for one ds against local Spark (spark-submit of this project's .venv) on a small
generated world and fills both output tables; a refused gate still scores, with the previous
champion. Also the step list (mtl/pipeline/steps.py) and the check_outputs job.

Airflow runs as a subprocess of its own interpreter, with AIRFLOW_HOME (SQLite) in a temporary
folder; the Spark connection and the DAG's settings Variable come from environment variables
(AIRFLOW_CONN_SPARK_LOCAL, AIRFLOW_VAR_MTL_RECSYS_DAILY).
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl.cli.check_outputs import main as check_outputs_main
from mtl.pipeline import steps
from mtl.pipeline.check_outputs import OutputQualityError, check_outputs
from mtl.tables import DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS
from tests.conftest import LOCAL_CONF, ROOT, TEST_OVERRIDES
from tests.support.tables import read_table, runs
from tests.support.worlds import START, build_world, world_config, world_overrides

AIRFLOW_VENV = Path(os.environ.get("MTL_AIRFLOW_VENV", ROOT / ".venv-airflow"))
AIRFLOW_PYTHON = AIRFLOW_VENV / "bin" / "python"
DAGS = ROOT / "airflow_dags"
DAY = dt.timedelta(days=1)

# Task ids and the edges between them.
EDGES = {
    ("ingest", "build_features"),
    ("build_features", "train"),
    ("train", "evaluate"),
    ("evaluate", "publish"),
    ("publish", "gate_decision"),
    ("gate_decision", "use_new_model"),
    ("gate_decision", "keep_previous_model"),
    ("use_new_model", "score"),
    ("keep_previous_model", "score"),
    ("score", "check_outputs"),
    ("check_outputs", "monitor"),
}
JOBS = ("ingest", "build_features", "train", "evaluate", "publish", "score", "check_outputs", "monitor")

# What the Airflow side reports about the DAG folder, as JSON. Each scenario is a settings
# Variable (or none); the Variable is read when the DAG file is parsed.
DAGBAG_SCRIPT = r"""
import json, os, sys
from airflow.dag_processing.dagbag import DagBag

out = []
for variable in json.loads(sys.argv[2]):
    os.environ.pop("AIRFLOW_VAR_MTL_RECSYS_DAILY", None)
    if variable is not None:
        os.environ["AIRFLOW_VAR_MTL_RECSYS_DAILY"] = json.dumps(variable)
    for name in [m for m in sys.modules if m == "mtl" or m.startswith("mtl.")]:
        del sys.modules[name]
    bag = DagBag(dag_folder=sys.argv[1])
    dags = {}
    for dag_id, dag in bag.dags.items():
        tasks = {}
        for t in dag.tasks:
            tasks[t.task_id] = {
                "operator": type(t).__name__,
                "downstream": sorted(t.downstream_task_ids),
                "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)),
                "retries": t.retries,
                "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "retry_delay_s": t.retry_delay.total_seconds(),
                "backoff": t.retry_exponential_backoff,
                "max_retry_delay_s": t.max_retry_delay.total_seconds() if t.max_retry_delay else None,
                "conn_id": getattr(t, "_conn_id", None),
                "application": getattr(t, "application", None),
                "args": getattr(t, "application_args", None),
                "env_vars": getattr(t, "env_vars", None),
                "packages": getattr(t, "packages", None),
                "spark_conf": getattr(t, "conf", None),
                "driver_memory": getattr(t, "_driver_memory", None),
            }
        dags[dag_id] = {
            "max_active_runs": dag.max_active_runs, "catchup": dag.catchup,
            "timetable": type(dag.timetable).__name__, "params": sorted(dag.params.keys()), "tasks": tasks,
        }
    out.append({
        "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
        "dags": dags,
        "mtl_modules": sorted(m for m in sys.modules if m == "mtl" or m.startswith("mtl.")),
    })
print("RESULT " + json.dumps(out))
"""

# One dag.test() run: argv = dag folder, logical date, run conf (JSON), mark-success pattern.
DAG_TEST_SCRIPT = r"""
import datetime as dt, json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
if bag.import_errors:
    print("RESULT " + json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
    sys.exit(1)
dag = bag.get_dag("mtl_recsys_daily")
logical_date = dt.datetime.fromisoformat(sys.argv[2]).replace(tzinfo=dt.timezone.utc)
run = dag.test(logical_date=logical_date, run_conf=json.loads(sys.argv[3]), mark_success_pattern=sys.argv[4] or None)
states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
print("RESULT " + json.dumps({"state": str(getattr(run.state, "value", run.state)), "tasks": states}))
"""


# ------------------------------------------------------------------------------------------------
# The Airflow environment


def _require_airflow() -> None:
    if not AIRFLOW_PYTHON.exists():
        pytest.fail(
            f"no Airflow environment at {AIRFLOW_VENV}: run `bash scripts/bootstrap_airflow.sh` "
            "(it creates .venv-airflow with the pinned Airflow and Spark provider)",
            pytrace=False,
        )


def _airflow_env(home: Path, variable: Optional[dict] = None, spark_host: str = "local[2]") -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_SPARK_LOCAL": json.dumps({"conn_type": "spark", "host": spark_host}),
        }
    )
    if variable is not None:
        env["AIRFLOW_VAR_MTL_RECSYS_DAILY"] = json.dumps(variable)
    return env


def _run_airflow(
    home: Path, args: list[str], variable: Optional[dict] = None, timeout: int = 300, spark_host: str = "local[2]"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(AIRFLOW_PYTHON), *args],
        env=_airflow_env(home, variable, spark_host),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _result(proc: subprocess.CompletedProcess) -> Any:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        pytest.fail(
            f"no result from Airflow (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-8000:]}", pytrace=False
        )
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    """AIRFLOW_HOME with a migrated SQLite metadata database."""
    _require_airflow()
    home = tmp_path_factory.mktemp("airflow_home")
    proc = _run_airflow(home, ["-m", "airflow", "db", "migrate"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return home


def _spark_settings(overrides: list[str], **extra: Any) -> dict:
    """The DAG's settings Variable for local Spark: this project's spark-submit and Python."""
    return {
        "spark_conn_id": "spark_local",
        "overrides": overrides,
        "spark_submit": {
            "driver_memory": "2g",
            "conf": {"spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable},
            "env_vars": {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        },
        **extra,
    }


# ------------------------------------------------------------------------------------------------
# The DAG file, parsed by Airflow


def test_dagbag_tasks_order_retries_and_timeouts(airflow_home, tmp_path):
    settings = _spark_settings(
        ["storage.warehouse=/data/wh", "scoring.k=20"],
        steps={"train": {"retries": 3, "spark_submit": {"driver_memory": "8g", "conf": {"a.b": "1"}}}},
    )
    typo = {"spark_con_id": "x"}
    proc = _run_airflow(airflow_home, ["-c", DAGBAG_SCRIPT, str(DAGS), json.dumps([settings, None, typo])])
    configured, defaults, broken = _result(proc)

    assert configured["import_errors"] == {}
    assert list(configured["dags"]) == [steps.DAG_ID]  # the only DAG in the folder
    dag = configured["dags"][steps.DAG_ID]
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert dag["timetable"] == "CronDataIntervalTimetable"  # a run for ds D covers day D
    assert dag["params"] == ["train_mode"]
    tasks = dag["tasks"]
    assert {(a, b) for a, t in tasks.items() for b in t["downstream"]} == EDGES
    assert set(tasks) == {a for edge in EDGES for a in edge}

    for name in JOBS:
        t, step = tasks[name], steps.BY_NAME[name]
        assert t["operator"] == "SparkSubmitOperator"
        assert t["conn_id"] == "spark_local"
        assert t["application"] == str(ROOT / step.script) and Path(t["application"]).is_file()
        assert t["retries"] == (3 if name == "train" else step.retries)
        assert t["timeout_s"] == step.timeout_minutes * 60
        assert t["backoff"] > 0 and t["retry_delay_s"] == 300 and t["max_retry_delay_s"] == 3600
        assert t["packages"] == steps.DELTA_PACKAGE
        assert t["env_vars"]["PATH"].startswith(str(Path(sys.executable).parent))
        args = t["args"]
        assert args[:2] == ["--conf", str(ROOT / "conf" / "local.yaml")]
        assert args[2:6] == ["--set", "storage.warehouse=/data/wh", "--set", "scoring.k=20"]
        assert args[args.index("--ds") + 1] == "{{ ds }}"
    assert tasks["train"]["args"][-2:] == ["--mode", "{{ params.train_mode }}"]
    # the chain's own decisions (mtl/pipeline/policy.py), as the local runner takes them
    assert tasks["build_features"]["args"][-1] == "--with-pending-days"
    assert tasks["evaluate"]["args"][-1] == tasks["publish"]["args"][-1] == "--trained-for-ds"
    assert tasks["score"]["args"][-1] == "--keep-scored-model"
    assert tasks["train"]["driver_memory"] == "8g" and tasks["score"]["driver_memory"] == "2g"
    assert tasks["train"]["spark_conf"] == {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "a.b": "1",
    }
    assert tasks["publish"]["retries"] == 0  # a refusal is final
    assert tasks["gate_decision"]["trigger_rule"] == "all_done"
    assert tasks["gate_decision"]["timeout_s"] == steps.DECISION_TIMEOUT.total_seconds()
    assert tasks["score"]["trigger_rule"] == "none_failed_min_one_success"
    assert {tasks[n]["trigger_rule"] for n in JOBS if n != "score"} == {"all_success"}
    # the DAG file needs only the standard-library step list of the project
    assert configured["mtl_modules"] == ["mtl", "mtl.pipeline", "mtl.pipeline.steps"]

    # without the Variable: every default, the spark_default connection
    assert defaults["import_errors"] == {}
    assert {t["conn_id"] for n, t in defaults["dags"][steps.DAG_ID]["tasks"].items() if n in JOBS} == {"spark_default"}

    # a misspelt key is the DAG's import error, not silently ignored
    (message,) = broken["import_errors"].values()
    assert "unknown key 'spark_con_id'" in message and "did you mean 'spark_conn_id'" in message


# ------------------------------------------------------------------------------------------------
# The step list (standard library only) and its settings


def test_steps_module_is_standard_library_only_and_matches_the_jobs():
    tree = ast.parse((ROOT / "mtl" / "pipeline" / "steps.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported

    from mtl.spark import delta_package

    assert steps.DELTA_PACKAGE == delta_package()  # the jar of setup.cfg's delta-spark pin
    for step in steps.STEPS:
        assert (ROOT / step.script).is_file(), step.script
    assert steps.STEP_NAMES == JOBS
    from mtl.cli import pipeline as runner

    assert tuple(getattr(runner, "STEPS", steps.STEP_NAMES)) == steps.STEP_NAMES  # the local runner's order
    assert steps.STEP_NAMES.index(steps.GATE_STEP) + 1 == steps.STEP_NAMES.index("score")
    assert {c.table for c in steps.QUALITY_CHECKS} == {*steps.OUTPUT_TABLES, "both"}


def test_settings_validation_and_arguments():
    s = steps.load_settings(
        {
            "conf": "/etc/mtl/cluster.yaml",
            "overrides": ["a.b=1"],
            "spark_submit": {"conf": {"x": "1"}, "env_vars": {"E": "1"}, "num_executors": 4},
            "steps": {"train": {"timeout_minutes": 600, "spark_submit": {"conf": {"y": "2"}, "packages": None}}},
        },
        repo="/srv/mtl",
    )
    train = steps.BY_NAME["train"]
    assert s.application(train) == "/srv/mtl/jobs/train.py"
    assert s.application_args(train, ds="2024-03-09", train_mode="full") == [
        "--conf",
        "/etc/mtl/cluster.yaml",
        "--set",
        "a.b=1",
        "--ds",
        "2024-03-09",
        "--mode",
        "full",
    ]
    assert s.spark_submit_args(train) == {"conf": {"x": "1", "y": "2"}, "env_vars": {"E": "1"}, "num_executors": 4}
    assert s.spark_submit_args(steps.BY_NAME["score"])["packages"] == steps.DELTA_PACKAGE
    assert s.timeout(train) == dt.timedelta(minutes=600) and s.retries(train) == train.retries
    assert steps.load_settings(None, repo="/r").conf_path == "/r/conf/local.yaml"
    assert steps.load_settings(None, repo="/r").train_mode == "auto"  # the runner's policy
    assert steps.load_settings({"train_mode": "incremental"}, repo="/r").train_mode == "incremental"

    for bad, message in (
        ({"steps": {"trian": {}}}, "did you mean 'train'"),
        ({"steps": {"train": {"retries": -1}}}, "retries"),
        ({"spark_submit": {"driver_mem": "1g"}}, "did you mean 'driver_memory'"),
        ({"overrides": "a=1"}, "overrides"),
        ({"train_mode": "weekly"}, "train_mode"),
        ({"catchup": "yes"}, "catchup"),
        ({"start_date": "yesterday"}, "start_date"),
    ):
        with pytest.raises(steps.SettingsError, match=message):
            steps.load_settings(bad, repo="/r")


def test_every_step_s_arguments_parse_in_its_job(monkeypatch):
    """What the DAG passes each job (every train mode) is accepted by the job's own parser, and
    the train modes are the train job's modes plus the policy's auto."""
    import importlib
    import re

    from mtl.pipeline import policy
    from mtl.train.job import MODES

    assert steps.TRAIN_MODES == (policy.AUTO, *MODES) and steps.DEFAULT_TRAIN_MODE == policy.AUTO
    settings = steps.load_settings(None, repo=str(ROOT))
    parsed = {}
    for step in steps.STEPS:
        module = importlib.import_module(
            re.search(r"^from (mtl[\w.]*) import main$", (ROOT / step.script).read_text(), re.M).group(1)
        )
        monkeypatch.setattr(
            module, "run_job", lambda args, body, name=step.name: parsed.setdefault(name, []).append(args) or 0
        )
        for mode in steps.TRAIN_MODES:
            assert module.main(settings.application_args(step, ds="2024-03-09", train_mode=mode)) == 0, step.name
    assert set(parsed) == set(steps.STEP_NAMES)
    assert all(
        a.ds == dt.date(2024, 3, 9) and a.conf == str(ROOT / "conf" / "local.yaml") for v in parsed.values() for a in v
    )
    assert [a.mode for a in parsed["train"]] == list(steps.TRAIN_MODES)
    assert parsed["build_features"][0].with_pending_days and parsed["score"][0].keep_scored_model
    assert parsed["evaluate"][0].trained_for_ds and parsed["publish"][0].trained_for_ds


def test_gate_branch_routes_on_the_gate_state():
    assert steps.after_gate("success") == steps.NEW_MODEL
    assert steps.after_gate("failed") == steps.PREVIOUS_MODEL
    for state in ("upstream_failed", "skipped", None):
        with pytest.raises(RuntimeError, match="a step before it failed"):
            steps.after_gate(state)


# ------------------------------------------------------------------------------------------------
# The check_outputs job on hand-made tables


GOOD, BAD, NONE = dt.date(2024, 3, 9), dt.date(2024, 3, 10), dt.date(2024, 3, 11)
RECS = T.StructType(
    [
        T.StructField(n, t, True)
        for n, t in (
            ("ds", T.DateType()),
            ("user_id", T.StringType()),
            ("rank", T.IntegerType()),
            ("item_id", T.StringType()),
            ("category_id", T.StringType()),
            ("score", T.DoubleType()),
            ("p_click", T.DoubleType()),
            ("p_purchase", T.DoubleType()),
            ("model_version", T.StringType()),
        )
    ]
)
REPS = T.StructType(
    [
        T.StructField(n, t, True)
        for n, t in (
            ("ds", T.DateType()),
            ("user_id", T.StringType()),
            ("item_id", T.StringType()),
            ("category_id", T.StringType()),
            ("p_repurchase_7d", T.DoubleType()),
            ("p_repurchase_30d", T.DoubleType()),
            ("days_since_last_purchase", T.IntegerType()),
            ("model_version", T.StringType()),
        )
    ]
)


def _write(spark, cfg, spec, schema, rows) -> None:
    # nullable columns, so that the checks (not Delta's NOT NULL constraints) meet the bad rows
    spark.createDataFrame(rows, schema).write.format("delta").mode("append").partitionBy("ds").save(
        spec.path(cfg.storage)
    )


def test_check_outputs_passes_good_partitions_and_names_every_violation(spark, make_config, capsys):
    cfg = make_config("scoring.k=3")
    _write(
        spark,
        cfg,
        DAILY_RECOMMENDATIONS,
        RECS,
        [
            (GOOD, "u1", 1, "i1", "c1", 0.5, 0.5, 0.1, "7"),
            (GOOD, "u1", 2, "i2", "c1", 0.4, 0.4, 0.1, "7"),
            (GOOD, "u2", 1, "i1", "c1", 0.3, 0.3, 0.0, "7"),
            (BAD, "u1", 1, "i1", "c1", 0.5, 0.5, 0.1, "8"),
            (BAD, "u1", 3, "i2", "c1", 0.4, 0.4, 0.1, "8"),  # rank gap
            (BAD, None, 1, "i1", "c1", 0.3, 0.3, 0.1, "8"),  # null user
            (BAD, "u3", 1, "i4", "c2", 0.3, 1.5, 0.1, "8"),  # p_click > 1
        ],
    )
    _write(
        spark,
        cfg,
        REPURCHASE_PREDICTIONS,
        REPS,
        [
            (GOOD, "u1", "i1", "c1", 0.2, 0.6, 3, "7"),
            (GOOD, "u1", None, "c1", 0.3, 0.7, 3, "7"),
            (NONE, "u1", "i1", "c1", 0.2, None, 3, "8"),
            (NONE, "u2", "i1", "c1", 0.2, 0.5, 3, "8"),
        ],
    )

    summary = check_outputs(spark, cfg, GOOD)
    assert "8 checks passed" in summary and "daily_recommendations 3 rows for 2 users" in summary
    assert "repurchase_predictions 2 rows" in summary and "model version 7" in summary

    conf = [
        "--conf",
        str(LOCAL_CONF),
        *[
            a
            for o in TEST_OVERRIDES + [f"storage.warehouse={cfg.storage.warehouse}", "scoring.k=3"]
            for a in ("--set", o)
        ],
    ]
    try:
        assert check_outputs_main([*conf, "--ds", str(BAD)]) == 1
        err = capsys.readouterr().err
    finally:  # the job pointed logging at pytest's captured stderr, which closes after the test
        logging.getLogger().handlers.clear()
    assert "the outputs of ds 2024-03-10 fail" in err
    assert "daily_recommendations: 1 rows with a null user_id" in err
    assert "daily_recommendations: 1 users whose ranks are not 1..n" in err
    assert "daily_recommendations: 1 rows with a probability that is not in [0, 1]" in err
    assert "repurchase_predictions: no rows for ds 2024-03-10" in err

    with pytest.raises(OutputQualityError) as failed:
        check_outputs(spark, cfg, NONE)
    assert "daily_recommendations: no rows for ds 2024-03-11" in str(failed.value)
    assert "p_repurchase_30d is null on 1 of 2 rows" in str(failed.value)

    recorded = {r.ds: r.status for r in runs(spark, cfg).where(F.col("job") == "check_outputs").collect()}
    assert recorded == {GOOD: "succeeded", BAD: "failed", NONE: "failed"}


def test_check_outputs_without_tables(spark, make_config):
    cfg = make_config()
    with pytest.raises(
        OutputQualityError, match="daily_recommendations: no table at .*\n.*repurchase_predictions: no table"
    ):
        check_outputs(spark, cfg, GOOD)


# ------------------------------------------------------------------------------------------------
# dag.test(): the whole chain against local Spark on a small generated world

D = START + 8 * DAY  # 16 days generated: D's labels and the next day's events exist
WORLD = ["training.window_days=2", "evaluation.baselines=[popularity, category_popularity, recency_frequency]"]
# The DAG is under test, not the model: the first gate lets any model through, the second none.
OPEN_GATE = "gate.metrics=[{task: click, metric: auc, floor: 0.0}]"
SHUT_GATE = "gate.metrics=[{task: click, metric: auc, floor: 0.999}]"


def _dag_test(
    home: Path,
    settings: dict,
    ds: dt.date,
    run_conf: Optional[dict] = None,
    mark_success: str = "",
    spark_host: str = "local[2]",
) -> dict:
    proc = _run_airflow(
        home,
        ["-c", DAG_TEST_SCRIPT, str(DAGS), ds.isoformat(), json.dumps(run_conf or {}), mark_success],
        variable=settings,
        timeout=3600,
        spark_host=spark_host,
    )
    result = _result(proc)
    assert "tasks" in result, result
    if result["state"] != "success":
        print((proc.stdout + proc.stderr)[-20000:])
    return result


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """Generated, ingested, features of D-2 and D-1 (train's window for D) and D+1 (the second run)."""
    root = tmp_path_factory.mktemp("airflow_world")
    cfg = build_world(spark, world_config(root, *WORLD, days=16), [D - 2 * DAY, D - DAY, D + DAY])
    return root, cfg


@pytest.fixture(scope="module")
def first_run(airflow_home, world):
    root, _ = world
    no_retries = {name: {"retries": 0} for name in steps.STEP_NAMES}
    settings = _spark_settings(world_overrides(root, *WORLD, OPEN_GATE, days=16), steps=no_retries)
    return _dag_test(airflow_home, settings, D)


def _partition(spark, cfg, spec, ds):
    return read_table(spark, cfg, spec).where(F.col("ds") == F.lit(ds))


@pytest.mark.slow
def test_dag_test_runs_the_whole_chain(spark, world, first_run):
    _, cfg = world
    assert first_run["state"] == "success", first_run
    tasks = first_run["tasks"]
    assert {n: tasks[n] for n in JOBS} == {n: "success" for n in JOBS}
    assert tasks["gate_decision"] == "success" and tasks["use_new_model"] == "success"
    assert tasks["keep_previous_model"] == "skipped"

    recs, reps = (_partition(spark, cfg, spec, D) for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS))
    assert recs.count() > 0 and reps.count() > 0
    assert {r[0] for r in recs.select("model_version").distinct().collect()} == {"1"}
    jobs = {(r.job, r.status) for r in runs(spark, cfg).where(F.col("ds") == F.lit(D)).collect()}
    assert {(job, "succeeded") for job in JOBS} <= jobs  # each job wrote its pipeline_runs row


@pytest.mark.slow
def test_refused_gate_scores_with_the_previous_champion(spark, airflow_home, world, first_run):
    """ds D+1: an incremental model (the DAG param) that the gate refuses; the run still scores
    D+1, with the champion of D. Ingest and features of D+1 are there already (marked success)."""
    root, cfg = world
    assert first_run["state"] == "success"
    settings = _spark_settings(
        world_overrides(root, *WORLD, SHUT_GATE, days=16), steps={name: {"retries": 0} for name in steps.STEP_NAMES}
    )
    result = _dag_test(
        airflow_home, settings, D + DAY, run_conf={"train_mode": "incremental"}, mark_success="ingest|build_features"
    )
    tasks = result["tasks"]
    assert result["state"] == "success", result  # a refusal is not a failed day
    assert tasks["train"] == tasks["evaluate"] == "success"
    assert tasks["publish"] == "failed"
    assert tasks["gate_decision"] == "success" and tasks["keep_previous_model"] == "success"
    assert tasks["use_new_model"] == "skipped"
    assert tasks["score"] == tasks["check_outputs"] == tasks["monitor"] == "success"

    for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS):
        versions = {r[0] for r in _partition(spark, cfg, spec, D + DAY).select("model_version").distinct().collect()}
        assert versions == {"1"}, spec.name  # version 2 was trained and refused
    trained = runs(spark, cfg).where((F.col("job") == "train") & (F.col("ds") == F.lit(D + DAY))).first()
    assert trained.status == "succeeded" and trained.model_version == "2"


@pytest.mark.slow
def test_dag_test_on_a_standalone_cluster(spark, airflow_home, standalone_cluster, full_shipment, tmp_path_factory):
    """The same DAG with its Spark connection pointed at a two-worker standalone master: every job
    a spark-submit there, mtl shipped with py_files, the executors in the packed environment,
    training with one Horovod rank per executor."""
    root = tmp_path_factory.mktemp("airflow_cluster_world")
    cfg = build_world(spark, world_config(root, *WORLD, days=16), [D - 2 * DAY, D - DAY, D + DAY])
    on_executors = ("training.launcher=spark", "training.num_proc=2")
    settings = _spark_settings(
        world_overrides(root, *WORLD, OPEN_GATE, *on_executors, days=16),
        steps={name: {"retries": 0} for name in steps.STEP_NAMES},
    )
    settings["spark_submit"]["py_files"] = str(full_shipment.mtl_zip)
    settings["spark_submit"]["conf"] = {
        "spark.pyspark.python": str(full_shipment.unpacked / "bin" / "python"),
        "spark.pyspark.driver.python": sys.executable,
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
    }
    result = _dag_test(airflow_home, settings, D, spark_host=standalone_cluster.master_url)
    assert result["state"] == "success", result
    assert {n: result["tasks"][n] for n in JOBS} == {n: "success" for n in JOBS}
    recs, reps = (_partition(spark, cfg, spec, D) for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS))
    assert recs.count() > 0 and reps.count() > 0
    # Every job ran as an application of the cluster, not in a local JVM.
    apps = standalone_cluster.status()["completedapps"]
    assert len(apps) >= len(JOBS), [a["name"] for a in apps]
