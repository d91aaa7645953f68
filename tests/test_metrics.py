import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from mtl import metric_functions as metrics
from mtl.metric_functions import Relevance


def _binary_data(rng, n, users=None, tie_decimals=1):
    """Labels, scores rounded so that many tie, and optional user ids (strings)."""
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = np.round(np.clip(rng.normal(0.3 + 0.2 * labels, 0.2), 0, 1), tie_decimals)
    groups = None if users is None else np.array([f"u{i}" for i in rng.integers(0, users, n)])
    return labels, scores, groups


# ---------------------------------------------------------------------------------------------
# binary tasks


@pytest.mark.parametrize("seed, n, decimals", [(0, 50, 1), (1, 1000, 1), (2, 5000, 2), (3, 3000, 8)])
def test_auc_matches_sklearn_with_ties(seed, n, decimals):
    labels, scores, _ = _binary_data(np.random.default_rng(seed), n, tie_decimals=decimals)
    assert len(np.unique(scores)) < n or decimals == 8
    assert metrics.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_of_hand_computed_cases():
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # every pair tied: half credit
    assert metrics.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # pairs (pos 0.4 vs neg 0.1, 0.4, 0.6): win, tie, loss -> 1.5 / 3
    assert metrics.auc([1, 0, 0, 0], [0.4, 0.1, 0.4, 0.6]) == 0.5
    assert metrics.auc(np.array([True, False]), np.array([0.9, 0.1], dtype=np.float32)) == 1.0


def test_auc_is_nan_with_one_class_or_no_rows():
    assert math.isnan(metrics.auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(metrics.auc([0, 0], [0.1, 0.5]))
    assert math.isnan(metrics.auc([], []))


def test_binary_inputs_are_checked():
    with pytest.raises(ValueError, match="same length"):
        metrics.auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.auc([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.log_loss([0, -1], [0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([0, 1], [0.5, np.nan])


def _reference_gauc(labels, scores, groups):
    num = den = 0.0
    for g in np.unique(groups):
        mask = groups == g
        if len(np.unique(labels[mask])) == 2:
            num += mask.sum() * roc_auc_score(labels[mask], scores[mask])
            den += mask.sum()
    return num / den


@pytest.mark.parametrize("seed, n, users", [(0, 300, 20), (1, 4000, 150), (2, 2000, 1500)])
def test_gauc_matches_per_user_sklearn_weighted_by_rows(seed, n, users):
    labels, scores, groups = _binary_data(np.random.default_rng(seed), n, users=users)
    # users with one class only: all positive, all negative, a single row
    labels = np.r_[labels, 1, 1, 1, 0, 0, 1]
    scores = np.r_[scores, 0.2, 0.9, 0.2, 0.5, 0.1, 0.3]
    groups = np.concatenate([groups, ["pos", "pos", "pos", "neg", "neg", "one"]])
    assert metrics.gauc(labels, scores, groups) == pytest.approx(_reference_gauc(labels, scores, groups), abs=1e-12)


def test_gauc_by_hand_skips_one_class_users_and_weights_by_rows():
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.5, 0.2, 0.3, 0.8, 0.7]
    groups = [7, 7, 7, 3, 3, 5, 5]  # user 7: AUC 1 (3 rows); user 3: AUC 0 (2 rows); user 5: one class
    assert metrics.gauc(labels, scores, groups) == pytest.approx(3 / 5)


def test_gauc_is_nan_when_every_user_has_one_class():
    assert math.isnan(metrics.gauc([1, 0, 0], [0.2, 0.3, 0.4], ["a", "b", "b"]))


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(4)
    labels = (rng.random(2000) < 0.2).astype(int)
    probs = rng.uniform(0.01, 0.99, 2000)
    assert metrics.log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, probs), rel=1e-12)


def test_log_loss_clips_certain_wrong_predictions():
    assert metrics.log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-7))
    assert metrics.log_loss([1], [0.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert metrics.log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7))


def test_calibration_is_mean_prediction_over_mean_label():
    assert metrics.calibration([1, 0, 0, 0], [0.5, 0.1, 0.2, 0.2]) == pytest.approx(1.0 / 1.0)
    assert metrics.calibration([1, 1, 0, 0], [0.2, 0.2, 0.2, 0.2]) == pytest.approx(0.2 / 0.5)
    assert math.isnan(metrics.calibration([0, 0], [0.1, 0.2]))


