"""Single-process training loop: epochs over any iterable of batches, sparse + dense optimisers,
gradient clipping, periodic logging, validation with early stopping, and checkpoints from which
a run resumes exactly, mid-epoch included.

Exact resume rests on one rule: at the start of epoch e every RNG is seeded from (seed, e), so
the epoch's batch order is a function of (seed, e) alone. A resumed run re-seeds, skips the
batches the checkpoint had consumed, then restores the RNG states saved with the checkpoint.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from mtl import metric_functions as M
from mtl.models.embedding import Batch
from mtl.models.losses import MultiTaskLoss
from mtl.models.model import MultiTaskRecModel
from mtl.models.model_config import ModelConfig, OptimizerConfig, metric_is_higher_better
from mtl.schema import MISSING_LABEL
from mtl.seeds import epoch_seed, seed_everything
from mtl.train import head_selection
from mtl.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger(__name__)

# A re-iterable (DataLoader, list) or a function epoch -> iterable (e.g. a generator function).
BatchSource = Union[Iterable[Batch], Callable[[int], Iterable[Batch]]]
CHECKPOINT_NAME = "last.pt"


class MetricsLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


# ---------------------------------------------------------------------------------------------
# optimisers


@dataclass
class Optimizers:
    """SparseAdam over the embedding tables (touches only the rows a batch used) and Adam over
    everything dense, stepped together."""

    dense: torch.optim.Adam
    sparse: Optional[torch.optim.SparseAdam]
    # Horovod-wrapped optimisers reduce gradients asynchronously from backward hooks: the
    # reduction must finish (synchronize) before clipping, and step must not wait a second time.
    distributed: bool = False

    def _all(self) -> list[torch.optim.Optimizer]:
        return [self.dense] + ([self.sparse] if self.sparse is not None else [])

    def synchronize(self) -> None:
        if self.distributed:
            for opt in self._all():
                opt.synchronize()

    def zero_grad(self) -> None:
        self.dense.zero_grad()  # set_to_none is torch's default; Horovod's wrapper takes no arguments
        if self.sparse is not None:
            self.sparse.zero_grad()

    def step(self) -> None:
        for opt in self._all():
            if self.distributed:
                with opt.skip_synchronize():
                    opt.step()
            else:
                opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict() if self.sparse else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None:
            self.sparse.load_state_dict(state["sparse"])

    def scale_lr(self, scale: float) -> None:
        """Every group's learning rate = its configured one x ``scale`` (the schedule's factor)."""
        for opt in self._all():
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * scale


def schedule_scale(cfg: OptimizerConfig, epochs: int, epoch: int, global_step: int, plateau_scale: float) -> float:
    """The learning-rate factor for a step of ``epoch`` (0-based): warm-up x the schedule's."""
    scale = 1.0
    if cfg.schedule == "cosine":
        scale = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    elif cfg.schedule == "plateau":
        scale = plateau_scale
    if cfg.warmup_steps:
        scale *= min(1.0, (global_step + 1) / cfg.warmup_steps)
    return scale


