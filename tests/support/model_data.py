"""A small synthetic world with a known signal, in the batch contract the model reads.

Users and items have latent vectors; a user clicks an exposed item with
p = sigmoid(taste * u.v + activity effect + bias), buys a clicked item with a probability that
also falls with its price, and repurchases (on the rows where that label applies) when the pair
feature "purchase cycle ratio" is near 1. The true probabilities give the oracle AUC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from mtl.models.model_config import ModelConfig, load_model_config
from mtl.schema import MISSING_LABEL, Field

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONF = ROOT / "conf" / "models"
HISTORY = 5

FIELDS: tuple[Field, ...] = (
    Field("user_hash", "categorical", "user", "user"),
    Field("hist_item_hashes", "sequence", "user", "item", HISTORY),
    Field("item_hash", "categorical", "item", "item"),
    Field("category_hash", "categorical", "item", "category"),
    Field("row_kind_code", "categorical", "pair", "row_kind"),
    Field("u_activity", "dense", "user"),
    Field("i_price", "dense", "item"),
    Field("uc_cycle_ratio", "dense", "pair"),
)
TASKS = ("click", "purchase", "repurchase_7d")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The test models are tiny: a second OpenMP thread buys nothing and, on a shared 2-core
    machine, makes every op wait for a free core (30x slower steps were measured under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model_config(name: str = "mmoe", *overrides: str) -> ModelConfig:
    """conf/models/<name>.yaml sized for the test world."""
    return load_model_config(
        MODEL_CONF / f"{name}.yaml",
        [
            "embedding.dim=8",
            "embedding.buckets={user: 2003, item: 1009, category: 53, row_kind: 8}",
            "architecture.expert_units=[32]",
            "architecture.bottom_units=[32]",
            "architecture.tower_units=[16]",
            "architecture.dropout=0.0",
            "tasks=[{label: click}, {label: purchase}, {label: repurchase_7d}]",
            "retrieval.dim=16",
            "retrieval.tower_units=[32]",
            "retrieval.temperature=0.1",
            "retrieval.frequency_buckets=4096",
            "optimizer.lr=0.003",
            "optimizer.sparse_lr=0.03",
            "trainer.checkpoint_every_steps=0",
            "trainer.log_every_steps=20",
            *overrides,
        ],
    )


def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Distinct non-zero int64 hashes spread over the whole range, negative ones included."""
    hashes = np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=2 * n, dtype=np.int64))
    hashes = hashes[hashes != 0]
    return rng.permutation(hashes)[:n]