def test_binary_metrics_drops_missing_labels():
    rng = np.random.default_rng(5)
    labels, scores, groups = _binary_data(rng, 3000, users=100)
    probs = np.clip(scores, 0.01, 0.99)
    with_missing = labels.astype(np.float64)
    missing = rng.random(labels.size) < 0.25
    with_missing[missing] = -1
    with_missing[np.flatnonzero(missing)[::2]] = np.nan  # a null label read into pandas
    keep = ~missing

    got = metrics.binary_metrics(with_missing, probs, groups)

    assert got["rows"] == keep.sum()
    assert got["positive_rate"] == pytest.approx(labels[keep].mean())
    assert got["mean_prediction"] == pytest.approx(probs[keep].mean())
    assert got["auc"] == pytest.approx(roc_auc_score(labels[keep], probs[keep]), abs=1e-12)
    assert got["gauc"] == pytest.approx(_reference_gauc(labels[keep], probs[keep], groups[keep]), abs=1e-12)
    assert got["log_loss"] == pytest.approx(sk_log_loss(labels[keep], probs[keep]), rel=1e-12)
    assert got["calibration"] == pytest.approx(probs[keep].mean() / labels[keep].mean())


def test_binary_metrics_without_groups_or_labels():
    assert "gauc" not in metrics.binary_metrics([0, 1], [0.2, 0.7])
    empty = metrics.binary_metrics([-1, -1], [0.2, 0.7], groups=["a", "b"])
    assert empty["rows"] == 0
    assert all(math.isnan(v) for k, v in empty.items() if k != "rows")


# ---------------------------------------------------------------------------------------------
# ranking


def _reference_ranking(ranked, relevant, k):
    """Per-user loop straight from the definitions; users without relevant items skipped."""
    recalls, ndcgs, hit_rates, rrs = [], [], [], []
    for row, rel in zip(ranked, relevant):
        rel = set(rel)
        if not rel:
            continue
        seen, gains = set(), []
        for item in row[:k]:
            gains.append(1.0 if item >= 0 and item in rel and item not in seen else 0.0)
            seen.add(item)
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
        recalls.append(sum(gains) / len(rel))
        ndcgs.append(dcg / idcg)
        hit_rates.append(float(any(gains)))
        rrs.append(next((1 / (i + 1) for i, g in enumerate(gains) if g), 0.0))
    return {"recall": np.mean(recalls), "ndcg": np.mean(ndcgs), "hit_rate": np.mean(hit_rates), "mrr": np.mean(rrs)}


def _random_lists(rng, users, width, n_items):
    """Ranked lists with padding and repeats, and relevant sets including empty ones."""
    ranked = np.stack([rng.choice(n_items, width, replace=False) for _ in range(users)])
    lengths = rng.integers(0, width + 1, users)
    ranked[np.arange(width) >= lengths[:, None]] = -1
    ranked[::7, -1] = ranked[::7, 0]  # an item repeated in its own list
    relevant = [set(rng.choice(n_items, rng.integers(0, 6), replace=False).tolist()) for _ in range(users)]
    assert any(not r for r in relevant)
    return ranked.astype(np.int32), relevant


@pytest.mark.parametrize("k", [1, 3, 10, 25])  # 25 > the lists' width of 10
def test_ranking_metrics_match_reference(k):
    ranked, relevant = _random_lists(np.random.default_rng(k), users=400, width=10, n_items=40)
    want = _reference_ranking(ranked, relevant, k)

    assert metrics.recall_at_k(ranked, relevant, k) == pytest.approx(want["recall"], abs=1e-12)
    assert metrics.ndcg_at_k(ranked, relevant, k) == pytest.approx(want["ndcg"], abs=1e-12)
    assert metrics.hit_rate_at_k(ranked, relevant, k) == pytest.approx(want["hit_rate"], abs=1e-12)
    assert metrics.mrr(ranked, relevant, k) == pytest.approx(want["mrr"], abs=1e-12)


def test_ranking_metrics_match_sklearn_ndcg():
    rng = np.random.default_rng(8)
    users, n_items = 300, 30
    scores = rng.random((users, n_items))  # no ties
    relevance = (rng.random((users, n_items)) < 0.15).astype(int)
    has_relevant = relevance.sum(axis=1) > 0
    ranked = np.argsort(-scores, axis=1)[:, :12]
    relevant = [np.flatnonzero(r) for r in relevance]
    for k in (1, 5, 12):
        want = ndcg_score(relevance[has_relevant], scores[has_relevant], k=k)
        assert metrics.ndcg_at_k(ranked, relevant, k) == pytest.approx(want, abs=1e-12)


