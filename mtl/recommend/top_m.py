"""Exact top-M retrieval by inner product over the whole catalogue, one block of items at a time.

Memory is bounded by the block, not the catalogue: a batch of B users holds one
[min(B, TILE_USERS), block] score tile and a buffer of 2M (score, item) slots per user, whatever
the number of items.

Keeping the best M with a ``topk`` per tile would cost about ten times the matmul that made the
tile. Instead the scan keeps only the scores at or above a per-user threshold (the hits), in
``mtl.recommend.topm_kernel``, compiled:

- The first threshold is a guess from a strided sample of the catalogue: a high order statistic
  of the sample, placed so that each user should have a few times M items above it.
- While scanning, each time a user's buffer fills it is cut back to the best M, and the user's
  threshold rises to their M-th best so far.
- A user who ends with fewer than M hits (the guess was too high: an unlucky sample) is scanned
  again without a guess: every score counts until the buffer first fills. The result is exact
  either way.

The matmul of each tile is torch's (BLAS); the tile is at most ``TILE_USERS`` users high, so the
kernel reads it back from cache soon after the matmul wrote it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from mtl.recommend import topm_kernel

# Users per matmul tile (with the default 4,096-item blocks, a 2 MB tile): the best of the
# shapes measured in BENCHMARKS.md; lower tiles lose more in the matmul than they gain in cache.
TILE_USERS = 128
# Standard deviations of margin in the sampled guess: a user falls back to a second scan with
# probability about 1e-4.
GUESS_MARGIN = 4.0


def retrieval_flops(users: int, items: int, dim: int) -> int:
    """Floating-point operations of the exact scan: one multiply and one add per (user, item, dim)."""
    return 2 * users * items * dim


@torch.no_grad()
def blocked_top_m(user_vecs: Tensor, item_vecs: Tensor, m: int, block_size: int) -> tuple[Tensor, Tensor]:
    """The ``m`` items of largest inner product for each user: (scores [B, m'], item rows [B, m'])
    with m' = min(m, items), in no particular order within a row (ranking re-sorts them anyway).
    Exact: the items and scores of ``torch.topk(user_vecs @ item_vecs.T, m')``, up to which of
    several items tied at the m'-th score is kept."""
    if m < 1 or block_size < 1:
        raise ValueError(f"m and block_size must be at least 1, got {m} and {block_size}")
    users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    m = min(m, n_items)
    if users == 0 or m == 0:
        return user_vecs.new_empty((users, m)), torch.empty((users, m), dtype=torch.long)
    if n_items <= block_size:
        return torch.topk(user_vecs @ item_vecs.T, m, dim=1, sorted=False)

    user_vecs, item_vecs = user_vecs.to(torch.float32).contiguous(), item_vecs.to(torch.float32)
    # One score tile for the whole call: a fresh [users, block] tensor per step would be paged in
    # anew each time, which costs more than the matmul that fills it.
    tile = torch.empty(min(users, TILE_USERS) * block_size)
    floor = _guess(user_vecs, item_vecs, m, block_size, tile)
    best, best_idx = _scan(user_vecs, item_vecs, m, block_size, floor, tile)
    short = np.flatnonzero(np.isneginf(best).any(axis=1))
    if short.size:
        no_floor = np.full(short.size, -np.inf, dtype=np.float32)
        best[short], best_idx[short] = _scan(user_vecs[short], item_vecs, m, block_size, no_floor, tile)
    return torch.from_numpy(best), torch.from_numpy(best_idx)


def _tiles(user_vecs: Tensor, items: Tensor, tile: Tensor) -> Iterator[tuple[int, np.ndarray]]:
    """(first user row, scores [rows, len(items)]) for at most TILE_USERS users at a time, each
    written into ``tile`` (a contiguous view, also for a ragged last block of items)."""
    users, width = user_vecs.shape[0], items.shape[0]
    for lo in range(0, users, TILE_USERS):
        hi = min(users, lo + TILE_USERS)
        scores = tile[: (hi - lo) * width].view(hi - lo, width)
        torch.matmul(user_vecs[lo:hi], items.T, out=scores)
        yield lo, scores.numpy()


def _guess(user_vecs: Tensor, item_vecs: Tensor, m: int, sample_size: int, tile: Tensor) -> np.ndarray:
    """float32 [B]: a score each user should have somewhat more than m items at or above.

    Of a strided sample of s items, the number among a user's true top m is about Poisson with
    mean lam = m * s / N; the guess is the sample's k-th best with k = lam + GUESS_MARGIN * sqrt(lam) + 1,
    which leaves about k * N / s hits per user."""
    users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    sample = item_vecs[:: -(-n_items // sample_size)].contiguous()  # at most sample_size items: one tile
    lam = m * sample.shape[0] / n_items
    k = min(sample.shape[0], math.ceil(lam + GUESS_MARGIN * math.sqrt(lam) + 1))
    floor = np.empty(users, dtype=np.float32)
    for lo, scores in _tiles(user_vecs, sample, tile):
        floor[lo : lo + scores.shape[0]] = topm_kernel.kth_best(scores, k)
    return floor


def _scan(
    user_vecs: Tensor, item_vecs: Tensor, m: int, block_size: int, floor: np.ndarray, tile: Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """The best m items at or above ``floor`` [B] per user, -inf (item row 0) where there are
    fewer than m."""
    users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    threshold = floor.copy()
    capacity = 2 * m
    kept_scores = np.full((users, capacity), -np.inf, dtype=np.float32)
    kept_items = np.zeros((users, capacity), dtype=np.int64)
    kept = np.zeros(users, dtype=np.int64)
    for start in range(0, n_items, block_size):
        for lo, scores in _tiles(user_vecs, item_vecs[start : start + block_size], tile):
            hi = lo + scores.shape[0]
            topm_kernel.collect_hits(
                scores, start, threshold[lo:hi], kept_scores[lo:hi], kept_items[lo:hi], kept[lo:hi], m
            )
    topm_kernel.finish(kept_scores, kept_items, kept, m)
    return kept_scores[:, :m].copy(), kept_items[:, :m].copy()
