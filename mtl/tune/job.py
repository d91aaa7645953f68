"""The tune job: ``mtl-tune --ds D`` searches the model's hyper-parameters with Optuna.

1. Load the search space (``tuning.space``) and check it against the model config: a bad space
   fails here, before Spark or any training starts.
2. Plan once, exactly as ``mtl-train --mode full`` does (``plan_training``): the same window,
   validation day and Delta table version for every trial.
3. Open (or continue) the study and run what is left of the trial budget in ``tuning.parallel``
   processes against its storage; a run that was killed is continued by starting it again.
4. Write the best trial's model config as a YAML that ``mtl-train --set model_config=<file>``
   loads, and print its path. Nothing is registered or published.

The objective is the model's ``trainer.early_stopping_metric`` on the validation day, maximised
(AUCs) or minimised (log losses).
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from mtl import registry
from mtl.config import Config, ConfigError, parse_typed
from mtl.errors import JobError
from mtl.models.model_config import ModelConfig, load_model_config, metric_is_higher_better
from mtl.tune.space import SearchSpace, choice_of, load_space
from mtl.tune.study import (
    METRIC,
    PARENT_RUN,
    SPACE_DIGEST,
    TAG_STUDY,
    WorkerTask,
    counted,
    load_study,
    local_folder,
    open_storage,
    recover_interrupted,
    run_worker,
    storage_spec,
)

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    ds: dt.date
    study: str
    storage: str
    metric: str
    direction: str
    trials_run: int  # in this invocation
    trials_counted: int  # finished trials of the study, all invocations
    budget: int
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_config_path: str
    parent_run_id: str
    interrupted_retried: int


def default_study_name(ds: dt.date, space: SearchSpace) -> str:
    return f"tune-{ds.isoformat()}-{space.name}"


def check_tune_inputs(cfg: Config, space: Optional[str] = None) -> SearchSpace:
    """Load the search space against the configured model: the checks that need no Spark."""
    try:
        base = load_model_config(cfg.model_config)
    except ConfigError as exc:
        raise ConfigError(f"model_config ({cfg.model_config}): {exc}") from exc
    return load_space(space or cfg.tuning.space, base)


def run_tune(
    spark,
    cfg: Config,
    ds: dt.date,
    *,
    trials: Optional[int] = None,
    timeout_min: Optional[float] = None,
    parallel: Optional[int] = None,
    space: Optional[str] = None,
    study_name: Optional[str] = None,
    output: Optional[str] = None,
) -> TuneResult:
    """Run (or continue) the study for ds until its trial budget or the timeout; write the best config."""
    from mtl.train.job import plan_training

    search = check_tune_inputs(cfg, space)
    budget = trials if trials is not None else cfg.tuning.trials
    parallel = parallel if parallel is not None else cfg.tuning.parallel
    timeout_min = timeout_min if timeout_min is not None else cfg.tuning.timeout_min
    for key, value in (("--trials", budget), ("--parallel", parallel)):
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if timeout_min is not None and timeout_min <= 0:
        raise ConfigError(f"--timeout-min: must be positive, got {timeout_min}")
    started = time.monotonic()
    name = study_name or default_study_name(ds, search)
    spec = storage_spec(cfg, name)
    out = Path(output) if output else _default_output(cfg, name)

    plan = plan_training(spark, cfg, ds, "full")
    model_cfg = parse_typed(ModelConfig, plan.model_config)
    metric = model_cfg.trainer.early_stopping_metric
    direction = "maximize" if metric_is_higher_better(metric) else "minimize"

    storage = open_storage(spec)
    study = load_study(storage, name, direction, cfg.tuning.seed)
    _check_same_study(study, name, search, metric, direction)
    retried = recover_interrupted(study)
    if retried:
        log.info("study %s: %d trial(s) interrupted by a kill are queued again", name, retried)
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    remaining = max(0, budget - done)
    parent = _parent_run(cfg, study, ds, name, spec, search, metric)
    log.info(
        "study %s (%s): %d of %d trials finished, running %d in %d process(es); objective %s (%s) on %s",
        name,
        spec,
        done,
        budget,
        remaining,
        min(parallel, max(remaining, 1)),
        metric,
        direction,
        plan.val_day,
    )
    timeout_s = None if timeout_min is None else timeout_min * 60 - (time.monotonic() - started)
    tasks = [
        WorkerTask(
            cfg=cfg,
            plan=plan,
            space=search,
            study_name=name,
            storage=spec,
            metric=metric,
            direction=direction,
            budget=budget,
            n_trials=n,
            timeout_s=None if timeout_s is None else max(1.0, timeout_s),
            # distinct and reproducible: per worker, and per restart (a restart must not replay the
            # sampler's first draws)
            seed=cfg.tuning.seed + 1000 * len(study.get_trials(deepcopy=False)) + i,
            parent_run_id=parent,
        )
        for i, n in enumerate(_split(remaining, parallel))
        if n > 0
    ]
    client = registry.tracking_client(cfg)
    client.update_run(parent, status="RUNNING")
    try:
        ran = _run_workers(spark, tasks, cfg.tuning.launcher)
    except BaseException:
        client.set_terminated(parent, "KILLED")
        raise
    study = load_study(storage, name, direction, cfg.tuning.seed)
    finished = [t for t in study.get_trials(deepcopy=False) if counted(t)]
    complete = [t for t in finished if t.value is not None and t.state.name == "COMPLETE"]
    if not complete:
        client.set_terminated(parent, "FAILED")
        raise JobError(f"study {name}: no trial completed ({len(finished)} finished, none with a value)")
    best = study.best_trial
    best_model = search.apply(plan.model_config, _values(search, best.params))
    _write_best(out, best_model, name, best.number, metric, best.value, best.params, ds, plan)
    client.log_batch(
        parent,
        metrics=[
            _metric(f"best_{metric}", best.value),
            _metric("trials_finished", len(finished)),
            _metric("best_trial", best.number),
        ],
    )
    client.set_tag(parent, "mtl.tune.best_config", str(out))
    client.set_terminated(parent, "FINISHED")
    return TuneResult(
        ds=ds,
        study=name,
        storage=spec,
        metric=metric,
        direction=direction,
        trials_run=sum(ran),
        trials_counted=len(finished),
        budget=budget,
        best_trial=best.number,
        best_value=best.value,
        best_params=dict(best.params),
        best_config_path=str(out),
        parent_run_id=parent,
        interrupted_retried=retried,
    )


def _run_workers(spark, tasks: list[WorkerTask], launcher: str) -> list[int]:
    if launcher == "spark" and tasks:
        # One Spark task per worker on this job's executors; every executor must reach the
        # study's storage (an RDB URL, or a journal file on a shared folder) and the tracking store.
        log.info("running %d tuning worker(s) as Spark tasks on this job's executors", len(tasks))
        return spark.sparkContext.parallelize(tasks, len(tasks)).map(run_worker).collect()
    if len(tasks) <= 1:
        return [run_worker(t) for t in tasks]  # in this process: no start-up cost
    # spawn: a fresh interpreter per worker (fork would copy the JVM gateway and torch's threads)
    level = logging.getLogger().getEffectiveLevel()
    with multiprocessing.get_context("spawn").Pool(len(tasks), initializer=_worker_logging, initargs=(level,)) as pool:
        return pool.map(run_worker, tasks, chunksize=1)


def _worker_logging(level: int) -> None:
    """A spawned worker starts with no logging set up: its progress lines go to stderr like the driver's."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("petastorm").setLevel(max(level, logging.WARNING))


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _values(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """The model-config values of a trial's Optuna params (list choices are stored as JSON text)."""
    out = {}
    for p in space.params:
        if p.name not in params:
            continue
        value = params[p.name]
        if p.kind == "categorical":
            value = choice_of(p, value)
        out[p.name] = value
    return out


def _check_same_study(study, name: str, space: SearchSpace, metric: str, direction: str) -> None:
    attrs = study.user_attrs
    if SPACE_DIGEST not in attrs:
        study.set_user_attr(SPACE_DIGEST, space.digest())
        study.set_user_attr(METRIC, metric)
        return
    same = attrs[SPACE_DIGEST] == space.digest() and attrs.get(METRIC) == metric
    if not same or study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {name!r} was started with another search space or objective ({attrs.get(METRIC)}); "
            "give a new --study name to search this one"
        )


