"""The Optuna study of ``mtl-tune``: its storage, the trial objective (one training run) and the
worker loop that each parallel process runs against the same storage.

- Storage: a journal file per study under ``<warehouse>/<tuning.storage_dir>/`` (no database
  needed; Optuna locks the file, so processes on one host, or on hosts sharing the folder, can
  write it together), or any Optuna storage URL (``tuning.storage``).
- A trial is ``train_worker`` on the job's plan with the sampled model config and a checkpoint
  folder of its own: the same window and validation day as ``mtl-train``, nothing registered.
- Pruning: the trainer's per-epoch ``val/<metric>`` is reported to Optuna (MedianPruner); a
  hopeless trial stops after the epoch it is judged at.
- Each trial is an MLflow child run of the study's parent run: the sampled values as params, the
  validation metrics (per epoch and final), tags with the trial number and its state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from mtl import registry
from mtl.config import Config, ConfigError, parse_typed
from mtl.models.model_config import ModelConfig, check_model_config
from mtl.tables import warehouse_root
from mtl.train.job import TrainPlan, train_worker
from mtl.tune.space import SearchSpace

log = logging.getLogger(__name__)

# Trial user attribute set on a trial found RUNNING when a study is opened again: its process was
# killed. It does not count towards the budget and its values are tried again.
INTERRUPTED = "interrupted"
PARENT_RUN = "mlflow_parent_run_id"
SPACE_DIGEST = "space_digest"
METRIC = "metric"
TAG_STUDY, TAG_TRIAL, TAG_STATE = "mtl.tune.study", "mtl.tune.trial", "mtl.tune.state"


def local_folder(uri: str) -> Optional[Path]:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(urllib.parse.unquote(parsed.path) if parsed.scheme else uri)
    return None


def storage_spec(cfg: Config, study_name: str) -> str:
    """Where the study lives: an Optuna storage URL, or the path of a journal file (``.log``)."""
    if cfg.tuning.storage:
        return cfg.tuning.storage
    folder = local_folder(warehouse_root(cfg.storage))
    if folder is None:
        raise ConfigError(
            f"tuning.storage: required when storage.warehouse ({warehouse_root(cfg.storage)}) is not a local folder;"
            " give an Optuna storage URL or a journal file on a shared folder"
        )
    return str(folder / cfg.tuning.storage_dir / f"{study_name}.log")


def open_storage(spec: str) -> Any:
    if "://" in spec and not spec.endswith(".log"):
        return spec  # an RDB URL: Optuna builds the storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = local_folder(spec) or Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards the budget: finished, and not interrupted by a kill."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED)


def load_study(storage: Any, name: str, direction: str, seed: int) -> optuna.Study:
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )


def recover_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed run: mark them failed (interrupted) and queue their values
    again. Only one ``mtl-tune`` may work on a study at a time for this to be right."""
    n = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        n += 1
    return n


@dataclass(frozen=True)
class WorkerTask:
    """Everything one worker process needs (picklable: it travels to spawned processes)."""

    cfg: Config
    plan: TrainPlan
    space: SearchSpace
    study_name: str
    storage: str
    metric: str
    direction: str
    budget: int
    n_trials: int
    timeout_s: Optional[float]
    seed: int
    parent_run_id: str


def run_worker(task: WorkerTask) -> int:
    """Run up to ``task.n_trials`` trials (and stop at the timeout); the number of trials run."""
    if task.n_trials <= 0:
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress line below replaces Optuna's
    study = optuna.load_study(
        study_name=task.study_name,
        storage=open_storage(task.storage),
        sampler=optuna.samplers.TPESampler(seed=task.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=task.cfg.tuning.pruner_startup_trials,
            n_warmup_steps=task.cfg.tuning.pruner_warmup_epochs,
        ),
    )
    ran: list[int] = []

    def finished(s: optuna.Study, t: FrozenTrial) -> None:
        ran.append(t.number)
        log.info("%s", progress_line(task, s, t))

    study.optimize(
        lambda trial: objective(task, trial),
        n_trials=task.n_trials,
        timeout=task.timeout_s,
        catch=(ConfigError,),  # a combination the model config rejects fails that trial only
        callbacks=[finished],
    )
    return len(ran)


