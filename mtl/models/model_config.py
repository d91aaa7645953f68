"""The model's own YAML (``conf/models/<name>.yaml``): embeddings, architecture, tasks, retrieval
head, optimisers and trainer, as typed frozen dataclasses.

Loading reuses :func:`mtl.config.load_typed` (``extends``, ``--set`` overrides, key and type
checks); :func:`check_model_config` adds the checks that span keys. Tasks are a list, not a
mapping, so a child YAML that lists fewer tasks replaces its parent's list instead of being
deep-merged into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from mtl.config import ConfigError, load_typed
from mtl.schema import LABELS, ROW_KINDS

Backbone = Literal["shared_bottom", "mmoe", "ple"]


@dataclass(frozen=True)
class EmbeddingConfig:
    dim: int = 16
    # Hash buckets per vocab (Field.vocab); bucket 0 is the padding / missing-id row.
    buckets: dict[str, int] = field(default_factory=dict)
    # How a sequence field (e.g. the item history) becomes one vector: masked mean or attention
    # with a learned query (both independent of the candidate item, as the user tower needs).
    sequence_pooling: Literal["mean", "attention"] = "mean"
    # Sparse gradients updated by SparseAdam; false gives dense gradients and Adam for the tables
    # too (several times slower on CPU, for comparison or for backends without sparse support).
    sparse: bool = True


@dataclass(frozen=True)
class ArchitectureConfig:
    """FuxiCTR-style flat knobs; each architecture reads only its own."""

    name: Literal["shared_bottom", "mmoe", "ple", "esmm"] = "mmoe"
    dropout: float = 0.1
    tower_units: list[int] = field(default_factory=lambda: [32])
    # shared_bottom: the one MLP every task reads
    bottom_units: list[int] = field(default_factory=lambda: [128, 64])
    # mmoe and ple: each expert is an MLP of these units
    expert_units: list[int] = field(default_factory=lambda: [64])
    # mmoe
    experts: int = 4
    # ple (progressive layered extraction): CGC levels, shared and per-task experts per level
    levels: int = 2
    shared_experts: int = 2
    specific_experts: int = 1
    # esmm: the backbone under the towers, the CTR task and the task trained as CTCVR
    # (its label is "purchased in the exposure", its prediction pCTR * pCVR)
    esmm_backbone: Backbone = "mmoe"
    esmm_ctr_task: str = "click"
    esmm_ctcvr_task: str = "purchase"
    # Row kinds (mtl.schema.ROW_KINDS) whose rows get towers of their own, one per task, over the
    # shared embeddings and experts: [candidate] gives the ranker of the candidate list a head
    # that learns only from candidate rows, apart from the exposure rows' click-through.
    kind_towers: list[str] = field(default_factory=list)
    # Explicit feature crosses in front of the backbone: none, or DCN-v2 cross layers over the
    # concatenated field embeddings and dense inputs (mtl.models.layers.CrossNetwork).
    interaction: Literal["none", "cross"] = "none"
    cross_layers: int = 2
    # Wide & Deep: each task tower adds a linear term over the normalised dense inputs to its logit.
    wide: bool = False

    @property
    def backbone(self) -> Backbone:
        return self.esmm_backbone if self.name == "esmm" else self.name


@dataclass(frozen=True)
class TaskConfig:
    label: str
    # lambda_t in L_rec + sum_t lambda_t L_t; unused with loss_weighting: uncertainty
    weight: float = 1.0


@dataclass(frozen=True)
class RetrievalConfig:
    """The two-tower head trained with in-batch sampled softmax on the positive rows."""

    enabled: bool = True
    dim: int = 32
    tower_units: list[int] = field(default_factory=lambda: [64])
    temperature: float = 0.05
    # subtract log q(item) from every in-batch logit (Yi et al. 2019)
    logq_correction: bool = True
    weight: float = 1.0
    # rows whose label is 1 are (user -> item) positives
    positive_label: str = "click"
    # the categorical item-side field whose hash identifies the item (in-batch duplicates, log q)
    item_id_field: str = "item_hash"
    # streaming frequency estimator: hash buckets and the step size of its moving average
    frequency_buckets: int = 1 << 20
    frequency_alpha: float = 0.01


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 1e-3  # Adam, every dense parameter
    sparse_lr: float = 1e-2  # SparseAdam, the embedding tables
    weight_decay: float = 0.0  # dense parameters only: SparseAdam has none
    # The learning rates' schedule, for both optimisers: constant; cosine decay over the epochs
    # down to min_lr_ratio; or plateau, which multiplies them by plateau_factor whenever the
    # early-stopping metric has not improved for plateau_patience epochs. Each starts with
    # warmup_steps of linear warm-up.
    schedule: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 1


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 10
    # rows per batch, for the data loader that feeds the trainer
    batch_size: int = 2048
    # max global norm of the dense gradients; null disables clipping
    grad_clip_norm: Optional[float] = 10.0
    # mean_auc, <task>_auc or <task>_log_loss, on the validation set after each epoch
    early_stopping_metric: str = "mean_auc"
    patience: int = 2
    # Which epoch's weights the model keeps. shared: every parameter from the epoch best by
    # early_stopping_metric. per_task: the shared parameters (embeddings, experts, retrieval
    # head) from that epoch, and each task's own parameters (its towers, its gate, its own PLE
    # experts) from the epoch best by that task's validation metric, where they validate at
    # least as well on top of the shared ones; training goes on until every task has run out of
    # patience. See mtl.train.head_selection.
    head_selection: Literal["shared", "per_task"] = "shared"
    seed: int = 42
    # 0: only at the end of each epoch
    checkpoint_every_steps: int = 1000
    log_every_steps: int = 100


@dataclass(frozen=True)
class ModelConfig:
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    tasks: list[TaskConfig] = field(default_factory=lambda: [TaskConfig(label) for label in LABELS])
    loss_weighting: Literal["static", "uncertainty"] = "static"
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.label for t in self.tasks)


def load_model_config(path: str | Path, overrides: Optional[list[str]] = None) -> ModelConfig:
    """Load a model YAML (following ``extends``), apply ``key.path=value`` overrides, check it."""
    cfg = load_typed(ModelConfig, path, overrides)
    check_model_config(cfg)
    return cfg


def check_model_config(cfg: ModelConfig) -> None:
    """The checks that span keys; raises ConfigError naming the key."""
    emb, arch, ret, opt, tr = cfg.embedding, cfg.architecture, cfg.retrieval, cfg.optimizer, cfg.trainer
    _at_least(emb.dim, 1, "embedding.dim")
    for vocab, n in emb.buckets.items():
        _at_least(n, 2, f"embedding.buckets.{vocab}")  # bucket 0 plus at least one real one

    if not 0.0 <= arch.dropout < 1.0:
        raise ConfigError("architecture.dropout: must be in [0, 1)")
    units = {"tower_units": arch.tower_units}
    if arch.backbone == "shared_bottom":
        units["bottom_units"] = arch.bottom_units
    else:
        units["expert_units"] = arch.expert_units
    for key, values in units.items():
        if not values or min(values) < 1:
            raise ConfigError(f"architecture.{key}: must list at least one layer size, each at least 1")
    if arch.backbone == "mmoe":
        _at_least(arch.experts, 1, "architecture.experts")
    if arch.backbone == "ple":
        for key in ("levels", "shared_experts", "specific_experts"):
            _at_least(getattr(arch, key), 1, f"architecture.{key}")

    _at_least(arch.cross_layers, 1, "architecture.cross_layers")
    unknown = sorted(set(arch.kind_towers) - set(ROW_KINDS))
    if unknown:
        raise ConfigError(f"architecture.kind_towers: {unknown} not row kinds; use any of {list(ROW_KINDS)}")
    if len(set(arch.kind_towers)) != len(arch.kind_towers):
        raise ConfigError("architecture.kind_towers: a row kind is listed more than once")

    names = cfg.task_names
    if not names:
        raise ConfigError("tasks: list at least one task")
    for i, task in enumerate(cfg.tasks):
        if task.label not in LABELS:
            raise ConfigError(f"tasks[{i}].label: {task.label!r} is not a label; use one of {list(LABELS)}")
        if task.weight < 0:
            raise ConfigError(f"tasks[{i}].weight: must not be negative")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"tasks: {duplicates} listed more than once")
    if arch.name == "esmm":
        for key in ("esmm_ctr_task", "esmm_ctcvr_task"):
            if getattr(arch, key) not in names:
                raise ConfigError(f"architecture.{key}: {getattr(arch, key)!r} is not one of the tasks {list(names)}")
        if arch.esmm_ctr_task == arch.esmm_ctcvr_task:
            raise ConfigError("architecture.esmm_ctcvr_task: must differ from esmm_ctr_task")

    if ret.enabled:
        _at_least(ret.dim, 1, "retrieval.dim")
        if not ret.tower_units or min(ret.tower_units) < 1:
            raise ConfigError("retrieval.tower_units: must list at least one layer size, each at least 1")
        if ret.temperature <= 0:
            raise ConfigError("retrieval.temperature: must be positive")
        if ret.weight < 0:
            raise ConfigError("retrieval.weight: must not be negative")
        if ret.positive_label not in LABELS:
            raise ConfigError(f"retrieval.positive_label: {ret.positive_label!r} is not one of {list(LABELS)}")
        _at_least(ret.frequency_buckets, 1, "retrieval.frequency_buckets")
        if not 0.0 < ret.frequency_alpha <= 1.0:
            raise ConfigError("retrieval.frequency_alpha: must be in (0, 1]")

    for key in ("lr", "sparse_lr"):
        if getattr(opt, key) <= 0:
            raise ConfigError(f"optimizer.{key}: must be positive")
    if opt.weight_decay < 0:
        raise ConfigError("optimizer.weight_decay: must not be negative")
    _at_least(opt.warmup_steps, 0, "optimizer.warmup_steps")
    _at_least(opt.plateau_patience, 1, "optimizer.plateau_patience")
    if not 0.0 <= opt.min_lr_ratio <= 1.0:
        raise ConfigError("optimizer.min_lr_ratio: must be in [0, 1]")
    if not 0.0 < opt.plateau_factor < 1.0:
        raise ConfigError("optimizer.plateau_factor: must be in (0, 1)")

    for key in ("epochs", "batch_size", "patience", "log_every_steps"):
        _at_least(getattr(tr, key), 1, f"trainer.{key}")
    _at_least(tr.checkpoint_every_steps, 0, "trainer.checkpoint_every_steps")
    if tr.grad_clip_norm is not None and tr.grad_clip_norm <= 0:
        raise ConfigError("trainer.grad_clip_norm: must be positive (or null to disable clipping)")
    metrics = validation_metric_names(names)
    if tr.early_stopping_metric not in metrics:
        raise ConfigError(f"trainer.early_stopping_metric: {tr.early_stopping_metric!r} is not one of {metrics}")


def validation_metric_names(tasks: tuple[str, ...]) -> list[str]:
    """The metrics the trainer computes on the validation set (and may stop early on)."""
    return ["mean_auc"] + [f"{t}_{m}" for t in tasks for m in ("auc", "log_loss")]


def metric_is_higher_better(name: str) -> bool:
    return name.endswith("auc")


def _at_least(value: int, minimum: int, key: str) -> None:
    if value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
