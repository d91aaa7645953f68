"""Exact top-M retrieval by inner product over the whole catalogue, one block of items at a time.

Memory is bounded by the block, not the catalogue: a batch of B users holds a [B, block] score
tile plus its running [B, M] best, whatever the number of items. A full ``topk`` per tile costs
about ten times the matmul that made it, so after the first M items only the scores above a
user's current M-th best (a threshold that only rises) are gathered and merged; with the items in
any fixed order, about M * ln(N / M) scores per user ever pass it, and the scan is left with the
matmul and one comparison per score.
"""

from __future__ import annotations

import torch
from torch import Tensor


def retrieval_flops(users: int, items: int, dim: int) -> int:
    """Floating-point operations of the exact scan: one multiply and one add per (user, item, dim)."""
    return 2 * users * items * dim


@torch.no_grad()
def blocked_top_m(user_vecs: Tensor, item_vecs: Tensor, m: int, block_size: int) -> tuple[Tensor, Tensor]:
    """The ``m`` items of largest inner product for each user: (scores [B, m'], item rows [B, m']),
    best first, with m' = min(m, items). Ties go to the lower item row. Exact: equal to
    ``torch.topk(user_vecs @ item_vecs.T, m')`` up to the order of tied scores."""
    if m < 1 or block_size < 1:
        raise ValueError(f"m and block_size must be at least 1, got {m} and {block_size}")
    users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    m = min(m, n_items)
    if users == 0 or m == 0:
        return user_vecs.new_empty((users, m)), torch.empty((users, m), dtype=torch.long)

    # Seed with the first max(m, block) items: a plain topk gives every user m candidates.
    first = min(n_items, max(m, block_size))
    best, best_idx = torch.topk(user_vecs @ item_vecs[:first].T, m, dim=1, sorted=False)
    threshold = best.min(dim=1, keepdim=True).values
    for start in range(first, n_items, block_size):
        tile = user_vecs @ item_vecs[start:start + block_size].T
        rows, cols = torch.nonzero(tile > threshold, as_tuple=True)
        if rows.numel():
            _merge(best, best_idx, rows, tile[rows, cols], cols + start)
            threshold = best.min(dim=1, keepdim=True).values
    # Best first; among equal scores the lower item row first (a stable sort by row, then by score).
    by_row = torch.argsort(best_idx, dim=1)
    best, best_idx = best.gather(1, by_row), best_idx.gather(1, by_row)
    order = torch.argsort(best, dim=1, descending=True, stable=True)
    return best.gather(1, order), best_idx.gather(1, order)


def _merge(best: Tensor, best_idx: Tensor, rows: Tensor, values: Tensor, items: Tensor) -> None:
    """Fold the scores that beat their user's threshold into ``best`` / ``best_idx`` in place.

    ``rows`` comes sorted (``nonzero`` is row-major): the hits of each user are laid out in a
    padded [users hit, most hits] tile and merged with those users' current best by one topk.
    """
    users, per_user = torch.unique_consecutive(rows, return_counts=True)
    first_hit = torch.cumsum(per_user, 0) - per_user
    slot = torch.arange(rows.numel()) - torch.repeat_interleave(first_hit, per_user)
    which = torch.repeat_interleave(torch.arange(users.numel()), per_user)
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
