"""The train job: training_examples (Delta snapshot, via Petastorm) -> a new registered model version.

Three launch modes share one worker function, ``train_worker``:

- ``local``: this process trains alone;
- ``horovodrun``: ``horovodrun -np N python jobs/train.py ...`` starts N copies; rank 0 plans
  with Spark and broadcasts the plan, every rank trains on its shard, rank 0 registers;
- ``spark``: the driver plans, ``horovod.spark.run`` runs the worker on the job's executors.

Neither mode touches the published model: the new version is only registered. Publishing
(the ``champion`` alias) is the quality gate's job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import itertools
import json
import logging
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from mtl import registry
from mtl.config import Config, parse_typed
from mtl.data.loader import ExampleBatches
from mtl.data.snapshot import Snapshot, snapshot_files
from mtl.errors import InputError, JobError
from mtl.models.artifacts import (
    BUCKET_USAGE_KEY,
    artifact_bucket_usage,
    encode_bucket_usage,
    merge_bucket_usage,
    read_feature_stats,
    register_model,
)
from mtl.models.losses import MultiTaskLoss
from mtl.models.model import build_model
from mtl.models.model_config import ModelConfig, load_model_config
from mtl.schema import model_fields, unobserved_labels
from mtl.seeds import seed_everything
from mtl.tables import TRAINING_EXAMPLES, warehouse_root
from mtl.train.bucket_usage import training_bucket_usage
from mtl.train.distributed import HOROVOD_ENV, allgather_object, broadcast_object, distribute, init_world
from mtl.train.trainer import CHECKPOINT_NAME, Trainer, build_optimizers

log = logging.getLogger(__name__)

MODES = ("full", "incremental")
# Distinct epoch numbers for the extra passes a rank makes when its shard runs out early.
_PASS_STRIDE = 1_000_003


@dataclass(frozen=True)
class TrainPlan:
    """Everything a worker needs, computed once by the driver (or rank 0); picklable."""

    ds: str
    mode: str
    train_days: tuple[str, str]
    val_day: Optional[str]
    table_version: int
    train_files: list[str]
    train_rows: int
    val_files: list[str]
    model_config: dict[str, Any]
    feature_stats: dict[str, Any]
    init_weights: Optional[bytes]  # incremental: the published model's weights
    warm_start_version: Optional[str]
    checkpoint_dir: str
    scale_lr_with_workers: bool
    sparse_as_dense: bool
    reader_workers: int
    torch_threads: Optional[int]
    # file -> labels read as unknown there: outcomes not observable as of ds (see unknown_labels)
    unknown_labels: dict[str, list[str]] = field(default_factory=dict)
    # vocab -> the embedding rows the training rows reach (encode_bucket_usage); empty when
    # unknown (an incremental run whose parent predates the record)
    bucket_usage: dict[str, Any] = field(default_factory=dict)


def unknown_labels(ds: dt.date, *snapshots: Optional[Snapshot]) -> dict[str, list[str]]:
    """The labels a model trained for ``ds`` must not learn, per file of the snapshots read: the
    repurchase outcomes whose windows reach ds (mtl.schema.unobserved_labels)."""
    return {
        f: list(labels)
        for snapshot in snapshots
        if snapshot is not None
        for f, day in snapshot.file_days.items()
        if (labels := unobserved_labels(day, ds))
    }


@dataclass
class WorkerResult:
    rank: int
    size: int
    parameter_digest: str  # equal on every rank after a correct data-parallel run
    steps_per_epoch: int
    fit: dict[str, Any]
    final_metrics: dict[str, float]
    train_log: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    state: Optional[bytes] = None  # rank 0 only


@dataclass
class TrainResult:
    ds: dt.date
    mode: str
    model_version: str
    run_id: str
    workers: int
    table_version: int
    train_days: tuple[str, str]
    val_day: Optional[str]
    train_rows: int
    final_metrics: dict[str, float]
    resumed: bool
    artifact_dir: str


# ---------------------------------------------------------------------------------------------
# planning (driver / rank 0: the only place that needs Spark)


def plan_training(spark, cfg: Config, ds: dt.date, mode: str) -> TrainPlan:
    if mode not in MODES:
        raise InputError(f"--mode must be one of {MODES}, got {mode!r}")
    path = TRAINING_EXAMPLES.path(cfg.storage)
    day = dt.timedelta(days=1)
    if mode == "full":
        first, last, val_day = ds - cfg.training.window_days * day, ds - 2 * day, ds - day
        model_cfg = load_model_config(cfg.model_config)
        init_weights, warm_version, parent = None, None, None
        feature_stats = None  # read once the snapshot shows the days exist
    else:
        first = last = ds - day
        val_day = None
        champion = registry.champion_version(cfg)
        if champion is None:
            raise InputError(
                f"--mode incremental needs a published model ({cfg.tracking.registered_model!r} has no "
                f"{cfg.tracking.champion_alias!r} version): train with --mode full first"
            )
        artifact = registry.load_version(cfg, version=champion)
        model_cfg = parse_typed(ModelConfig, artifact.model_config)
        model_cfg = dataclasses.replace(
            model_cfg, trainer=dataclasses.replace(model_cfg.trainer, epochs=cfg.training.incremental_epochs)
        )
        # The published model's statistics, not the new day's: inputs keep their meaning.
        feature_stats = artifact.feature_stats
        buffer = io.BytesIO()
        torch.save(artifact.state_dict, buffer)
        init_weights, warm_version = buffer.getvalue(), champion
        parent = artifact
    train = snapshot_files(spark, path, first, last)
    val = snapshot_files(spark, path, val_day, val_day, version=train.version) if val_day else None
    if feature_stats is None:
        feature_stats = read_feature_stats(spark, cfg, last)
    bucket_usage = _bucket_usage(spark, train, model_cfg, parent)
    hidden = unknown_labels(ds, train, val)
    for task in model_cfg.tasks:
        if task.weight > 0 and all(task.label in hidden.get(f, ()) for f in train.files):
            log.warning(
                "%s: no day of %s..%s has its outcome observed as of %s, so the task learns nothing "
                "this run (a longer training.window_days reaches days whose windows have closed)",
                task.label,
                first,
                last,
                ds,
            )
    model_dict = dataclasses.asdict(model_cfg)
    # A checkpoint is reused by any run with the same inputs (resume); anything that changes what
    # is learned, such as the labels read as unknown, must change the key.
    key = hashlib.sha256(
        json.dumps(
            [ds.isoformat(), mode, train.version, model_dict, warm_version, hidden], sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:16]
    checkpoint_dir = f"{warehouse_root(cfg.storage)}/{cfg.training.checkpoint_dir}/train-{ds}-{mode}-{key}"
    return TrainPlan(
        ds=ds.isoformat(),
        mode=mode,
        train_days=(first.isoformat(), last.isoformat()),
        val_day=val_day.isoformat() if val_day else None,
        table_version=train.version,
        train_files=train.files,
        train_rows=train.rows,
        val_files=val.files if val else [],
        model_config=model_dict,
        feature_stats=feature_stats,
        init_weights=init_weights,
        warm_start_version=warm_version,
        checkpoint_dir=checkpoint_dir,
        scale_lr_with_workers=cfg.training.scale_lr_with_workers,
        sparse_as_dense=cfg.training.sparse_as_dense,
        reader_workers=cfg.training.reader_workers,
        torch_threads=cfg.training.torch_threads,
        unknown_labels=hidden,
        bucket_usage=bucket_usage,
    )


def _bucket_usage(
    spark, train: Snapshot, model_cfg: ModelConfig, parent: Optional[registry.Artifact]
) -> dict[str, Any]:
    """The embedding rows this run reaches, encoded; an incremental run adds its parent's (whose
    rows it starts from), or records none if the parent recorded none."""
    buckets = model_cfg.embedding.buckets
    parent_usage = artifact_bucket_usage(parent) if parent is not None else {}
    if parent_usage is None:
        log.info("version %s records no embedding rows used, so neither will this run", parent.version)
        return {}
    used = merge_bucket_usage(parent_usage, training_bucket_usage(spark, train.files, model_fields(), buckets))
    encoded = encode_bucket_usage(used, buckets)
    log.info(
        "embedding rows the training rows reach: %s",
        ", ".join(f"{v} {d['used']:,} of {d['buckets']:,}" for v, d in encoded.items()),
    )
    return encoded


# ---------------------------------------------------------------------------------------------
# the worker (every process: local, horovodrun rank, Spark executor task)


class _Recorder:
    """Keeps the chief's training metrics; the driver logs them to MLflow after the run, so
    workers (possibly on executors) need no tracking-store access."""

    def __init__(self, observer: Optional[Callable[[dict[str, float], int], None]] = None) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.observer = observer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))
        if self.observer is not None:  # e.g. mtl.tune: reports val/<metric> per epoch, may stop the run
            self.observer(dict(metrics), step)


def _shard_epoch(batches: ExampleBatches, epoch: int, steps: int) -> Iterator[dict]:
    """Exactly ``steps`` batches for ``epoch``: ranks must take the same number of steps (every
    step is a collective), and shards differ in size, so a short shard starts another pass."""
    passes = (batches.epoch(epoch + k * _PASS_STRIDE) for k in itertools.count())
    taken = 0
    for batch in itertools.chain.from_iterable(passes):
        yield batch
        taken += 1
        if taken == steps:
            return


def _scaled(model_cfg: ModelConfig, workers: int) -> ModelConfig:
    opt = model_cfg.optimizer
    return dataclasses.replace(
        model_cfg, optimizer=dataclasses.replace(opt, lr=opt.lr * workers, sparse_lr=opt.sparse_lr * workers)
    )


def parameter_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_worker(plan: TrainPlan, observer: Optional[Callable[[dict[str, float], int], None]] = None) -> WorkerResult:
    """Train on this process's shard; the same function for every launch mode. ``observer``
    (the chief only) sees every metrics row the trainer logs, as it is logged; an exception it
    raises ends the run (hyper-parameter search prunes a trial this way)."""
    world = init_world()
    threads = plan.torch_threads or (max(1, (os.cpu_count() or 1) // world.local_size) if world.distributed else None)
    if threads:
        torch.set_num_threads(threads)
    model_cfg = parse_typed(ModelConfig, plan.model_config)
    if plan.scale_lr_with_workers and world.size > 1:
        model_cfg = _scaled(model_cfg, world.size)
    seed_everything(model_cfg.trainer.seed)
    model = build_model(model_cfg, model_fields(), plan.feature_stats)
    if plan.init_weights is not None:
        model.load_state_dict(torch.load(io.BytesIO(plan.init_weights), weights_only=True), strict=True)
    loss_fn = MultiTaskLoss(model_cfg)
    optimizers = build_optimizers(model, loss_fn, model_cfg.optimizer)
    if world.distributed:
        optimizers = distribute(model, loss_fn, optimizers, plan.sparse_as_dense)

    batch_size = model_cfg.trainer.batch_size
    steps = max(1, math.ceil(plan.train_rows / (world.size * batch_size)))
    shard = dict(shard=world.rank, num_shards=world.size) if world.distributed else {}
    train = ExampleBatches(
        plan.train_files,
        batch_size,
        seed=model_cfg.trainer.seed,
        workers_count=plan.reader_workers,
        unknown_labels=plan.unknown_labels,
        **shard,
    )
    # Every rank validates on the whole validation day, so early-stopping decisions agree.
    val = (
        ExampleBatches(plan.val_files, batch_size, shuffle=False, unknown_labels=plan.unknown_labels)
        if plan.val_files
        else None
    )
    recorder = _Recorder(observer)
    Path(plan.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    checkpoint = Path(plan.checkpoint_dir) / CHECKPOINT_NAME
    trainer = Trainer(
        model,
        loss_fn,
        model_cfg,
        metrics_logger=recorder if world.is_chief else None,
        checkpoint_dir=plan.checkpoint_dir,
        optimizers=optimizers,
        is_chief=world.is_chief,
        progress=False,
    )
    resume = checkpoint if checkpoint.exists() else None
    if resume and world.is_chief:
        log.info("resuming from checkpoint %s", resume)
    log.info("rank %d/%d: %d steps per epoch of %d rows", world.rank, world.size, steps, batch_size)
    try:
        fit = trainer.fit(
            lambda e: _shard_epoch(train, e, steps), (lambda e: val.epoch(0)) if val else None, resume_from=resume
        )
        final = trainer.validate(lambda e: val.epoch(0)) if val else {}
    finally:
        train.close()
        if val:
            val.close()
    result = WorkerResult(
        rank=world.rank,
        size=world.size,
        parameter_digest=parameter_digest(model),
        steps_per_epoch=steps,
        fit=dataclasses.asdict(fit) | {"resumed": resume is not None},
        final_metrics=final,
        train_log=recorder.rows,
    )
    if world.is_chief:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        result.state = buffer.getvalue()
    return result


# ---------------------------------------------------------------------------------------------
# launching and registering (driver / rank 0)


def run_on_spark(spark, plan: TrainPlan, cfg: Config) -> list[WorkerResult]:
    import horovod.spark

    env = {
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(cfg.training.collective_timeout_s),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")])
        ),
    }
    log.info("horovod.spark.run: %d workers on this job's executors", cfg.training.num_proc)
    return horovod.spark.run(
        train_worker,
        args=(plan,),
        num_proc=cfg.training.num_proc,
        start_timeout=cfg.training.start_timeout_s,
        env={**os.environ, **env},
        verbose=0,
    )


def check_workers(results: list[WorkerResult]) -> WorkerResult:
    """Rank 0's result, after checking every rank ended with the same parameters."""
    by_rank = sorted(results, key=lambda r: r.rank)
    digests = {r.rank: r.parameter_digest for r in by_rank}
    if len(set(digests.values())) != 1:
        raise JobError(f"workers ended with different parameters (rank -> digest): {digests}")
    return by_rank[0]


