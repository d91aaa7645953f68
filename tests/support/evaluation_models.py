"""Model versions for the evaluation tests, trained in-process: the model of ``cfg.model_config``
on the training_examples of a ds window (Petastorm batches, the production Trainer), saved and
registered with the metadata the train job writes. ``shuffle_labels`` gives a deliberately
broken model: every label permuted within each batch, so it learns only noise."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile

import torch

from mtl.config import Config
from mtl.data.loader import ExampleBatches
from mtl.data.snapshot import snapshot_files
from mtl.models import artifacts
from mtl.models.losses import MultiTaskLoss
from mtl.models.model import build_model
from mtl.models.model_config import load_model_config
from mtl.schema import LABELS, model_fields
from mtl.seeds import seed_everything
from mtl.tables import TRAINING_EXAMPLES
from mtl.train.trainer import Trainer


def register_model(
    spark,
    cfg: Config,
    ds: dt.date,
    train_from: dt.date,
    train_to: dt.date,
    *,
    shuffle_labels: bool = False,
    seed: int = 0,
) -> str:
    """Train on ds ``train_from..train_to`` (no validation: every epoch) for evaluation on ``ds``;
    returns the registered version."""
    snapshot = snapshot_files(spark, TRAINING_EXAMPLES.path(cfg.storage), train_from, train_to)
    model_cfg = load_model_config(cfg.model_config)
    feature_stats = artifacts.read_feature_stats(spark, cfg, train_to)
    seed_everything(model_cfg.trainer.seed)
    model = build_model(model_cfg, model_fields(), feature_stats)
    generator = torch.Generator().manual_seed(seed)

    def epoch(e: int):
        with ExampleBatches(snapshot.files, model_cfg.trainer.batch_size, seed=model_cfg.trainer.seed) as batches:
            for batch in batches.epoch(e):
                if shuffle_labels:
                    rows = batch["click"].shape[0]
                    batch = batch | {label: batch[label][torch.randperm(rows, generator=generator)] for label in LABELS}
                yield batch

    fit = Trainer(model, MultiTaskLoss(model_cfg), model_cfg, progress=False).fit(epoch)
    metadata = {
        "ds": ds.isoformat(),
        "mode": "full",
        "train_ds_from": train_from.isoformat(),
        "train_ds_to": train_to.isoformat(),
        "val_ds": None,
        "tables_read": {TRAINING_EXAMPLES.name: snapshot.version},
        "train_rows": snapshot.rows,
        "fit": dataclasses.asdict(fit),
        "labels": "shuffled within batches" if shuffle_labels else "as recorded",
    }
    with tempfile.TemporaryDirectory(prefix="mtl-test-model-") as folder:
        return artifacts.register_model(
            cfg, model, model_cfg, feature_stats, metadata, folder=folder, run_name=f"test model for {ds}"
        )[0]