def objective(task: WorkerTask, trial: optuna.Trial) -> float:
    started = time.monotonic()
    values = task.space.sample(trial)
    model = task.space.apply(task.plan.model_config, values)
    check_model_config(parse_typed(ModelConfig, model))  # ConfigError: this trial fails, the study goes on
    folder = Path(f"{task.plan.checkpoint_dir}-tune") / task.study_name / f"trial-{trial.number:04d}"
    shutil.rmtree(folder, ignore_errors=True)  # a trial always trains from scratch
    plan = dataclasses.replace(task.plan, model_config=model, checkpoint_dir=str(folder))
    per_epoch: list[tuple[int, int, dict[str, float]]] = []

    def observe(metrics: dict[str, float], step: int) -> None:
        key = f"val/{task.metric}"
        if "epoch" not in metrics or key not in metrics:
            return
        epoch = int(metrics["epoch"])
        per_epoch.append((epoch, step, metrics))
        if math.isfinite(metrics[key]):
            trial.report(metrics[key], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}: {task.metric} {metrics[key]:.4f}")

    client = registry.tracking_client(task.cfg)
    tags = {
        "mlflow.parentRunId": task.parent_run_id,
        TAG_STUDY: task.study_name,
        TAG_TRIAL: str(trial.number),
        "ds": task.plan.ds,
    }
    state, final = "failed", {}
    with registry.MlflowRun(task.cfg, run_name=f"trial {trial.number}", tags=tags) as run:
        trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params({"trial": trial.number, **{k: _param_text(v) for k, v in values.items()}})
        try:
            result = train_worker(plan, observe)
            final = result.final_metrics
            state = "complete"
        except optuna.TrialPruned:
            state = "pruned"
            raise
        finally:
            for _epoch, step, metrics in per_epoch:
                run.log_metrics(_finite({k.replace("/", "_"): v for k, v in metrics.items()}), step)
            if final:
                run.log_metrics(_finite(final), 0)
            client.set_tag(run.run_id, TAG_STATE, state)
            trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
            shutil.rmtree(folder, ignore_errors=True)
    trial.set_user_attr("final_metrics", _finite(final))
    value = final.get(task.metric, float("nan"))
    if not math.isfinite(value):
        raise ConfigError(f"trial {trial.number}: {task.metric} is not finite on the validation day ({value})")
    return value


def progress_line(task: WorkerTask, study: optuna.Study, trial: FrozenTrial) -> str:
    """``trial 3 (4/20): mean_auc 0.7412 (best 0.7455 at trial 1) in 41 s; optimizer.lr=...``"""
    trials = study.get_trials(deepcopy=False)
    done = sum(counted(t) for t in trials)
    seconds = trial.user_attrs.get("seconds")
    if seconds is None and trial.datetime_start and trial.datetime_complete:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    if trial.state == TrialState.COMPLETE:
        outcome = f"{task.metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = trial.last_step
        value = trial.intermediate_values.get(last) if last is not None else None
        outcome = f"pruned at epoch {last} ({task.metric} {value:.4f})" if value is not None else "pruned"
    else:
        outcome = f"failed ({trial.user_attrs.get('error') or trial.system_attrs.get('fail_reason', 'see the log')})"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = (max if task.direction == "maximize" else min)(complete, key=lambda t: t.value)
        best_text = f"best {best.value:.4f} at trial {best.number}"
    else:
        best_text = "no trial complete yet"
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return f"trial {trial.number} ({done}/{task.budget}): {outcome} ({best_text}) in {seconds or 0:.0f} s; {params}"


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _param_text(value: Any) -> str:
    return str(value)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
