"""mtl_recsys_daily: the daily recommender chain, one spark-submit task per job.

ingest >> build_features >> train >> evaluate >> publish (the quality gate)
  >> gate_decision >> use_new_model | keep_previous_model >> score >> check_outputs >> monitor

Each run passes its logical date as ``--ds``. A refused gate fails ``publish`` and leaves the
champion as it was; ``gate_decision`` then takes ``keep_previous_model`` and the run still scores
with the previous champion. Runs never overlap (max_active_runs=1) and every job replaces what it
wrote for its ds, so retries, reruns and catch-up are safe; a rerun keeps the model version the
ds was trained and scored with (the jobs' flags apply mtl/pipeline/policy.py, as the local runner
does).

Wiring only: the steps come from mtl/pipeline/steps.py (standard library only), the deployment
settings from the Airflow Variable ``mtl_recsys_daily``; see airflow_dags/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, TriggerRule, Variable, chain, task

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mtl.pipeline import steps  # noqa: E402  (standard library only: no PySpark needed here)

settings = steps.load_settings(
    Variable.get(steps.SETTINGS_VARIABLE, default=None, deserialize_json=True), repo=str(REPO)
)

with DAG(
    dag_id=steps.DAG_ID,
    description="Daily multi-task recommender: ingest -> features -> train -> gate -> score -> checks",
    schedule=CronDataIntervalTimetable(settings.schedule, timezone=settings.timezone),
    start_date=pendulum.parse(settings.start_date, tz=settings.timezone),
    catchup=settings.catchup,
    max_active_runs=1,
    default_args={
        "owner": settings.owner,
        "retry_delay": settings.retry_delay,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": settings.max_retry_delay,
    },
    params={
        "train_mode": Param(
            settings.train_mode,
            enum=list(steps.TRAIN_MODES),
            description="train --mode. auto: full when nothing is published or on the weekly "
            "full-retrain day, else incremental from the champion; a rerun keeps "
            "the version trained for ds. full / incremental: train a new version "
            "in that mode (also on a rerun)",
        ),
    },
    tags=["mtl-recsys", "spark"],
    doc_md=__doc__,
) as dag:
    jobs = [
        SparkSubmitOperator(
            task_id=step.name,
            conn_id=settings.spark_conn_id,
            application=settings.application(step),
            application_args=settings.application_args(step, ds="{{ ds }}", train_mode="{{ params.train_mode }}"),
            name=f"{steps.DAG_ID}.{step.name}",
            retries=settings.retries(step),
            execution_timeout=settings.timeout(step),
            doc_md=step.doc,
            **settings.spark_submit_args(step),
        )
        for step in steps.STEPS
    ]

    @task.branch(
        task_id=steps.GATE_DECISION,
        trigger_rule=TriggerRule.ALL_DONE,
        retries=0,
        execution_timeout=steps.DECISION_TIMEOUT,
    )
    def gate_decision(ti=None) -> str:
        """Routes on the gate's outcome: published -> use_new_model, refused -> keep_previous_model."""
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[steps.GATE_STEP], run_ids=[ti.run_id])
        return steps.after_gate(states.get(ti.run_id, {}).get(steps.GATE_STEP))

    gate = steps.STEP_NAMES.index(steps.GATE_STEP)
    jobs[gate + 1].trigger_rule = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS  # after either path
    chain(*jobs[: gate + 1])
    chain(
        jobs[gate],
        gate_decision(),
        [EmptyOperator(task_id=steps.NEW_MODEL), EmptyOperator(task_id=steps.PREVIOUS_MODEL)],
        *jobs[gate + 1 :],
    )
