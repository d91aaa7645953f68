"""The compiled part of the exact top-M scan: after each matmul tile, find the scores at or above
each user's threshold and keep the best M so far, in one pass over the tile.

Written with Numba (compiled to machine code for the CPU it runs on, at the first call in a
process, and cached on disk) because the same work as a chain of torch operations (compare,
nonzero, index, concatenate, sort, topk) read and wrote the tile several times and cost more
than the matmul itself.

Each user owns a buffer of ``capacity`` (score, item) slots. Hits are appended; a full buffer is
cut back to its best M by a selection, and the M-th best becomes the user's threshold, so later
tiles let through only scores that could still enter the top M.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def collect_hits(
    scores: np.ndarray,  # float32 [B, W], row b of the tile is user b
    first_item: int,  # catalogue row of the tile's column 0
    threshold: np.ndarray,  # float32 [B], in/out: the score a hit must reach, per user
    kept_scores: np.ndarray,  # float32 [B, capacity], in/out
    kept_items: np.ndarray,  # int64 [B, capacity], in/out
    kept: np.ndarray,  # int64 [B], in/out: slots in use
    m: int,
) -> None:
    users, width = scores.shape
    capacity = kept_scores.shape[1]
    # One byte per score, read back eight at a time: the comparison loop compiles to vector
    # instructions (a max or a branch per score would not), and only a nonzero word is looked into.
    words = (width + 7) // 8
    flags = np.zeros(words * 8, dtype=np.uint8)
    flag_words = flags.view(np.uint64)
    for u in range(users):
        bar = threshold[u]
        n = kept[u]
        row = scores[u]
        for j in range(width):
            flags[j] = row[j] >= bar
        for w in range(words):
            if flag_words[w] == 0:
                continue
            for j in range(w * 8, min(w * 8 + 8, width)):
                if flags[j] and row[j] >= bar:  # the bar may have risen since the flags were set
                    kept_scores[u, n] = row[j]
                    kept_items[u, n] = first_item + j
                    n += 1
                    if n == capacity:
                        bar = _keep_best(kept_scores[u], kept_items[u], n, m)
                        n = m
        kept[u] = n
        threshold[u] = bar


@numba.njit(cache=True, nogil=True)
def finish(kept_scores: np.ndarray, kept_items: np.ndarray, kept: np.ndarray, m: int) -> None:
    """Cut every user's buffer back to its best m (in slots 0..m-1, in no particular order)."""
    for u in range(kept_scores.shape[0]):
        if kept[u] > m:
            _keep_best(kept_scores[u], kept_items[u], kept[u], m)
            kept[u] = m


@numba.njit(cache=True, nogil=True)
def kth_best(scores: np.ndarray, k: int) -> np.ndarray:
    """float32 [B]: the k-th largest score of each row of ``scores`` [B, W], for a small k.

    One pass per row keeps the best k in a sorted array; after the first few scores almost
    every score fails the one comparison with the k-th best, so this costs about a read."""
    users, width = scores.shape
    out = np.empty(users, dtype=np.float32)
    best = np.empty(k, dtype=np.float32)  # descending
    for u in range(users):
        best[:] = -np.inf
        row = scores[u]
        for j in range(width):
            value = row[j]
            if value > best[k - 1]:
                at = k - 1
                while at > 0 and best[at - 1] < value:
                    best[at] = best[at - 1]
                    at -= 1
                best[at] = value
        out[u] = best[k - 1]
    return out


@numba.njit(cache=True, nogil=True)
def _keep_best(values: np.ndarray, items: np.ndarray, n: int, m: int) -> float:
    """Reorder the first n slots so that the best m come first (quickselect, largest first);
    returns the m-th best value."""
    lo, hi, target = 0, n - 1, m - 1
    while lo < hi:
        pivot = values[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while values[i] > pivot:
                i += 1
            while values[j] < pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                items[i], items[j] = items[j], items[i]
                i += 1
                j -= 1
        # now values[lo..j] >= pivot >= values[i..hi], and slots j+1..i-1 equal the pivot
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return values[target]