def git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def register(cfg: Config, plan: TrainPlan, chief: WorkerResult) -> tuple[str, str, str]:
    """Save the artifact, log the run to MLflow, register a new version: (version, run id, folder)."""
    model_cfg = parse_typed(ModelConfig, plan.model_config)
    model = build_model(model_cfg, model_fields(), plan.feature_stats)
    model.load_state_dict(torch.load(io.BytesIO(chief.state), weights_only=True), strict=True)
    metadata = {
        "ds": plan.ds,
        "mode": plan.mode,
        "train_ds_from": plan.train_days[0],
        "train_ds_to": plan.train_days[1],
        "val_ds": plan.val_day,
        "tables_read": {TRAINING_EXAMPLES.name: plan.table_version},
        "train_rows": plan.train_rows,
        "workers": chief.size,
        "warm_start_version": plan.warm_start_version,
        "git_commit": git_commit(),
        "metrics": chief.final_metrics,
        "fit": chief.fit,
        # Labels whose outcome windows reach ds were read as unknown (evaluation relies on it).
        "unobserved_labels_masked": True,
        # mtl-export prunes the embedding rows no training row reached
        BUCKET_USAGE_KEY: plan.bucket_usage or None,
    }

    def log_run(run) -> None:
        run.log_params(
            {
                "mode": plan.mode,
                "ds": plan.ds,
                "workers": chief.size,
                "train_rows": plan.train_rows,
                "training_examples_version": plan.table_version,
                "model": plan.model_config,
            }
        )
        for step, metrics in chief.train_log:
            run.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()}, step)
        finite = {f"final_{k}": v for k, v in chief.final_metrics.items() if isinstance(v, float) and math.isfinite(v)}
        if finite:
            run.log_metrics(finite, chief.fit["global_step"])
        # trainer.head_selection per_task: each task's own best epoch and the epoch its head came from
        epochs = {f"best_epoch_{t}": float(e + 1) for t, e in chief.fit.get("task_best_epochs", {}).items()}
        epochs |= {f"head_epoch_{t}": float(e + 1) for t, e in chief.fit.get("heads_from", {}).items()}
        if epochs:
            run.log_metrics(epochs, chief.fit["global_step"])

    version, run_id, folder = register_model(
        cfg,
        model,
        model_cfg,
        plan.feature_stats,
        metadata,
        run_name=f"train {plan.ds} {plan.mode}",
        tags={"ds": plan.ds, "mode": plan.mode},
        log_run=log_run,
    )
    return version, run_id, str(folder)


