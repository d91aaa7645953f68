"""The metrics table on a fixed small case: complete rows whose values are those of mtl.metric_functions;
top-K over the catalogue; relevance and exclusions; the report."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mtl import metric_functions as M
from mtl.evaluate.model_metrics import (
    Scorer,
    binary_metric_rows,
    ranking_metric_rows,
    score_column,
)
from mtl.evaluate.predict import inner_product, top_k
from mtl.evaluate.report import reliability, roc_points

NAN = float("nan")
EXPOSURE, ITEM, CATEGORY = "exposure", "repurchase_item", "repurchase_category"


@pytest.fixture
def frame() -> pd.DataFrame:
    """Eight exposures of three users, three item and two category repurchase rows."""
    kinds = [EXPOSURE] * 8 + [ITEM] * 3 + [CATEGORY] * 2
    return pd.DataFrame(
        {
            "row_kind": kinds,
            "user_id": ["a", "a", "a", "b", "b", "b", "c", "c", "a", "b", "c", "a", "c"],
            "click": [1, 0, 1, 1, 0, 0, 1, 0] + [NAN] * 5,
            "purchase": [1, 0, 0, 1, 0, 0, 0, 0] + [NAN] * 5,
            "repurchase_7d": [NAN] * 8 + [1, 0, NAN, 0, 1],
            "repurchase_30d": [NAN] * 13,
            score_column("model", "click"): [0.9, 0.2, 0.6, 0.7, 0.4, 0.1, 0.3, 0.5] + [0.5] * 5,
            score_column("model", "purchase"): [0.5, 0.1, 0.2, 0.3, 0.05, 0.02, 0.1, 0.2] + [0.1] * 5,
            score_column("model", "repurchase_7d"): [0.3] * 8 + [0.8, 0.3, 0.5, 0.4, 0.6],
            score_column("model", "repurchase_30d"): [0.3] * 13,
            score_column("pop", "click"): [5, 1, 3, 5, 2, 2, 1, 4] + [0] * 5,
            score_column("pop", "purchase"): [2, 0, 1, 2, 1, 0, 0, 1] + [0] * 5,
        },
        dtype=object,
    ).astype({c: float for c in ["click", "purchase", "repurchase_7d", "repurchase_30d"]})


def _scores(frame, kind, label, rows):
    return frame[score_column(kind, label)].to_numpy(dtype=float)[rows]


def test_binary_rows_are_complete_and_equal_the_metric_functions(frame):
    rows = binary_metric_rows(frame, [Scorer("model", True, "7"), Scorer("pop", False)])
    by_key = {(r.model_kind, r.task, r.metric): r for r in rows}
    probability = ("auc", "gauc", "log_loss", "calibration")
    expected = {
        ("model", t, m) for t in ("click", "purchase", "purchase_cvr", "repurchase_7d") for m in probability
    } | {("pop", t, m) for t in ("click", "purchase", "purchase_cvr") for m in ("auc", "gauc")}
    assert set(by_key) == expected  # nothing for repurchase_30d: no labelled row
    assert len(rows) == len(expected)
    assert all(r.k is None for r in rows)
    assert {r.scored_version for r in rows if r.model_kind == "model"} == {"7"}

    exposure = np.arange(8)
    users = frame["user_id"].to_numpy()
    click = frame["click"].to_numpy()[exposure]
    p = _scores(frame, "model", "click", exposure)
    assert by_key["model", "click", "auc"].value == pytest.approx(M.auc(click, p))
    assert by_key["model", "click", "gauc"].value == pytest.approx(M.gauc(click, p, users[exposure]))
    assert by_key["model", "click", "log_loss"].value == pytest.approx(M.log_loss(click, p))
    assert by_key["model", "click", "calibration"].value == pytest.approx(M.calibration(click, p))
    assert by_key["model", "click", "auc"].n_examples == 8

    # CVR: clicked exposures, scored with P(purchase) / P(click)
    clicked = np.array([0, 2, 3, 6])
    cvr = _scores(frame, "model", "purchase", clicked) / _scores(frame, "model", "click", clicked)
    bought = frame["purchase"].to_numpy()[clicked]
    assert by_key["model", "purchase_cvr", "auc"].value == pytest.approx(M.auc(bought, cvr))
    assert by_key["model", "purchase_cvr", "log_loss"].value == pytest.approx(M.log_loss(bought, cvr))
    assert by_key["model", "purchase_cvr", "auc"].n_examples == 4
    pop_cvr = _scores(frame, "pop", "purchase", clicked) / _scores(frame, "pop", "click", clicked)
    assert by_key["pop", "purchase_cvr", "auc"].value == pytest.approx(M.auc(bought, pop_cvr))

    # repurchase: item and category rows together, the null label left out
    rep = np.array([8, 9, 11, 12])
    labels = frame["repurchase_7d"].to_numpy()[rep]
    assert by_key["model", "repurchase_7d", "auc"].value == pytest.approx(
        M.auc(labels, _scores(frame, "model", "repurchase_7d", rep))
    )
    assert by_key["model", "repurchase_7d", "gauc"].value == pytest.approx(
        M.gauc(labels, _scores(frame, "model", "repurchase_7d", rep), users[rep])
    )
    assert by_key["pop", "click", "auc"].value == pytest.approx(M.auc(click, _scores(frame, "pop", "click", exposure)))


def test_undefined_metrics_are_null(frame):
    frame["purchase"] = np.where(frame["row_kind"] == EXPOSURE, 0.0, NAN)  # no positive: no AUC, no calibration
    rows = {(r.task, r.metric): r.value for r in binary_metric_rows(frame, [Scorer("model", True)])}
    assert rows["purchase", "auc"] is None and rows["purchase", "calibration"] is None
    exposures = np.arange(8)
    assert rows["purchase", "log_loss"] == pytest.approx(
        M.log_loss(np.zeros(8), _scores(frame, "model", "purchase", exposures))
    )


def test_ranking_rows_equal_the_metric_functions():
    ranked = np.array([[3, 1, 4, 0], [2, 0, -1, -1], [1, 2, 3, 4]])
    relevant = M.Relevance(np.array([0, 0, 1, 2]), np.array([4, 9, 5, 2]))
    rows = ranking_metric_rows(Scorer("als", False), ranked, relevant, [1, 3])
    by_key = {(r.metric, r.k): r for r in rows}
    assert set(by_key) == {(m, k) for m in ("recall", "ndcg", "hit_rate") for k in (1, 3)} | {("mrr", None)}
    for k in (1, 3):
        assert by_key["recall", k].value == pytest.approx(M.recall_at_k(ranked, relevant, k))
        assert by_key["ndcg", k].value == pytest.approx(M.ndcg_at_k(ranked, relevant, k))
        assert by_key["hit_rate", k].value == pytest.approx(M.hit_rate_at_k(ranked, relevant, k))
    assert by_key["recall", 3].value == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert by_key["mrr", None].value == pytest.approx(M.mrr(ranked, relevant))
    assert {r.n_examples for r in rows} == {3}


def test_top_k_ranks_the_whole_catalogue_and_honours_exclusions():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(5, 4)), rng.normal(size=(30, 4))
    scores = users @ items.T
    ranked = top_k(inner_product(users, items), 5, 30, 7)
    assert np.array_equal(ranked, np.argsort(-scores, axis=1)[:, :7])

    exclude = (np.array([0, 0, 3]), np.array([ranked[0, 0], ranked[0, 2], ranked[3, 1]]))
    masked = top_k(inner_product(users, items), 5, 30, 7, exclude)
    expected = scores.copy()
    expected[exclude] = -np.inf
    assert np.array_equal(masked, np.argsort(-expected, axis=1)[:, :7])

    # an unknown user ranks nothing; unknown items are never ranked; short catalogues pad with -1
    known_users = np.array([True, False, True, True, True])
    known_items = np.arange(30) < 4
    limited = top_k(inner_product(users, items, known_users, known_items), 5, 30, 6)
    assert (limited[1] == -1).all()
    assert set(limited[0, :4]) == set(range(4)) and (limited[0, 4:] == -1).all()


def test_top_k_tiles_large_catalogues(monkeypatch):
    from mtl.evaluate import predict

    monkeypatch.setattr(predict, "TILE_FLOATS", 64)  # 2 users per tile over 30 items
    rng = np.random.default_rng(1)
    users, items = rng.normal(size=(7, 3)), rng.normal(size=(30, 3))
    exclude = (np.array([6, 1]), np.array([0, 5]))
    expected = users @ items.T
    expected[exclude] = -np.inf
    assert np.array_equal(top_k(inner_product(users, items), 7, 30, 5, exclude), np.argsort(-expected, axis=1)[:, :5])


def test_curves():
    labels = np.array([1, 0, 1, 0, 0, 1.0])
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.3, 0.1])
    fpr, tpr = roc_points(labels, scores)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.trapz(tpr, fpr) == pytest.approx(M.auc(labels, scores))
    mean_p, rate = reliability(labels, scores, bins=2)
    assert mean_p == pytest.approx([np.mean([0.3, 0.3, 0.1]), np.mean([0.9, 0.8, 0.7])])
    assert rate == pytest.approx([1 / 3, 2 / 3])


def test_report_holds_tables_curves_and_history(frame):
    from mtl.config import GateConfig, GatedMetric
    from mtl.evaluate.gate import decide
    from mtl.evaluate.report import ReportData, render

    scorers = [Scorer("multi_task", True, "7"), Scorer("pop", False)]
    frame = frame.rename(columns=lambda c: c.replace("model__", "multi_task__"))
    rows = binary_metric_rows(frame, scorers)
    ranked = np.array([[3, 1, 4, 0], [2, 0, 1, 5]])
    relevant = M.Relevance(np.array([0, 1]), np.array([4, 7]))
    rows += ranking_metric_rows(Scorer("multi_task", False, "7"), ranked, relevant, [2, 4])
    history = pd.DataFrame(
        [
            {
                "ds": dt.date(2024, 3, d),
                "model_kind": kind,
                "task": "click",
                "metric": "auc",
                "k": None,
                "value": 0.6 + d / 100,
                "evaluated_at": dt.datetime(2024, 3, d),
            }
            for d in (7, 8, 9)
            for kind in ("multi_task", "pop")
        ]
    )
    decision = decide(
        {r.key: r.value for r in rows if r.model_kind == "multi_task"},
        None,
        GateConfig(metrics=[GatedMetric("click", "auc", floor=0.99)]),
    )
    page = render(
        ReportData(
            title="v7 <on> 2024-03-09",
            facts={"model version": "7"},
            rows=rows,
            frame=frame,
            scorers=scorers,
            rankings={"multi_task": ranked},
            relevant=relevant,
            ks=[2, 4],
            history=history,
            decision=decision,
            notes=["a note"],
        )
    )
    assert page.count("data:image/png;base64,") == 4  # ROC, calibration, Recall@K, history
    assert "v7 &lt;on&gt; 2024-03-09" in page  # escaped
    assert "Quality gate: would refuse" in page and "below the floor 0.99" in page
    for text in ("<h3>click</h3>", "<h3>purchase_cvr</h3>", "<h3>repurchase_7d</h3>", "recall@4", "a note"):
        assert text in page
    assert "<h3>repurchase_30d</h3>" not in page


def test_relevant_items_and_exclusions_index_the_catalogue():
    from mtl.evaluate.data import index_pairs

    users, items = np.array(["u1", "u2"], dtype=object), np.array(["a", "b", "c"], dtype=object)
    clicked = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["b", "new", "a", "c"]})
    relevant, exclude = index_pairs(users, items, clicked, None)
    assert exclude is None
    assert relevant.user.tolist() == [0, 0, 1, 1] and relevant.item.tolist() == [1, 3, 0, 2]  # "new": past the end

    seen = pd.DataFrame({"user_id": ["u2", "u2", "u1"], "item_id": ["a", "gone", "c"]})
    relevant, exclude = index_pairs(users, items, clicked, seen)
    assert exclude[0].tolist() == [1, 0] and exclude[1].tolist() == [0, 2]  # "gone" is not in the catalogue
    assert sorted(zip(relevant.user.tolist(), relevant.item.tolist())) == [(0, 1), (0, 3), (1, 2)]  # u2's "a" was seen