def test_ranking_metrics_by_hand():
    ranked = np.array([[3, 1, 2, -1], [9, 8, 7, 6], [4, 4, 5, -1]])
    relevant = [{1, 5}, {6}, {4}]
    # user 0: hit at rank 2 of 2 relevant; user 1: hit at rank 4; user 2: hit at rank 1, repeat ignored
    assert metrics.recall_at_k(ranked, relevant, 2) == pytest.approx((0.5 + 0 + 1) / 3)
    assert metrics.hit_rate_at_k(ranked, relevant, 2) == pytest.approx(2 / 3)
    assert metrics.mrr(ranked, relevant) == pytest.approx((1 / 2 + 1 / 4 + 1) / 3)
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert metrics.ndcg_at_k(ranked, relevant, 2) == pytest.approx((ndcg_user0 + 0 + 1) / 3)
    # k beyond the list: the list cannot hold more hits, the ideal one could
    assert metrics.recall_at_k(ranked, relevant, 100) == pytest.approx((0.5 + 1 + 1) / 3)


def test_users_without_relevant_items_are_not_averaged():
    ranked = np.array([[1, 2], [3, 4]])
    assert metrics.recall_at_k(ranked, [{2}, set()], 2) == 1.0
    assert metrics.mrr(ranked, [{2}, set()]) == 0.5
    assert math.isnan(metrics.ndcg_at_k(ranked, [set(), set()], 2))


def test_long_form_relevance_gives_the_same_metrics():
    ranked, relevant = _random_lists(np.random.default_rng(9), users=200, width=8, n_items=30)
    user = np.repeat(np.arange(len(relevant)), [len(r) for r in relevant])
    item = np.concatenate([sorted(r) for r in relevant]).astype(np.int64)
    # a repeated pair counts once
    long_form = Relevance(np.r_[user, user[:5]], np.r_[item, item[:5]])

    assert metrics.ranking_metrics(ranked, long_form, ks=(3, 8)) == metrics.ranking_metrics(ranked, relevant, ks=(3, 8))


def test_sparse_item_ids_give_the_same_metrics():
    # ids far apart (hashes rather than vocabulary indices) take the binary-search path
    ranked, relevant = _random_lists(np.random.default_rng(11), users=150, width=10, n_items=30)
    spread = np.where(ranked >= 0, ranked.astype(np.int64) * 1_000_003 + 10**12, -1)
    spread_relevant = [{i * 1_000_003 + 10**12 for i in r} for r in relevant]
    got = metrics.ranking_metrics(spread, spread_relevant, ks=(1, 5, 20))
    assert got == metrics.ranking_metrics(ranked, relevant, ks=(1, 5, 20))
    assert got["ndcg_at_5"] == pytest.approx(_reference_ranking(ranked, relevant, 5)["ndcg"], abs=1e-12)


def test_ranking_metrics_dict_keys_and_values():
    ranked, relevant = _random_lists(np.random.default_rng(10), users=100, width=10, n_items=25)
    got = metrics.ranking_metrics(ranked, relevant, ks=(5, 10))
    assert set(got) == {"users", "mrr"} | {f"{m}_at_{k}" for m in ("recall", "ndcg", "hit_rate") for k in (5, 10)}
    assert got["users"] == sum(1 for r in relevant if r)
    assert got["ndcg_at_5"] == metrics.ndcg_at_k(ranked, relevant, 5)
    assert got["mrr"] == pytest.approx(_reference_ranking(ranked, relevant, 10)["mrr"], abs=1e-12)


def test_ranking_inputs_are_checked():
    with pytest.raises(ValueError, match="2-D integer"):
        metrics.recall_at_k(np.array([1.0, 2.0]), [{1}], 1)
    with pytest.raises(ValueError, match="relevant has 1 users, ranked has 2"):
        metrics.recall_at_k(np.array([[1], [2]]), [{1}], 1)
    with pytest.raises(ValueError, match="rows of ranked"):
        metrics.recall_at_k(np.array([[1], [2]]), Relevance(np.array([2]), np.array([1])), 1)
    with pytest.raises(ValueError, match="k must be at least 1"):
        metrics.ndcg_at_k(np.array([[1]]), [{1}], 0)