def run_train(spark, cfg: Config, ds: dt.date, mode: str = "full") -> TrainResult:
    """Plan with Spark, train with the configured launcher, register the new version."""
    from mtl.run_record import RunRecorder

    with RunRecorder(spark, cfg, "train", ds) as run:
        plan = plan_training(spark, cfg, ds, mode)
        run.tables_read = {TRAINING_EXAMPLES.name: plan.table_version}
        run.input_rows = plan.train_rows
        log.info(
            "training %s on ds %s..%s (%d rows, table version %d), validating on %s",
            mode,
            *plan.train_days,
            plan.train_rows,
            plan.table_version,
            plan.val_day,
        )
        if cfg.training.launcher == "spark":
            results = run_on_spark(spark, plan, cfg)
        elif cfg.training.launcher == "local":
            results = [train_worker(plan)]
        else:
            raise InputError(
                "training.launcher=horovodrun: start this job with `horovodrun -np N python jobs/train.py`"
            )
        return _finish(cfg, plan, results, run)


def _finish(cfg: Config, plan: TrainPlan, results: list[WorkerResult], run) -> TrainResult:
    chief = check_workers(results)
    version, run_id, folder = register(cfg, plan, chief)
    # The checkpoints exist to resume a killed run; once the version is registered they are
    # only disk (and a --retrain of the same inputs must train, not replay the finished run).
    shutil.rmtree(plan.checkpoint_dir, ignore_errors=True)
    run.model_version = version
    run.details.update(
        mode=plan.mode,
        train_days=plan.train_days,
        val_day=plan.val_day,
        workers=chief.size,
        mlflow_run_id=run_id,
        metrics=chief.final_metrics,
        resumed=chief.fit["resumed"],
    )
    return TrainResult(
        ds=dt.date.fromisoformat(plan.ds),
        mode=plan.mode,
        model_version=version,
        run_id=run_id,
        workers=chief.size,
        table_version=plan.table_version,
        train_days=plan.train_days,
        val_day=plan.val_day,
        train_rows=plan.train_rows,
        final_metrics=chief.final_metrics,
        resumed=chief.fit["resumed"],
        artifact_dir=folder,
    )


