"""Offline evaluation metrics in plain numpy, vectorised for millions of rows (no loop per row or user).

Binary tasks (click, purchase, repurchase): ``auc``, ``gauc``, ``log_loss``, ``calibration``, and
``binary_metrics`` for all of them at once, dropping rows whose label is missing (-1 or NaN).

Next-item recommendation: ``recall_at_k``, ``ndcg_at_k`` (binary relevance), ``hit_rate_at_k``,
``mrr``, and ``ranking_metrics`` for all of them at once. Their inputs:

- ``ranked``: int array ``[U, K_max]``; row u holds the item ids shown to user u, best first. A
  negative id pads a shorter list. An item repeated in a row counts once, at its first position.
- ``relevant``: the relevant (held-out) items of the same U users, either a sequence of U
  collections (sets, lists or arrays of item ids) or a ``Relevance`` in long form, which needs no
  Python object per user.

Ranking metrics average over users with at least one relevant item; every metric returns nan
when nothing is left to average.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import numpy.typing as npt

MISSING_LABEL = -1


# ---------------------------------------------------------------------------------------------
# binary tasks


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve; tied scores count half, as in the Mann-Whitney U statistic."""
    y, s = _binary_inputs(labels, scores)
    per_group, _ = _auc_per_group(y, s, None)
    return float(per_group[0]) if per_group.size else float("nan")


def gauc(labels: npt.ArrayLike, scores: npt.ArrayLike, groups: npt.ArrayLike) -> float:
    """Group AUC: the AUC of each group (user), weighted by the group's number of rows.

    Groups with only one class have no AUC and are skipped.
    """
    y, s = _binary_inputs(labels, scores)
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups must have the labels' shape {y.shape}, got {g.shape}")
    _, codes = np.unique(g, return_inverse=True)
    per_group, rows = _auc_per_group(y, s, codes.reshape(-1))
    scored = ~np.isnan(per_group)
    if not scored.any():
        return float("nan")
    return float(np.average(per_group[scored], weights=rows[scored]))