@dataclass
class World:
    user_vec: np.ndarray
    item_vec: np.ndarray
    item_pop: np.ndarray  # exposure probability of each item
    item_cat: np.ndarray
    item_price: np.ndarray
    user_activity: np.ndarray
    user_history: np.ndarray  # [U, HISTORY] item indices
    user_hash: np.ndarray
    item_hash: np.ndarray
    cat_hash: np.ndarray
    taste: float = 4.0

    @classmethod
    def create(cls, seed: int = 0, users: int = 400, items: int = 200, categories: int = 12, dim: int = 4) -> World:
        rng = np.random.default_rng(seed)
        user_vec = rng.normal(size=(users, dim)) / np.sqrt(dim)
        item_vec = rng.normal(size=(items, dim)) / np.sqrt(dim)
        pop = 1.0 / (np.arange(items) + 10.0) ** 0.5
        pop = rng.permutation(pop / pop.sum())
        # A user's history leans towards the items they like: a weak, realistic side signal.
        affinity = np.exp(2.0 * user_vec @ item_vec.T) * pop
        history = np.stack([rng.choice(items, HISTORY, replace=False, p=a / a.sum()) for a in affinity])
        return cls(
            user_vec,
            item_vec,
            pop,
            rng.integers(0, categories, items),
            rng.lognormal(3.0, 1.0, items),
            rng.gamma(2.0, 5.0, users),
            history,
            random_hashes(rng, users),
            random_hashes(rng, items),
            random_hashes(rng, categories),
        )

    @property
    def items(self) -> int:
        return len(self.item_vec)

    def sample(
        self, rows: int, seed: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """``rows`` exposures: the batch, the true probability per task, user and item indices."""
        rng = np.random.default_rng(seed)
        u = rng.integers(0, len(self.user_vec), rows)
        i = rng.choice(self.items, rows, p=self.item_pop)
        affinity = (self.user_vec[u] * self.item_vec[i]).sum(1)
        activity = np.log1p(self.user_activity[u])
        p_click = _sigmoid(self.taste * affinity + 0.8 * (activity - 2.2) - 1.0)
        log_price = np.log1p(self.item_price[i])
        p_buy_if_click = _sigmoid(2.0 * affinity - 1.2 * (log_price - 3.0) - 0.5)
        ratio = rng.gamma(2.0, 0.6, rows)
        p_repurchase = _sigmoid(2.0 - 4.0 * np.abs(ratio - 1.0))
        click = rng.random(rows) < p_click
        purchase = click & (rng.random(rows) < p_buy_if_click)
        # The repurchase label applies to a third of the rows only; the others carry -1.
        has_repurchase = rng.random(rows) < 0.35
        repurchase = np.where(has_repurchase, rng.random(rows) < p_repurchase, MISSING_LABEL)
        batch = {
            "user_hash": torch.from_numpy(self.user_hash[u]),
            "hist_item_hashes": torch.from_numpy(self.item_hash[self.user_history[u]]),
            "item_hash": torch.from_numpy(self.item_hash[i]),
            "category_hash": torch.from_numpy(self.cat_hash[self.item_cat[i]]),
            "row_kind_code": torch.from_numpy(np.where(has_repurchase, 2, 1).astype(np.int64)),
            "dense": torch.from_numpy(
                np.stack([self.user_activity[u], self.item_price[i], ratio], 1).astype(np.float32)
            ),
            "click": torch.from_numpy(click.astype(np.float32)),
            "purchase": torch.from_numpy(purchase.astype(np.float32)),
            "repurchase_7d": torch.from_numpy(repurchase.astype(np.float32)),
        }
        truth = {"click": p_click, "purchase": p_click * p_buy_if_click, "repurchase_7d": p_repurchase}
        return batch, truth, u, i

    def catalogue(self) -> dict[str, torch.Tensor]:
        """Every item, item-side fields only (dense keeps every column; the others are 0)."""
        dense = np.zeros((self.items, 3), dtype=np.float32)
        dense[:, 1] = self.item_price
        return {
            "item_hash": torch.from_numpy(self.item_hash),
            "category_hash": torch.from_numpy(self.cat_hash[self.item_cat]),
            "dense": torch.from_numpy(dense),
        }

    def users(self, user_index: np.ndarray) -> dict[str, torch.Tensor]:
        """User-side fields only, for user_vectors."""
        dense = np.zeros((len(user_index), 3), dtype=np.float32)
        dense[:, 0] = self.user_activity[user_index]
        return {
            "user_hash": torch.from_numpy(self.user_hash[user_index]),
            "hist_item_hashes": torch.from_numpy(self.item_hash[self.user_history[user_index]]),
            "dense": torch.from_numpy(dense),
        }


def iterate(data: dict[str, torch.Tensor], batch_size: int, shuffle: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``data``; the order comes from torch's global RNG (the trainer seeds it per epoch)."""
    n = next(iter(data.values())).shape[0]
    order = torch.randperm(n) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        yield {k: v[index] for k, v in data.items()}


class RowDataset(torch.utils.data.Dataset):
    """The rows of a batch dict as a map-style dataset, for a plain torch DataLoader."""

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return next(iter(self.data.values())).shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.data.items()}


class RecordingLogger:
    """A metrics logger that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.records.append((step, dict(metrics)))

    def keys(self, prefix: Optional[str] = None) -> set[str]:
        return {k for _, m in self.records for k in m if prefix is None or k.startswith(prefix)}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