def run_train_horovodrun(cfg: Config, ds: dt.date, mode: str) -> Optional[TrainResult]:
    """Inside ``horovodrun``: rank 0 plans with Spark and registers, every rank trains.

    Rank 0 plans before joining Horovod: the other ranks wait in Horovod's rendezvous (up to
    HOROVOD_GLOO_TIMEOUT_SECONDS) instead of in a collective whose background thread would
    compete with Spark for the cores."""
    from mtl.run_record import RunRecorder
    from mtl.spark import build_spark

    if os.environ.get(HOROVOD_ENV) != "0":
        world = init_world()
        outcome = broadcast_object(None, world, "mtl.train.plan")
        if isinstance(outcome, str):
            raise JobError(f"rank 0 failed to plan the run: {outcome}")
        allgather_object(train_worker(outcome), world, "mtl.train.result")
        return None
    spark = build_spark(cfg.spark)
    with RunRecorder(spark, cfg, "train", ds) as run:
        try:
            plan = plan_training(spark, cfg, ds, mode)
        except Exception as exc:
            broadcast_object(
                f"{type(exc).__name__}: {exc}", init_world(), "mtl.train.plan"
            )  # release the waiting ranks
            raise
        world = init_world()
        broadcast_object(plan, world, "mtl.train.plan")
        run.tables_read = {TRAINING_EXAMPLES.name: plan.table_version}
        run.input_rows = plan.train_rows
        results = allgather_object(train_worker(plan), world, "mtl.train.result")
        return _finish(cfg, plan, results, run)


def summarize(r: TrainResult) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(r.final_metrics.items()) if isinstance(v, float))
    return (
        f"trained {r.mode} model for ds {r.ds} on ds {r.train_days[0]}..{r.train_days[1]} "
        f"({r.train_rows:,} rows, training_examples version {r.table_version}, {r.workers} worker(s)"
        f"{', resumed from a checkpoint' if r.resumed else ''})\n"
        f"registered version {r.model_version} (MLflow run {r.run_id}); not published: the quality gate decides\n"
        f"validation on {r.val_day or '-'}: {metrics or 'none'}"
    )