def log_loss(labels: npt.ArrayLike, probs: npt.ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, with probabilities clipped to [eps, 1 - eps]."""
    y, p = _binary_inputs(labels, probs)
    if not y.size:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.log(np.where(y == 1, p, 1.0 - p))))


def calibration(labels: npt.ArrayLike, probs: npt.ArrayLike) -> float:
    """Mean prediction over mean label: 1 is calibrated, above 1 over-predicts. nan without positives."""
    y, p = _binary_inputs(labels, probs)
    positives = y.sum()
    if positives == 0:
        return float("nan")
    return float(p.sum() / positives)


def binary_metrics(
    labels: npt.ArrayLike, probs: npt.ArrayLike, groups: Optional[npt.ArrayLike] = None
) -> dict[str, float]:
    """Every binary-task metric at once, on the rows whose label is present (not -1 or NaN).

    Keys: rows, positive_rate, mean_prediction, auc, log_loss, calibration, and gauc when
    ``groups`` (e.g. user ids) is given.
    """
    raw = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if raw.shape != p.shape:
        raise ValueError(f"labels and probs must have the same shape, got {raw.shape} and {p.shape}")
    present = ~(np.isnan(raw) | (raw == MISSING_LABEL))
    y, p = raw[present], p[present]
    out = {
        "rows": int(y.size),
        "positive_rate": float(y.mean()) if y.size else float("nan"),
        "mean_prediction": float(p.mean()) if y.size else float("nan"),
        "auc": auc(y, p),
        "log_loss": log_loss(y, p),
        "calibration": calibration(y, p),
    }
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != raw.shape:
            raise ValueError(f"groups must have the labels' shape {raw.shape}, got {g.shape}")
        out["gauc"] = gauc(y, p, g[present])
    return out


def _binary_inputs(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"labels and scores must be 1-D and of the same length, got shapes {y.shape} and {s.shape}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be 0 or 1 (drop missing labels first, or use binary_metrics)")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y.astype(np.int64), s


def _auc_per_group(y: np.ndarray, s: np.ndarray, codes: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUC and row count of each group (codes 0..G-1; None is one group). nan for one-class groups.

    Sorting by (group, score) makes every run of equal (group, score) a tie block. A positive
    beats each negative of its group in a lower block and ties with the negatives of its own
    block, so a block adds positives * (negatives below + negatives in the block / 2).
    """
    n = y.size
    if n == 0:
        return np.empty(0), np.empty(0, dtype=np.int64)
    # Tie blocks are counted as a whole, so the order inside a block does not matter.
    if codes is None:
        codes = np.zeros(n, dtype=np.int64)
        order = np.argsort(s)
    else:
        order = np.lexsort((s, codes))
    y, s, g = y[order], s[order], codes[order]
    n_groups = int(g[-1]) + 1

    block_start = np.flatnonzero(np.r_[True, (s[1:] != s[:-1]) | (g[1:] != g[:-1])])
    block_pos = np.add.reduceat(y, block_start)
    block_neg = np.diff(np.r_[block_start, n]) - block_pos
    block_group = g[block_start]

    # negatives in earlier blocks overall, minus those in earlier groups
    neg_before = np.cumsum(block_neg) - block_neg
    group_first_block = np.flatnonzero(np.r_[True, block_group[1:] != block_group[:-1]])
    group_neg_before = np.repeat(neg_before[group_first_block], np.diff(np.r_[group_first_block, block_start.size]))
    wins = block_pos * ((neg_before - group_neg_before) + 0.5 * block_neg)

    rows = np.bincount(g, minlength=n_groups)
    pos = np.bincount(g, weights=y, minlength=n_groups)
    pairs = pos * (rows - pos)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_group = np.bincount(block_group, weights=wins, minlength=n_groups) / pairs
    per_group[pairs == 0] = np.nan
    return per_group, rows


# ---------------------------------------------------------------------------------------------
# ranking


@dataclass(frozen=True)
class Relevance:
    """Relevant items in long form: pair i says ``item[i]`` is relevant to row ``user[i]`` of ranked."""

    user: np.ndarray
    item: np.ndarray

    @classmethod
    def from_lists(cls, relevant: Sequence[Iterable[int]]) -> Relevance:
        """From one collection of item ids per user (the loop here is per user, over Python objects)."""
        per_user = [np.fromiter(items, dtype=np.int64) for items in relevant]
        lengths = np.fromiter(map(len, per_user), dtype=np.int64, count=len(per_user))
        items = np.concatenate(per_user) if per_user else np.empty(0, dtype=np.int64)
        return cls(np.repeat(np.arange(len(per_user)), lengths), items)


RelevantItems = Union[Relevance, Sequence[Iterable[int]]]


def recall_at_k(ranked: npt.ArrayLike, relevant: RelevantItems, k: int) -> float:
    """Share of a user's relevant items found in the top k."""
    return _recall(*_hits(ranked, relevant), _check_k(k))


def ndcg_at_k(ranked: npt.ArrayLike, relevant: RelevantItems, k: int) -> float:
    """Normalised DCG of the top k with binary gains; the ideal list holds min(#relevant, k) hits."""
    return _ndcg(*_hits(ranked, relevant), _check_k(k))


def hit_rate_at_k(ranked: npt.ArrayLike, relevant: RelevantItems, k: int) -> float:
    """Share of users with at least one relevant item in the top k."""
    return _hit_rate(*_hits(ranked, relevant), _check_k(k))


def mrr(ranked: npt.ArrayLike, relevant: RelevantItems, k: Optional[int] = None) -> float:
    """Mean reciprocal rank of the first relevant item (0 when none is in the top k or the list)."""
    hits, n_relevant = _hits(ranked, relevant)
    return _mrr(hits, n_relevant, hits.shape[1] if k is None else _check_k(k))


def ranking_metrics(ranked: npt.ArrayLike, relevant: RelevantItems, ks: Iterable[int] = (10,)) -> dict[str, float]:
    """recall_at_{k}, ndcg_at_{k}, hit_rate_at_{k} for each k, and mrr over the whole list.

    Matches the lists against the relevant items once; the keys are valid MLflow metric names.
    """
    hits, n_relevant = _hits(ranked, relevant)
    out = {"users": int((n_relevant > 0).sum())}
    for k in ks:
        k = _check_k(k)
        out[f"recall_at_{k}"] = _recall(hits, n_relevant, k)
        out[f"ndcg_at_{k}"] = _ndcg(hits, n_relevant, k)
        out[f"hit_rate_at_{k}"] = _hit_rate(hits, n_relevant, k)
    out["mrr"] = _mrr(hits, n_relevant, hits.shape[1])
    return out


def _check_k(k: int) -> int:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return int(k)


def _hits(ranked: npt.ArrayLike, relevant: RelevantItems) -> tuple[np.ndarray, np.ndarray]:
    """``hits[u, j]``: position j of user u's list is the first occurrence of a relevant item;
    ``n_relevant[u]``: the user's number of distinct relevant items."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must be a 2-D integer array [users, k], got {ranked.dtype} of shape {ranked.shape}")
    n_users, width = ranked.shape
    rel = relevant if isinstance(relevant, Relevance) else Relevance.from_lists(relevant)
    rel_user = np.asarray(rel.user, dtype=np.int64)
    rel_item = np.asarray(rel.item, dtype=np.int64)
    if rel_user.shape != rel_item.shape or rel_user.ndim != 1:
        raise ValueError("relevance user and item must be 1-D arrays of the same length")
    if isinstance(relevant, Relevance):
        if rel_user.size and (rel_user.min() < 0 or rel_user.max() >= n_users):
            raise ValueError(f"relevance user indices must be rows of ranked, 0..{n_users - 1}")
    elif len(relevant) != n_users:
        raise ValueError(f"relevant has {len(relevant)} users, ranked has {n_users}")
    if rel_item.size and rel_item.min() < 0:
        raise ValueError("relevant item ids must not be negative (negative ids pad ranked lists)")

    # Only list entries holding some user's relevant item can hit; an item's index among the
    # relevant items (its code) makes one int64 key, user * n_codes + code, per (user, item) pair.
    items = np.unique(rel_item)
    n_codes = max(items.size, 1)
    relevant_key = np.unique(rel_user * n_codes + np.searchsorted(items, rel_item))
    n_relevant = np.bincount(relevant_key // n_codes, minlength=n_users)

    flat = ranked.reshape(-1)
    code = _index_in(items, flat)
    candidate = np.flatnonzero(code >= 0)
    # Row-major candidates give keys sorted by user, which keeps this search cache-friendly.
    candidate_key = (candidate // width) * n_codes + code[candidate]
    relevant_here = _index_in(relevant_key, candidate_key) >= 0
    hit_at, hit_key = candidate[relevant_here], candidate_key[relevant_here]
    # hit_at is in row-major order, so the first index of each key is the item's first position
    _, first = np.unique(hit_key, return_index=True)
    hits = np.zeros(flat.size, dtype=bool)
    hits[hit_at[first]] = True
    return hits.reshape(n_users, width), n_relevant


def _index_in(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of each x in sorted_values (distinct, non-negative), or -1 where it is absent."""
    if not sorted_values.size:
        return np.full(x.shape, -1, dtype=np.int64)
    top = int(sorted_values[-1])
    if top < 4 * (x.size + sorted_values.size):
        # Dense ids (vocabulary indices): a lookup table is far faster than a binary search with
        # random queries, which misses the cache at every step. Slot 0 catches x < 0, the last x > top.
        table = np.full(top + 3, -1, dtype=np.int32 if sorted_values.size < 2**31 else np.int64)
        table[sorted_values + 1] = np.arange(sorted_values.size)
        return table[np.clip(x, -1, top + 1) + 1]
    at = np.minimum(np.searchsorted(sorted_values, x), sorted_values.size - 1)
    return np.where(sorted_values[at] == x, at, -1)


def _mean_over_relevant_users(per_user: np.ndarray, n_relevant: np.ndarray) -> float:
    users = n_relevant > 0
    return float(per_user[users].mean()) if users.any() else float("nan")


def _recall(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    found = hits[:, :k].sum(axis=1)
    return _mean_over_relevant_users(found / np.maximum(n_relevant, 1), n_relevant)


def _ndcg(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    top = hits[:, :k]
    dcg = top @ (1.0 / np.log2(np.arange(2, top.shape[1] + 2)))
    ideal_hits = np.minimum(n_relevant, k)
    ideal_dcg = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(2, int(ideal_hits.max(initial=0)) + 2)))]
    idcg = ideal_dcg[ideal_hits]
    return _mean_over_relevant_users(dcg / np.where(idcg > 0, idcg, 1.0), n_relevant)


def _hit_rate(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    return _mean_over_relevant_users(hits[:, :k].any(axis=1).astype(np.float64), n_relevant)


def _mrr(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    top = hits[:, :k]
    # 1/rank falls with rank, so the largest hit / rank is the first hit's reciprocal rank
    reciprocal = (top / np.arange(1, top.shape[1] + 1)).max(axis=1, initial=0.0)
    return _mean_over_relevant_users(reciprocal, n_relevant)