def build_optimizers(model: MultiTaskRecModel, loss_fn: nn.Module, cfg: OptimizerConfig) -> Optimizers:
    sparse_params = model.sparse_parameters()
    dense = torch.optim.Adam(
        model.dense_parameters() + list(loss_fn.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    sparse = torch.optim.SparseAdam(sparse_params, lr=cfg.sparse_lr) if sparse_params else None
    return Optimizers(dense, sparse)


# ---------------------------------------------------------------------------------------------
# evaluation


@dataclass
class TaskPredictions:
    """One task's labelled rows: labels (0/1), predicted probabilities and, if asked, group ids."""

    labels: np.ndarray
    probs: np.ndarray
    groups: Optional[np.ndarray] = None


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on ``device`` (a no-op for tensors already there, e.g. on CPU)."""
    return {name: t.to(device, non_blocking=True) for name, t in batch.items()}


def evaluate(
    model: MultiTaskRecModel, batches: Iterable[Batch], group_field: Optional[str] = None
) -> dict[str, TaskPredictions]:
    """Run the model over ``batches``; per task, the rows whose label is present.

    ``group_field`` (e.g. "user_hash") also returns each row's group, for GAUC.
    """
    collected: dict[str, list[tuple[Tensor, Tensor, Optional[Tensor]]]] = {t: [] for t in model.tasks}
    device = next(model.parameters()).device
    for batch in batches:
        batch = to_device(batch, device)
        probs = {t: p.cpu() for t, p in model.predict_proba(batch).items()}
        batch = to_device(batch, torch.device("cpu"))
        for task in model.tasks:
            labels = batch[task]
            present = labels != MISSING_LABEL
            groups = batch[group_field][present] if group_field else None
            collected[task].append((labels[present], probs[task][present], groups))
    out = {}
    for task, parts in collected.items():
        labels = torch.cat([p[0] for p in parts]) if parts else torch.empty(0)
        probs = torch.cat([p[1] for p in parts]) if parts else torch.empty(0)
        groups = torch.cat([p[2] for p in parts]).numpy() if parts and group_field else None
        out[task] = TaskPredictions(labels.numpy().astype(np.int64), probs.double().numpy(), groups)
    return out


def validation_metrics(predictions: dict[str, TaskPredictions]) -> dict[str, float]:
    """<task>_auc and <task>_log_loss per task, and mean_auc over the tasks that have an AUC."""
    metrics: dict[str, float] = {}
    aucs = []
    for task, p in predictions.items():
        metrics[f"{task}_auc"] = M.auc(p.labels, p.probs)
        metrics[f"{task}_log_loss"] = M.log_loss(p.labels, p.probs)
        if not math.isnan(metrics[f"{task}_auc"]):
            aucs.append(metrics[f"{task}_auc"])
    metrics["mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return metrics


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class FitResult:
    epochs_run: int
    global_step: int
    best_metric: Optional[float]
    best_epoch: Optional[int]  # 0-based; None without validation
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)  # validation metrics per epoch
    # head_selection per_task: each task's best epoch by its own metric, and the epoch whose
    # head the returned model holds (its best epoch, or best_epoch where that validated worse)
    task_best_epochs: dict[str, int] = field(default_factory=dict)
    heads_from: dict[str, int] = field(default_factory=dict)


@dataclass
class _Progress:
    epoch: int = 0  # the epoch being trained (0-based)
    step_in_epoch: int = 0  # batches of that epoch already trained on
    global_step: int = 0
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    epochs_without_improvement: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    # head_selection per_task: per task, its best metric, that epoch, epochs since
    task_best: dict[str, float] = field(default_factory=dict)
    task_best_epoch: dict[str, int] = field(default_factory=dict)
    task_stale: dict[str, int] = field(default_factory=dict)
    # schedule plateau: the current factor, and epochs without improvement since it last changed
    plateau_scale: float = 1.0
    plateau_stale: int = 0


class Trainer:
    """Trains a model with its loss; the model must be built (and seeded) by the caller, see
    mtl.train.checkpoint.seed_everything."""

    def __init__(
        self,
        model: MultiTaskRecModel,
        loss_fn: MultiTaskLoss,
        cfg: ModelConfig,
        *,
        metrics_logger: Optional[MetricsLogger] = None,
        checkpoint_dir: Optional[str | Path] = None,
        progress: Optional[bool] = None,
        optimizers: Optional[Optimizers] = None,
        is_chief: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        # Model and loss move before the optimisers are built, so their state lives on the device.
        self.device = torch.device(device)
        model.to(self.device)
        loss_fn.to(self.device)
        self.model, self.loss_fn, self.cfg, self.optimizer_cfg = model, loss_fn, cfg.trainer, cfg.optimizer
        # Distributed training passes Horovod-wrapped optimisers (mtl.train.distributed).
        self.optimizers = optimizers or build_optimizers(model, loss_fn, cfg.optimizer)
        # Only the chief (Horovod rank 0) writes checkpoints; every rank can resume from them.
        self.is_chief = is_chief
        # SparseAdam normalises each row's step and torch has no norm for sparse gradients, so
        # clipping covers the dense parameters, where exploding updates come from.
        self._clipped = model.dense_parameters() + list(loss_fn.parameters())
        self.metrics_logger = metrics_logger
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
        self.show_progress = sys.stderr.isatty() if progress is None else progress
        self._best_state: Optional[dict[str, Tensor]] = None
        self._rng_at_checkpoint: Optional[dict[str, Any]] = None
        # head_selection per_task: task -> its own parameters, and their rows at its best epoch
        self.per_task = cfg.trainer.head_selection == "per_task"
        self._owned = {t: model.task_parameters(t) for t in model.tasks} if self.per_task else {}
        self._best_heads: dict[str, head_selection.Heads] = {}
        self._last_lr_scale = 1.0

    def fit(
        self, train: BatchSource, val: Optional[BatchSource] = None, *, resume_from: Optional[str | Path] = None
    ) -> FitResult:
        """Train for ``trainer.epochs`` epochs (fewer if early stopping triggers), then leave the
        best weights by the validation metric in the model."""
        progress = self._restore(resume_from) if resume_from else _Progress()
        # A checkpoint written by the epoch that ran out of patience resumes as stopped.
        stopped_early = self._out_of_patience(progress)
        while progress.epoch < self.cfg.epochs and not stopped_early:
            self._train_epoch(train, progress)
            progress.epoch += 1
            progress.step_in_epoch = 0
            if val is not None:
                stopped_early = self._validate_epoch(val, progress)
            self._save(progress)
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        heads_from = self._select_heads(val, progress) if self.per_task and val is not None else {}
        return FitResult(
            progress.epoch,
            progress.global_step,
            progress.best_metric,
            progress.best_epoch,
            stopped_early,
            progress.history,
            dict(progress.task_best_epoch),
            heads_from,
        )

    def validate(self, val: BatchSource, epoch: int = 0) -> dict[str, float]:
        return validation_metrics(evaluate(self.model, _batches(val, epoch)))

    # ---- one epoch

    def _train_epoch(self, train: BatchSource, progress: _Progress) -> None:
        seed_everything(epoch_seed(self.cfg.seed, progress.epoch))
        source = _batches(train, progress.epoch)
        batches: Iterator[Batch] = iter(source)
        if progress.step_in_epoch:
            consumed = sum(1 for _ in itertools.islice(batches, progress.step_in_epoch))
            if consumed < progress.step_in_epoch:
                raise RuntimeError(
                    f"resume: epoch {progress.epoch} has {consumed} batches, "
                    f"the checkpoint had consumed {progress.step_in_epoch}"
                )
            set_rng_state(self._rng_at_checkpoint)
        self.model.train()
        self.loss_fn.train()
        window: dict[str, Tensor] = {}
        window_steps, window_rows, window_start = 0, 0, time.perf_counter()
        bar = tqdm(
            batches,
            desc=f"epoch {progress.epoch + 1}/{self.cfg.epochs}",
            initial=progress.step_in_epoch,
            total=len(source) if isinstance(source, Sized) else None,
            disable=not self.show_progress,
            leave=False,
        )
        for batch in bar:
            self.optimizers.scale_lr(self._lr_scale(progress))
            parts = self._step(batch)
            progress.step_in_epoch += 1
            progress.global_step += 1
            for name, value in parts.items():
                window[name] = window.get(name, 0.0) + value
            window_steps += 1
            window_rows += next(iter(batch.values())).shape[0]
            if progress.global_step % self.cfg.log_every_steps == 0:
                seconds = time.perf_counter() - window_start
                metrics = self._log_train(window, window_steps, window_rows / seconds, progress.global_step)
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}")
                window, window_steps, window_rows, window_start = {}, 0, 0, time.perf_counter()
            if self.cfg.checkpoint_every_steps and progress.global_step % self.cfg.checkpoint_every_steps == 0:
                self._save(progress)
        bar.close()

    def _step(self, batch: Batch) -> dict[str, Tensor]:
        batch = to_device(batch, self.device)
        out = self.model(batch)
        loss = self.loss_fn(out, batch)
        self.optimizers.zero_grad()
        loss.total.backward()
        self.optimizers.synchronize()
        if self.cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._clipped, self.cfg.grad_clip_norm)
        self.optimizers.step()
        return {"loss": loss.total.detach(), **loss.parts}

    def _log_train(self, window: dict[str, Tensor], steps: int, rows_per_s: float, step: int) -> dict[str, float]:
        metrics = {f"train/{name}": float(total) / steps for name, total in window.items()}
        # Checked here, not every step, to avoid a device sync per step; it stops a diverged run.
        if not math.isfinite(metrics["train/loss"]):
            raise FloatingPointError(f"training loss is {metrics['train/loss']} at step {step}")
        if self.loss_fn.log_vars is not None:
            metrics.update({f"train/weight_{t}": w for t, w in self.loss_fn.task_weights().items()})
        metrics["train/examples_per_s"] = rows_per_s
        metrics["train/lr_scale"] = self._last_lr_scale
        self._log(metrics, step)
        return metrics

    def _lr_scale(self, progress: _Progress) -> float:
        self._last_lr_scale = schedule_scale(
            self.optimizer_cfg, self.cfg.epochs, progress.epoch, progress.global_step, progress.plateau_scale
        )
        return self._last_lr_scale

    # ---- validation and early stopping

    def _validate_epoch(self, val: BatchSource, progress: _Progress) -> bool:
        """Validate, keep the best weights; True when patience has run out."""
        metrics = self.validate(val, progress.epoch - 1)
        progress.history.append(metrics)
        self._log({f"val/{k}": v for k, v in metrics.items()} | {"epoch": float(progress.epoch)}, progress.global_step)
        name = self.cfg.early_stopping_metric
        value = metrics[name]
        better = metric_is_higher_better(name)
        improved = not math.isnan(value) and (
            progress.best_metric is None or (value > progress.best_metric if better else value < progress.best_metric)
        )
        if improved:
            progress.best_metric, progress.best_epoch = value, progress.epoch - 1
            progress.epochs_without_improvement = 0
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            progress.epochs_without_improvement += 1
        log.info("epoch %d: %s = %.5f (best %s)", progress.epoch, name, value, progress.best_metric)
        if self.optimizer_cfg.schedule == "plateau":
            progress.plateau_stale = 0 if improved else progress.plateau_stale + 1
            if progress.plateau_stale >= self.optimizer_cfg.plateau_patience:
                progress.plateau_scale *= self.optimizer_cfg.plateau_factor
                progress.plateau_stale = 0
                log.info("epoch %d: no gain in %s, learning rates x %.4g", progress.epoch, name, progress.plateau_scale)
        if self.per_task:
            self._track_tasks(metrics, progress)
        return self._out_of_patience(progress)

    def _task_metric(self, task: str) -> str:
        kind = "auc" if metric_is_higher_better(self.cfg.early_stopping_metric) else "log_loss"
        return f"{task}_{kind}"

    def _track_tasks(self, metrics: dict[str, float], progress: _Progress) -> None:
        """Per task: a better epoch by its own metric snapshots its own parameters."""
        higher = metric_is_higher_better(self.cfg.early_stopping_metric)
        for task, owned in self._owned.items():
            value = metrics.get(self._task_metric(task), float("nan"))
            if math.isnan(value):  # no labelled rows of the task on the validation day
                continue
            best = progress.task_best.get(task)
            if best is None or head_selection.is_worse(best, value, higher):
                progress.task_best[task], progress.task_best_epoch[task] = value, progress.epoch - 1
                progress.task_stale[task] = 0
                self._best_heads[task] = head_selection.snapshot(self.model, owned)
            else:
                progress.task_stale[task] = progress.task_stale.get(task, 0) + 1

    def _out_of_patience(self, progress: _Progress) -> bool:
        """Shared selection: the early-stopping metric has not improved for ``patience`` epochs;
        per task: neither it nor any task's own metric has."""
        stale = [progress.epochs_without_improvement] + (list(progress.task_stale.values()) if self.per_task else [])
        return min(stale) >= self.cfg.patience

    def _worse_than(self, metrics: dict[str, float], reference: dict[str, float], task: str, higher: bool) -> bool:
        name = self._task_metric(task)
        return head_selection.is_worse(metrics[name], reference[name], higher)

    def _select_heads(self, val: BatchSource, progress: _Progress) -> dict[str, int]:
        """Give each task the head of its own best epoch over the shared weights now in the model,
        keeping it only where that task validates at least as well as with the shared epoch's head
        (the loop re-checks, since ESMM's CTCVR output reads the CTR head too)."""
        if self._best_state is None or progress.best_epoch is None:
            return {}
        shared_epoch = progress.best_epoch
        reference = progress.history[shared_epoch]
        higher = metric_is_higher_better(self.cfg.early_stopping_metric)
        moved = {t for t, e in progress.task_best_epoch.items() if e != shared_epoch and t in self._best_heads}
        while moved:
            for task in moved:
                head_selection.restore(self.model, self._owned[task], self._best_heads[task])
            metrics = self.validate(val, progress.epoch)
            worse = {t for t in moved if self._worse_than(metrics, reference, t, higher)}
            if not worse:
                break
            for task in worse:
                name = self._task_metric(task)
                log.info(
                    "head selection: %s keeps the epoch-%d head: its own best (epoch %d) gives %s %.5f over the "
                    "shared weights, against %.5f",
                    task,
                    shared_epoch + 1,
                    progress.task_best_epoch[task] + 1,
                    name,
                    metrics[name],
                    reference[name],
                )
                shared_head = head_selection.from_state(self._best_state, self._owned[task])
                head_selection.restore(self.model, self._owned[task], shared_head)
            moved -= worse
        heads_from = {t: progress.task_best_epoch[t] if t in moved else shared_epoch for t in self.model.tasks}
        log.info(
            "head selection: shared weights from epoch %d; heads from epochs %s",
            shared_epoch + 1,
            ", ".join(f"{t} {e + 1}" for t, e in heads_from.items()),
        )
        return heads_from

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self.metrics_logger is not None:
            self.metrics_logger.log_metrics(metrics, step)

    # ---- checkpoints

    def _save(self, progress: _Progress) -> None:
        if self.checkpoint_path is None or not self.is_chief:
            return
        save_checkpoint(
            self.checkpoint_path,
            {
                "model": self.model.state_dict(),
                "loss": self.loss_fn.state_dict(),
                "optimizers": self.optimizers.state_dict(),
                "progress": vars(progress),
                "best_model": self._best_state,
                "best_heads": self._best_heads,
                "rng": rng_state(),
            },
        )

    def _restore(self, path: str | Path) -> _Progress:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizers.load_state_dict(state["optimizers"])
        self._best_state = state["best_model"]
        self._best_heads = state.get("best_heads") or {}
        # Only needed mid-epoch: an epoch that starts afresh re-seeds.
        self._rng_at_checkpoint = state["rng"]
        progress = _Progress(**state["progress"])
        log.info("resumed from %s at epoch %d, step %d", path, progress.epoch, progress.step_in_epoch)
        return progress


def _batches(source: BatchSource, epoch: int) -> Iterable[Batch]:
    return source(epoch) if callable(source) else source
