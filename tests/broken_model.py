"""A deliberately broken model version for the quality gate's tests: the train job's plan and
network, trained on labels shuffled within each batch (so every label is noise), then
registered with the metadata the train job writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile

import torch

from mtl import registry
from mtl.config import Config, parse_typed
from mtl.data.loader import ExampleBatches
from mtl.features.schema import LABELS, model_fields
from mtl.models.config import ModelConfig
from mtl.models.losses import MultiTaskLoss
from mtl.models.model import build_model
from mtl.tables import TRAINING_EXAMPLES
from mtl.train.artifacts import save_model
from mtl.train.checkpoint import seed_everything
from mtl.train.job import plan_training
from mtl.train.trainer import Trainer


def register_shuffled_label_model(spark, cfg: Config, ds: dt.date, seed: int = 0) -> str:
    """Train on ds's training window with every label column permuted within each batch; returns
    the registered version."""
    plan = plan_training(spark, cfg, ds, "full")
    model_cfg = parse_typed(ModelConfig, plan.model_config)
    seed_everything(model_cfg.trainer.seed)
    model = build_model(model_cfg, model_fields(), plan.feature_stats)
    generator = torch.Generator().manual_seed(seed)

    def shuffled(epoch: int):
        with ExampleBatches(plan.train_files, model_cfg.trainer.batch_size, seed=model_cfg.trainer.seed) as batches:
            for batch in batches.epoch(epoch):
                rows = batch["click"].shape[0]
                yield batch | {label: batch[label][torch.randperm(rows, generator=generator)] for label in LABELS}

    fit = Trainer(model, MultiTaskLoss(model_cfg), model_cfg, progress=False).fit(shuffled)
    metadata = {
        "ds": plan.ds, "mode": "full", "train_ds_from": plan.train_days[0], "train_ds_to": plan.train_days[1],
        "val_ds": plan.val_day, "tables_read": {TRAINING_EXAMPLES.name: plan.table_version},
        "train_rows": plan.train_rows, "fit": dataclasses.asdict(fit), "labels": "shuffled",
    }
    with tempfile.TemporaryDirectory(prefix="mtl-broken-") as folder:
        save_model(folder, model, model_cfg, plan.feature_stats, metadata)
        with registry.MlflowRun(cfg, run_name=f"shuffled labels {ds}") as run:
            return registry.register_artifact(cfg, run, folder)