def _parent_run(cfg: Config, study, ds: dt.date, name: str, spec: str, space: SearchSpace, metric: str) -> str:
    """The study's MLflow parent run ``tune <ds>``: created once, reused by every restart."""
    run_id = study.user_attrs.get(PARENT_RUN)
    if run_id:
        return run_id
    client = registry.tracking_client(cfg)
    run = client.create_run(
        registry.experiment_id_of(client, cfg),
        run_name=f"tune {ds.isoformat()}",
        tags={TAG_STUDY: name, "ds": ds.isoformat(), "mtl.job": "tune"},
    )
    run_id = run.info.run_id
    for key, value in {
        "study": name,
        "storage": spec,
        "space": space.path,
        "objective": metric,
        "model_config": cfg.model_config,
    }.items():
        client.log_param(run_id, key, value)
    study.set_user_attr(PARENT_RUN, run_id)
    return run_id


def _default_output(cfg: Config, name: str) -> Path:
    from mtl.tables import warehouse_root

    folder = local_folder(warehouse_root(cfg.storage))
    if folder is None:
        raise ConfigError("--output: required when storage.warehouse is not a local folder")
    return folder / cfg.tuning.storage_dir / name / "best_model.yaml"


def _write_best(out: Path, model: dict[str, Any], study: str, number: int, metric: str, value: float, params, ds, plan):
    """The best model config, complete (no ``extends``), loadable by load_model_config."""
    parse_typed(ModelConfig, model)  # what mtl-train will read
    header = [
        f"# The best trial of the Optuna study {study} (mtl-tune --ds {ds.isoformat()}): trial {number},",
        f"# {metric} {value:.6f} on the validation day {plan.val_day}"
        f" (trained on {plan.train_days[0]}..{plan.train_days[1]}).",
        "# Train and register it with: mtl-train --ds <D> --set model_config=<this file>",
        "# Tuned values: " + ", ".join(f"{k}={v}" for k, v in params.items()),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(header) + "\n" + yaml.safe_dump(model, sort_keys=False, default_flow_style=None))
    tmp.replace(out)
    load_model_config(out)  # fails loudly if the file is not one mtl-train accepts


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def summarize(r: TuneResult) -> str:
    params = ", ".join(f"{k}={v}" for k, v in r.best_params.items())
    return (
        f"study {r.study} for ds {r.ds}: ran {r.trials_run} trial(s), {r.trials_counted} of {r.budget} finished"
        f"{f' ({r.interrupted_retried} interrupted trial(s) retried)' if r.interrupted_retried else ''}\n"
        f"best: trial {r.best_trial}, {r.metric} {r.best_value:.4f} ({r.direction}d); {params}\n"
        f"best model config: {r.best_config_path}\n"
        f"(MLflow parent run {r.parent_run_id}; nothing registered or published: "
        f"train it with mtl-train --set model_config={r.best_config_path})"
    )
