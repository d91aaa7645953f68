"""Single-task twins: the candidate's network, trained by the same training code on the same
rows, with one task each. They answer the question multi-task learning has to: does sharing
one network across tasks help each task, or would a network of its own do better?

A twin differs from the candidate in its tasks only: one ranking task without the retrieval
head, or the retrieval head alone (its ranking task kept at weight 0, since a model needs
one). ESMM's twins use its backbone, as ESMM needs both click and purchase.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import tempfile
from collections.abc import Sequence
from typing import Optional

import torch
from pyspark.sql import SparkSession

from mtl.config import Config, parse_typed
from mtl.data.snapshot import snapshot_files
from mtl.evaluate.training_window import RETRIEVAL_TWIN, TrainingWindow
from mtl.models.model_config import ModelConfig, TaskConfig, check_model_config
from mtl.registry import Artifact
from mtl.tables import TRAINING_EXAMPLES
from mtl.train.job import TrainPlan, train_worker, unknown_labels

log = logging.getLogger(__name__)


def twin_configs(
    model_cfg: ModelConfig, labels: Sequence[str], epochs: Optional[int], retrieval_epochs: Optional[int]
) -> dict[str, ModelConfig]:
    """label -> its ranking twin, for each of ``labels`` the candidate learns, and RETRIEVAL_TWIN ->
    the retrieval-only twin when the candidate has the retrieval head."""
    arch = model_cfg.architecture
    base = dataclasses.replace(
        model_cfg,
        architecture=dataclasses.replace(arch, name=arch.backbone),
        trainer=dataclasses.replace(model_cfg.trainer, epochs=epochs or model_cfg.trainer.epochs),
    )
    weights = {t.label: t.weight for t in model_cfg.tasks}
    twins = {}
    for label in labels:
        if label not in weights:
            continue
        twins[label] = dataclasses.replace(
            base,
            tasks=[TaskConfig(label, weights[label])],
            retrieval=dataclasses.replace(base.retrieval, enabled=False),
            trainer=dataclasses.replace(
                base.trainer, early_stopping_metric=_single_task_metric(model_cfg.trainer.early_stopping_metric, label)
            ),
        )
    if model_cfg.retrieval.enabled:
        twins[RETRIEVAL_TWIN] = dataclasses.replace(
            base,
            tasks=[TaskConfig(model_cfg.retrieval.positive_label, 0.0)],
            # Learned task weights would train the weight-0 task after all.
            loss_weighting="static",
            trainer=dataclasses.replace(
                base.trainer, epochs=retrieval_epochs or base.trainer.epochs, early_stopping_metric="mean_auc"
            ),
        )
    for cfg in twins.values():
        check_model_config(cfg)
    return twins


def _single_task_metric(metric: str, label: str) -> str:
    """The candidate's early-stopping metric, restated for a twin of ``label``: mean_auc stays,
    <task>_auc / <task>_log_loss become the twin's own."""
    for suffix in ("_auc", "_log_loss"):
        if metric != "mean_auc" and metric.endswith(suffix):
            return f"{label}{suffix}"
    return metric


def train_twins(
    spark: SparkSession, cfg: Config, candidate: Artifact, window: TrainingWindow, labels: Sequence[str]
) -> dict[str, Artifact]:
    """Train the twins of ``labels`` (and the retrieval twin) on the candidate's training window,
    at the training_examples version it read; ranking twins stop early on its validation day
    as the candidate did. The retrieval twin has no validation metric of its own, so it trains
    as many epochs as the candidate kept (its best epoch), unless evaluation.twin_epochs says."""
    model_cfg = parse_typed(ModelConfig, candidate.model_config)
    kept_epochs = window.best_epoch + 1 if window.best_epoch is not None else None
    epochs = cfg.evaluation.twin_epochs
    configs = twin_configs(model_cfg, labels, epochs, epochs or kept_epochs)
    path = TRAINING_EXAMPLES.path(cfg.storage)
    train = snapshot_files(spark, path, window.train_from, window.train_to, version=window.table_version)
    val = snapshot_files(spark, path, window.val_ds, window.val_ds, version=train.version) if window.val_ds else None
    twins = {}
    for name, twin_cfg in configs.items():
        log.info(
            "training the single-task twin %r of version %s on ds %s..%s",
            name,
            candidate.version,
            window.train_from,
            window.train_to,
        )
        with tempfile.TemporaryDirectory(prefix="mtl-twin-") as checkpoints:
            plan = TrainPlan(
                ds=window.ds.isoformat(),
                mode="full",
                train_days=(window.train_from.isoformat(), window.train_to.isoformat()),
                val_day=window.val_ds.isoformat() if val and name != RETRIEVAL_TWIN else None,
                table_version=train.version,
                train_files=train.files,
                train_rows=train.rows,
                val_files=val.files if val and name != RETRIEVAL_TWIN else [],
                model_config=dataclasses.asdict(twin_cfg),
                feature_stats=candidate.feature_stats,
                init_weights=None,
                warm_start_version=None,
                checkpoint_dir=checkpoints,
                scale_lr_with_workers=False,
                sparse_as_dense=False,
                reader_workers=cfg.training.reader_workers,
                torch_threads=cfg.training.torch_threads,
                unknown_labels=unknown_labels(window.ds, train, val if name != RETRIEVAL_TWIN else None),
            )
            result = train_worker(plan)
        twins[name] = Artifact(
            state_dict=torch.load(io.BytesIO(result.state), weights_only=True),
            model_config=dataclasses.asdict(twin_cfg),
            feature_stats=candidate.feature_stats,
            metadata={"twin_of": candidate.version, "task": name, "fit": result.fit},
        )
    return twins
