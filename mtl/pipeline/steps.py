"""The daily chain's steps, in order: what the Airflow DAG wires and what the local runner follows.

Standard library only. Airflow runs in its own virtual environment, without PySpark or PyTorch,
and imports this module to parse ``airflow_dags/mtl_recsys_daily.py``. Keep it that way: no
import from the rest of ``mtl`` here.

Every step is one spark-submit job under ``jobs/``. Each takes ``--conf FILE``, any number of
``--set key=value`` and the logical date ``--ds YYYY-MM-DD``, and exits 0 when it succeeds,
1 when it fails, 2 on a config error. Every job replaces what it wrote for its ds, so retries,
reruns and catch-up runs are safe.

The jobs take the chain's own decisions (``mtl/pipeline/policy.py``, the same functions the
local runner calls) through the flags below: build_features ``--with-pending-days`` (the
training window's missing days and the days whose labels just matured), train ``--mode auto``
(full or incremental by the policy; a rerun keeps the version trained for ds), evaluate and
publish ``--trained-for-ds`` (that version, not the latest registered), and score
``--keep-scored-model`` (a rerun scores with the version ds was scored with before). publish
skips, exit 0, when a newer version is already the champion.

The quality gate (``publish``) exits non-zero when it refuses a model. It never changes the
published model then, so the chain goes on and scores with the previous champion: the DAG
routes around the gate with a branch (``after_gate``) rather than stopping.

Deployment settings (where the code and config are, the Spark connection, spark-submit
arguments, retries) come from the Airflow Variable ``mtl_recsys_daily``, a JSON object read by
``load_settings``: see ``SETTINGS_DOC`` and airflow_dags/README.md.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

DAG_ID = "mtl_recsys_daily"
SETTINGS_VARIABLE = "mtl_recsys_daily"

# Placeholders in Step.args, filled by Settings.application_args (the DAG fills them with Jinja).
DS = "{ds}"
TRAIN_MODE = "{train_mode}"

# train --mode: auto is the chain's policy (mtl/pipeline/policy.py); full and incremental force
# that mode and always train a new version (how an operator retrains a ds on a rerun).
TRAIN_MODES = ("auto", "full", "incremental")
DEFAULT_TRAIN_MODE = "auto"


@dataclass(frozen=True)
class Step:
    """One job of the chain."""

    name: str  # the Airflow task id and the runner's step name
    script: str  # the spark-submit application, relative to the repository root
    args: tuple[str, ...] = ("--ds", DS)  # after --conf and --set; placeholders DS, TRAIN_MODE
    retries: int = 2  # a job is idempotent for its ds, so a retry is safe
    timeout_minutes: int = 60  # per attempt
    doc: str = ""


STEPS: tuple[Step, ...] = (
    Step(
        "ingest",
        "jobs/ingest.py",
        retries=2,
        timeout_minutes=60,
        doc="Raw logs of ds (`ingest.input`, `{ds}` filled in) -> `events`; rows already there are skipped.",
    ),
    Step(
        "build_features",
        "jobs/build_features.py",
        ("--ds", DS, "--with-pending-days"),
        retries=2,
        timeout_minutes=120,
        doc="`events` before each day -> the feature tables and `training_examples` of ds, of the training "
        "window's days that have none yet, and of the days whose repurchase labels just matured "
        "(partitions replaced).",
    ),
    Step(
        "train",
        "jobs/train.py",
        ("--ds", DS, "--mode", TRAIN_MODE),
        retries=1,
        timeout_minutes=240,
        doc="`training_examples` before ds -> a new registered model version (never published here). "
        "--mode auto (the default param): full when nothing is published or on the full-retrain "
        "weekday, else incremental; a rerun of ds keeps the version trained for it.",
    ),
    Step(
        "evaluate",
        "jobs/evaluate.py",
        ("--ds", DS, "--trained-for-ds"),
        retries=1,
        timeout_minutes=120,
        doc="The version trained for ds (registered or kept by train) and its baselines on ds -> "
        "`model_metrics` and a report.",
    ),
    Step(
        "publish",
        "jobs/publish.py",
        ("--ds", DS, "--trained-for-ds"),
        retries=0,
        timeout_minutes=15,
        doc="The quality gate: the version trained for ds becomes the champion, or the job fails and the "
        "champion stays as it was. Not retried: a refusal is final. Skipped (success, nothing changed) "
        "when a newer version is already the champion.",
    ),
    Step(
        "score",
        "jobs/score.py",
        ("--ds", DS, "--keep-scored-model"),
        retries=2,
        timeout_minutes=120,
        doc="The champion (a rerun: the version ds was scored with before) -> the ds partitions of "
        "`daily_recommendations` and `repurchase_predictions`.",
    ),
    Step(
        "check_outputs",
        "jobs/check_outputs.py",
        retries=1,
        timeout_minutes=30,
        doc="Data-quality checks of both output tables for ds (QUALITY_CHECKS); fails on any violation.",
    ),
    Step(
        "monitor",
        "jobs/monitor.py",
        retries=1,
        timeout_minutes=30,
        doc="Drift and health of ds against the days before -> `monitoring_metrics`, judged by "
        "`monitoring.thresholds`; breaches go to the alert webhook, a fail bound crossed fails the task.",
    ),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}

# The gate and the branch after it (Airflow task ids).
GATE_STEP = "publish"
GATE_DECISION = "gate_decision"  # branch: which of the two paths below
NEW_MODEL = "use_new_model"  # the gate published the version (or had nothing to do): score with the champion
PREVIOUS_MODEL = "keep_previous_model"  # the gate refused: score with the previous champion
DECISION_TIMEOUT = dt.timedelta(minutes=5)

# Airflow task states, as strings (no Airflow import here).
_SUCCESS = "success"
_FAILED = "failed"


def after_gate(gate_state: Optional[str]) -> str:
    """The task id to follow once the gate (publish) has finished in ``gate_state``.

    success: the version trained for ds is the champion (or publish skipped it: it already was, or
    a newer version is, on a rerun of an earlier ds). failed: the gate refused it (or could not decide);
    publishing is one alias move, so the champion is the previous one either way. Any other state
    means the gate did not run because a step before it failed: there is nothing to score.
    """
    if gate_state == _SUCCESS:
        return NEW_MODEL
    if gate_state == _FAILED:
        return PREVIOUS_MODEL
    raise RuntimeError(
        f"the quality gate ({GATE_STEP}) ended in state {gate_state!r}, not success or failed: "
        "a step before it failed, so there is no model decision to score with"
    )


@dataclass(frozen=True)
class QualityCheck:
    table: str
    name: str
    rule: str


# What check_outputs verifies on the ds partition of each output table (mtl/pipeline/check_outputs.py).
QUALITY_CHECKS: tuple[QualityCheck, ...] = (
    QualityCheck("daily_recommendations", "partition", "the table exists and its ds partition has rows"),
    QualityCheck("daily_recommendations", "ids", "no null user_id or item_id"),
    QualityCheck(
        "daily_recommendations",
        "ranks",
        "each user's ranks are 1..n without gaps or repeats, n <= scoring.k, no item twice",
    ),
    QualityCheck(
        "daily_recommendations",
        "probabilities",
        "p_click and p_purchase in [0, 1], score finite and >= 0 (null and NaN fail)",
    ),
    QualityCheck("repurchase_predictions", "partition", "the table exists and its ds partition has rows"),
    QualityCheck(
        "repurchase_predictions",
        "ids",
        "no null user_id, an item or a category on every row, each (user, item, category) once",
    ),
    QualityCheck(
        "repurchase_predictions",
        "probabilities",
        "each p_repurchase_* column is null on every row (the model has no such task) or in [0, 1] "
        "on every row, and at least one column has values",
    ),
    QualityCheck("both", "model_version", "both partitions were written by one and the same model version"),
)
OUTPUT_TABLES: tuple[str, ...] = ("daily_recommendations", "repurchase_predictions")


# ------------------------------------------------------------------------------------------------
# Deployment settings: the Airflow Variable SETTINGS_VARIABLE (JSON), every key optional.

# SparkSubmitOperator arguments a deployment may set (for every step, or per step).
SPARK_SUBMIT_KEYS = frozenset(
    {
        "conf",
        "packages",
        "exclude_packages",
        "repositories",
        "py_files",
        "files",
        "archives",
        "jars",
        "driver_class_path",
        "driver_memory",
        "executor_memory",
        "executor_cores",
        "num_executors",
        "total_executor_cores",
        "env_vars",
        "spark_binary",
        "deploy_mode",
        "properties_file",
        "yarn_queue",
        "keytab",
        "principal",
        "proxy_user",
        "verbose",
        "status_poll_interval",
    }
)
_MERGED_DICTS = ("conf", "env_vars")  # a step's entries are added to the common ones

# Delta Lake jars for spark-submit: the coordinate of setup.cfg's delta-spark pin
# (tests/test_airflow_dag.py checks they agree).
DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"

SETTINGS_DOC: dict[str, str] = {
    "repo": "folder on the workers holding jobs/ and conf/ (default: the repository this DAG file is in)",
    "conf": "the jobs' --conf, relative to repo or absolute (default conf/local.yaml)",
    "overrides": "list of 'key.path=value' passed to every job as --set",
    "spark_conn_id": "Airflow connection of the Spark master and deploy mode (default spark_default)",
    "spark_submit": "SparkSubmitOperator arguments for every step (packages, conf, driver_memory, env_vars, ...)",
    "steps": "per step name: {retries, timeout_minutes, spark_submit}",
    "train_mode": "default of the DAG param train_mode: auto, full or incremental (default auto)",
    "schedule": "cron expression or preset; each run covers one interval, its logical date is --ds (default @daily)",
    "timezone": "time zone of the schedule and of start_date (default UTC)",
    "start_date": "first logical date, YYYY-MM-DD (default 2024-01-01)",
    "catchup": "create a run for every missed interval since start_date (default false)",
    "retry_delay_minutes": "first retry delay; doubles with each retry (default 5)",
    "max_retry_delay_minutes": "cap of the retry delay (default 60)",
    "owner": "task owner shown in the UI (default mtl-recsys)",
}
_STEP_KEYS = ("retries", "timeout_minutes", "spark_submit")


class SettingsError(ValueError):
    """The settings Variable has a key or value the DAG cannot use; the message says which."""


@dataclass(frozen=True)
class StepSettings:
    retries: Optional[int] = None
    timeout_minutes: Optional[float] = None
    spark_submit: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    repo: str
    conf: str = "conf/local.yaml"
    overrides: tuple[str, ...] = ()
    spark_conn_id: str = "spark_default"
    spark_submit: Mapping[str, Any] = field(default_factory=lambda: {"packages": DELTA_PACKAGE})
    steps: Mapping[str, StepSettings] = field(default_factory=dict)
    train_mode: str = DEFAULT_TRAIN_MODE
    schedule: str = "@daily"
    timezone: str = "UTC"
    start_date: str = "2024-01-01"
    catchup: bool = False
    retry_delay_minutes: float = 5.0
    max_retry_delay_minutes: float = 60.0
    owner: str = "mtl-recsys"

    @property
    def conf_path(self) -> str:
        return os.path.join(self.repo, self.conf)  # an absolute conf stays as it is

    def application(self, step: Step) -> str:
        return os.path.join(self.repo, step.script)

    def application_args(self, step: Step, ds: str, train_mode: str) -> list[str]:
        """--conf, the --set overrides, then the step's own arguments with ds and train_mode filled in."""
        args = ["--conf", self.conf_path]
        for override in self.overrides:
            args += ["--set", override]
        return args + [a.replace(DS, ds).replace(TRAIN_MODE, train_mode) for a in step.args]

    def _step(self, step: Step) -> StepSettings:
        return self.steps.get(step.name, StepSettings())

    def retries(self, step: Step) -> int:
        own = self._step(step).retries
        return step.retries if own is None else own

    def timeout(self, step: Step) -> dt.timedelta:
        own = self._step(step).timeout_minutes
        return dt.timedelta(minutes=step.timeout_minutes if own is None else own)

    @property
    def retry_delay(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.retry_delay_minutes)

    @property
    def max_retry_delay(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.max_retry_delay_minutes)

    def spark_submit_args(self, step: Step) -> dict[str, Any]:
        """The SparkSubmitOperator arguments of ``step``: the common ones, then the step's own
        (its ``conf`` and ``env_vars`` entries are added to the common ones)."""
        merged = {k: (dict(v) if k in _MERGED_DICTS else v) for k, v in self.spark_submit.items()}
        for key, value in self._step(step).spark_submit.items():
            if key in _MERGED_DICTS and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return {k: v for k, v in merged.items() if v is not None}


