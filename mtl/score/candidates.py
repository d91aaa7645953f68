"""Exact top-M retrieval by inner product over the whole catalogue, one block of items at a time.

Memory is bounded by the block, not the catalogue: a batch of B users holds one [B, block] score
tile, its running [B, M] best and the hits waiting to be merged, whatever the number of items.

Keeping the best M with a ``topk`` per tile would cost about ten times the matmul that made the
tile. Instead the scan keeps only the scores at or above a per-user threshold (the hits):

- The first threshold is a guess from a strided sample of the catalogue: a high order statistic
  of the sample, placed so that each user should have a few times M items above it.
- While scanning, each merge of the hits into the running best raises a user's threshold to
  their M-th best so far.
- A user who ends with fewer than M hits (the guess was too high: an unlucky sample) is scanned
  again without a guess: the first block's scores all count as hits and the first merge sets
  the threshold. The result is exact either way.

Hits are found with a maximum per chunk of CHUNK scores (one cheap read of the tile); only the
chunks whose maximum reaches the threshold are looked into.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Scores per chunk whose maximum is compared with the threshold first.
CHUNK = 16
# Above this share of chunks holding a hit, the whole tile is compared instead.
DENSE_HITS = 0.1
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

    best, best_idx = _scan(user_vecs, item_vecs, m, block_size, _guess(user_vecs, item_vecs, m, block_size))
    short = torch.nonzero(torch.isneginf(best).any(dim=1)).flatten()
    if short.numel():
        no_floor = user_vecs.new_full((short.numel(), 1), float("-inf"))
        best[short], best_idx[short] = _scan(user_vecs[short], item_vecs, m, block_size, no_floor)
    return best, best_idx


def _guess(user_vecs: Tensor, item_vecs: Tensor, m: int, sample_size: int) -> Tensor:
    """[B, 1]: a score each user should have somewhat more than m items at or above.

    Of a strided sample of s items, the number among a user's true top m is about Poisson with
    mean lam = m * s / N; the guess is the sample's k-th best with k = lam + GUESS_MARGIN * sqrt(lam) + 1,
    which leaves about k * N / s hits per user to merge."""
    n_items = item_vecs.shape[0]
    sample = item_vecs[:: max(1, n_items // sample_size)]
    lam = m * sample.shape[0] / n_items
    k = min(sample.shape[0], math.ceil(lam + GUESS_MARGIN * math.sqrt(lam) + 1))
    return torch.topk(user_vecs @ sample.T, k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values


def _scan(user_vecs: Tensor, item_vecs: Tensor, m: int, block_size: int, floor: Tensor) -> tuple[Tensor, Tensor]:
    """The best m items at or above ``floor`` [B, 1] per user, -inf (item row 0) where there are
    fewer than m."""
    users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    best = user_vecs.new_full((users, m), float("-inf"))
    best_idx = torch.zeros((users, m), dtype=torch.long)
    threshold = floor
    pending = _Hits()
    tile = user_vecs.new_empty((users, block_size))
    for start in range(0, n_items, block_size):
        block = item_vecs[start:start + block_size]
        scores = torch.matmul(user_vecs, block.T, out=tile[:, : block.shape[0]])
        pending.add(*_hits(scores, threshold), start)
        # A merge costs a topk over the users hit: wait until the hits could fill the running
        # best once. Meanwhile the threshold is stale (too low), which lets a few more through.
        if pending.count >= users * m:
            threshold = torch.maximum(floor, _merge(best, best_idx, pending.take()))
    if pending.count:
        _merge(best, best_idx, pending.take())
    return best, best_idx


def _hits(scores: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(user rows, columns, scores) of the scores at or above their user's threshold, by user row.

    A chunk is every (width / CHUNK)-th column: its maximum is an elementwise max of CHUNK
    contiguous slices, which vectorises (a max over 16 adjacent scores does not). When most
    chunks hold a hit, one comparison of the whole tile is cheaper than looking into them."""
    users, width = scores.shape
    stride = width // CHUNK
    if stride and width % CHUNK == 0:
        chunks = scores.view(users, CHUNK, stride)
        hit_chunks = chunks.amax(dim=1) >= threshold
        rows, chunk = torch.nonzero(hit_chunks, as_tuple=True)
        if rows.numel() <= DENSE_HITS * hit_chunks.numel():
            values = chunks[rows, :, chunk]  # [chunks hit, CHUNK]
            hit, offset = torch.nonzero(values >= threshold[rows], as_tuple=True)
            return rows[hit], offset * stride + chunk[hit], values[hit, offset]
    rows, cols = torch.nonzero(scores >= threshold, as_tuple=True)
    return rows, cols, scores[rows, cols]


class _Hits:
    """Hits of several tiles waiting to be merged."""

    def __init__(self) -> None:
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []
        self.count = 0

    def add(self, rows: Tensor, cols: Tensor, values: Tensor, start: int) -> None:
        if rows.numel():
            self.parts.append((rows, values, cols + start))
            self.count += rows.numel()

    def take(self) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, values, item rows), sorted by row."""
        rows, values, items = (torch.cat(p) for p in zip(*self.parts))
        self.parts, self.count = [], 0
        order = torch.argsort(rows, stable=True)
        return rows[order], values[order], items[order]


def _merge(best: Tensor, best_idx: Tensor, hits: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Fold hits (sorted by user row) into ``best`` / ``best_idx`` in place; returns each user's
    m-th best [B, 1]. The hits of each user are laid out in a padded [users hit, most hits] tile
    and merged with those users' running best by one topk."""
    rows, values, items = hits
    users, which, per_user = torch.unique_consecutive(rows, return_inverse=True, return_counts=True)
    slot = torch.arange(rows.numel()) - torch.searchsorted(rows, rows)  # position among the user's hits
    width = int(per_user.max())
    new_values = values.new_full((users.numel(), width), float("-inf"))
    new_items = items.new_zeros((users.numel(), width))
    new_values[which, slot] = values
    new_items[which, slot] = items
    pool = torch.cat([best[users], new_values], dim=1)
    pool_items = torch.cat([best_idx[users], new_items], dim=1)
    kept, at = torch.topk(pool, best.shape[1], dim=1, sorted=False)
    best[users] = kept
    best_idx[users] = pool_items.gather(1, at)
    return best.min(dim=1, keepdim=True).values

