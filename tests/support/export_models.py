"""Trained small models of the synthetic world, and the gated metrics of any scoring runtime on
held-out rows: what the export tests and benchmarks/export.py compare variants with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mtl import metric_functions as M
from mtl.export.runtime import ScoringModel
from mtl.models import MultiTaskLoss, build_model
from mtl.models.embedding import dense_feature_stats
from mtl.models.model import MultiTaskRecModel
from mtl.seeds import seed_everything
from mtl.train.trainer import Trainer
from tests.support.model_data import FIELDS, TASKS, World, iterate, model_config

# The row kind code of a candidate row (conf/models/mmoe.yaml gives candidate rows their own towers).
CANDIDATE_CODE = 4


def trained_model(world: World, name: str = "mmoe", rows: int = 20_000, epochs: int = 2, *overrides: str):
    """A model of conf/models/<name>.yaml trained on ``rows`` rows of the world; (model, train rows,
    their item indices)."""
    train, _, _, train_items = world.sample(rows, seed=1)
    with_candidates(train, seed=1)
    cfg = model_config(name, f"trainer.epochs={epochs}", "optimizer.sparse_lr=0.1", *overrides)
    seed_everything(0)
    model = build_model(cfg, FIELDS, dense_feature_stats(train["dense"]))
    Trainer(model, MultiTaskLoss(cfg), cfg).fit(lambda epoch: iterate(train, 512))
    return model.eval(), train, train_items


def with_candidates(batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Turn a quarter of the rows into candidate rows, so the kind towers are taken too."""
    rng = np.random.default_rng(seed)
    rows = torch.from_numpy(rng.random(len(batch["row_kind_code"])) < 0.25)
    batch["row_kind_code"] = torch.where(rows, CANDIDATE_CODE, batch["row_kind_code"])
    return batch


@dataclass
class HeldOut:
    """Held-out rows of the world and the Recall@20 relevance of their clicks."""

    batch: dict[str, torch.Tensor]
    users: np.ndarray  # the distinct clicking users
    relevant: M.Relevance

    @classmethod
    def sample(cls, world: World, rows: int, seed: int = 3) -> HeldOut:
        batch, _, users, items = world.sample(rows, seed=seed)
        with_candidates(batch, seed)
        clicked = batch["click"].numpy() == 1
        test_users = np.unique(users[clicked])
        row_of_user = {u: r for r, u in enumerate(test_users)}
        relevant = M.Relevance(np.array([row_of_user[u] for u in users[clicked]]), items[clicked])
        return cls(batch, test_users, relevant)


def gated_metrics(model: ScoringModel, world: World, held_out: HeldOut) -> dict[str, float]:
    """AUC of every task on the held-out rows, and Recall@20 of the two towers over the whole
    catalogue for the items each held-out user clicked."""
    batch = held_out.batch
    with torch.inference_mode():
        probs = model.predict_proba(batch)
        scores = model.user_vectors(world.users(held_out.users)) @ model.item_vectors(world.catalogue()).T
    out = {}
    for task in TASKS:
        labels = batch[task].numpy()
        known = labels >= 0
        out[f"{task}_auc"] = M.auc(labels[known], probs[task].numpy()[known])
    out["recall_at_20"] = M.recall_at_k(scores.topk(20, dim=1).indices.numpy(), held_out.relevant, 20)
    return out


def unseen_ids(batch: dict[str, torch.Tensor], model: MultiTaskRecModel, seed: int) -> dict[str, torch.Tensor]:
    """``batch`` with every id replaced by a random hash no training row had (and some missing)."""
    rng = np.random.default_rng(seed)
    out = dict(batch)
    for f in model.features.id_fields:
        if f.vocab == "row_kind":
            continue
        shape = batch[f.name].shape
        hashes = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, shape, dtype=np.int64)
        hashes[rng.random(shape) < 0.1] = 0
        out[f.name] = torch.from_numpy(hashes)
    return out
