"""Seeds shared by the data reader and the trainer: one run's randomness from one number."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (model initialisation, dropout, data shuffling)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed for one epoch: the data order of epoch e depends on (seed, e) only, which
    is what lets a resumed run replay the batches it had already consumed."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] % 2**63)