def load_settings(raw: Optional[Mapping[str, Any]], repo: str) -> Settings:
    """Settings from the Variable's JSON (None: all defaults). Unknown keys and wrong types raise
    SettingsError naming the key, so a typo shows as the DAG's import error instead of being ignored."""
    raw = dict(raw or {})
    _known(raw, SETTINGS_DOC, SETTINGS_VARIABLE)
    values: dict[str, Any] = {"repo": _typed(raw, "repo", str, repo)}
    for key in ("conf", "spark_conn_id", "train_mode", "schedule", "timezone", "start_date", "owner"):
        if key in raw:
            values[key] = _typed(raw, key, str)
    if "catchup" in raw:
        values["catchup"] = _typed(raw, "catchup", bool)
    for key in ("retry_delay_minutes", "max_retry_delay_minutes"):
        if key in raw:
            values[key] = float(_typed(raw, key, (int, float)))
    if "overrides" in raw:
        overrides = _typed(raw, "overrides", list)
        if not all(isinstance(o, str) and "=" in o for o in overrides):
            raise SettingsError(f"{SETTINGS_VARIABLE}.overrides: a list of 'key.path=value' strings, got {overrides!r}")
        values["overrides"] = tuple(overrides)
    if "spark_submit" in raw:  # over the defaults: "packages": null drops the Delta package
        values["spark_submit"] = {
            "packages": DELTA_PACKAGE,
            **_spark_submit(raw["spark_submit"], f"{SETTINGS_VARIABLE}.spark_submit"),
        }
    if "steps" in raw:
        per_step = _typed(raw, "steps", dict)
        _known(per_step, BY_NAME, f"{SETTINGS_VARIABLE}.steps")
        values["steps"] = {
            name: _step_settings(entry, f"{SETTINGS_VARIABLE}.steps.{name}") for name, entry in per_step.items()
        }
    if values.get("train_mode", DEFAULT_TRAIN_MODE) not in TRAIN_MODES:
        raise SettingsError(f"{SETTINGS_VARIABLE}.train_mode: one of {TRAIN_MODES}, got {values['train_mode']!r}")
    try:
        dt.date.fromisoformat(values.get("start_date", "2024-01-01"))
    except ValueError:
        raise SettingsError(
            f"{SETTINGS_VARIABLE}.start_date: a date YYYY-MM-DD, got {values['start_date']!r}"
        ) from None
    return Settings(**values)


def _step_settings(entry: Any, where: str) -> StepSettings:
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: an object with {', '.join(_STEP_KEYS)}, got {entry!r}")
    _known(entry, _STEP_KEYS, where)
    retries = entry.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise SettingsError(f"{where}.retries: a whole number >= 0, got {retries!r}")
    timeout = entry.get("timeout_minutes")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise SettingsError(f"{where}.timeout_minutes: a number > 0, got {timeout!r}")
    return StepSettings(retries, timeout, _spark_submit(entry.get("spark_submit", {}), f"{where}.spark_submit"))


def _spark_submit(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: an object of SparkSubmitOperator arguments, got {value!r}")
    _known(value, SPARK_SUBMIT_KEYS, where)
    for key in _MERGED_DICTS:
        if key in value and not isinstance(value[key], dict):
            raise SettingsError(f"{where}.{key}: an object, got {value[key]!r}")
    return dict(value)


def _known(raw: Mapping[str, Any], allowed, where: str) -> None:
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})"
            raise SettingsError(f"unknown key {key!r} in {where}{hint}")


def _typed(raw: Mapping[str, Any], key: str, kind, default: Any = None) -> Any:
    if key not in raw:
        return default
    value = raw[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise SettingsError(f"{SETTINGS_VARIABLE}.{key}: expected {names}, got {value!r}")
    return value
