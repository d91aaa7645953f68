"""The evaluation report: one self-contained HTML page (plots embedded as base64 PNGs) per run.

Model vs. baselines per task, ROC curves, calibration (reliability) plots, Recall@K curves,
the metric history over earlier days, and what the quality gate would decide. Curves come from
the same predictions the metrics table was computed from.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mtl import metric_functions as M  # noqa: E402
from mtl.evaluate.gate import GateDecision  # noqa: E402
from mtl.evaluate.model_metrics import (  # noqa: E402
    BINARY_TASKS,
    CANDIDATES,
    RANKING_METRICS,
    RECOMMENDATIONS,
    RETRIEVAL,
    MetricRow,
    Scorer,
    population_mask,
    task_scores,
)

# Display order: the candidate, what it must beat, then the baselines from strongest to simplest.
KIND_ORDER = (
    "multi_task",
    "champion",
    "source_union",
    "revisits",
    "item_neighbours",
    "two_tower",
    "single_task",
    "logistic_regression",
    "gbt",
    "als",
    "category_popularity",
    "popularity",
    "recency_frequency",
)
BINARY_COLUMNS = ("auc", "gauc", "log_loss", "calibration")
MAX_CURVE_POINTS = 200


@dataclass
class ReportData:
    title: str
    facts: dict[str, str]  # shown as a table at the top
    rows: Sequence[MetricRow]
    frame: pd.DataFrame  # the predictions frame (see metrics_table)
    scorers: Sequence[Scorer]
    rankings: dict[str, np.ndarray]  # kind -> ranked catalogue indices [users, K]
    relevant: Optional[M.Relevance]
    ks: Sequence[int]
    history: pd.DataFrame  # model_metrics rows of earlier days (and this one)
    decision: Optional[GateDecision]
    calibration_bins: int = 10
    notes: list[str] = field(default_factory=list)


def render(data: ReportData) -> str:
    parts = [f"<h1>{escape(data.title)}</h1>", _facts(data.facts)]
    parts += [f"<p class='note'>{escape(n)}</p>" for n in data.notes]
    if data.decision is not None:
        parts.append(_gate(data.decision))
    parts.append("<h2>Model vs. baselines</h2>")
    for task in BINARY_TASKS:
        table = _binary_table(data.rows, task.name)
        if table:
            parts += [f"<h3>{escape(task.name)}</h3>", table]
    lists = _ranking_table(data.rows, data.ks, RECOMMENDATIONS, ("coverage", "new_to_user"))
    if lists:
        parts += [f"<h3>{RECOMMENDATIONS} (the published list: candidates, ranking, filters, top K)</h3>", lists]
    pool = _candidates_table(data.rows)
    if pool:
        parts += [f"<h3>{CANDIDATES} (recall of each source's candidates: what ranking can at best reach)</h3>", pool]
    ranking = _ranking_table(data.rows, data.ks)
    if ranking:
        parts += [f"<h3>{RETRIEVAL} (full catalogue)</h3>", ranking]
    parts += ["<h2>ROC curves</h2>", figure_html(_roc_figure(data))]
    parts += ["<h2>Calibration</h2>", figure_html(_calibration_figure(data))]
    if data.rankings and data.relevant is not None:
        parts += ["<h2>Recall@K</h2>", figure_html(_recall_figure(data))]
    parts.append("<h2>History</h2>")
    history = _history_figure(data.history, data.ks)
    parts.append(figure_html(history) if history is not None else "<p>No earlier evaluations in model_metrics.</p>")
    return html_page(data.title, parts)


def _ordered(kinds) -> list[str]:
    kinds = set(kinds)
    return [k for k in KIND_ORDER if k in kinds] + sorted(kinds - set(KIND_ORDER))


# ---------------------------------------------------------------------------------------------
# tables


def _facts(facts: dict[str, str]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts.items())
    return f"<table class='facts'>{body}</table>"


def _gate(decision: GateDecision) -> str:
    verdict = "would publish" if decision.passed else "would refuse"
    rows = "".join(
        f"<tr class='{'pass' if c.passed else 'fail'}'><td>{'pass' if c.passed else 'FAIL'}</td>"
        f"<td>{escape(c.reason)}</td></tr>"
        for c in decision.checks
    )
    return f"<h2>Quality gate: {verdict}</h2><table>{rows}</table>"


def _binary_table(rows: Sequence[MetricRow], task: str) -> str:
    mine = [r for r in rows if r.task == task]
    if not mine:
        return ""
    values = {(r.model_kind, r.metric): r.value for r in mine}
    n = {r.model_kind: r.n_examples for r in mine}
    best_auc = max((r.value for r in mine if r.metric == "auc" and r.value is not None), default=None)
    head = "".join(f"<th>{m}</th>" for m in BINARY_COLUMNS)
    body = []
    for kind in _ordered(n):
        cells = []
        for metric in BINARY_COLUMNS:
            value = values.get((kind, metric))
            strong = metric == "auc" and value is not None and value == best_auc
            cells.append(f"<td{' class=best' if strong else ''}>{_fmt(value)}</td>")
        body.append(f"<tr><th>{escape(kind)}</th>{''.join(cells)}<td>{n[kind]:,}</td></tr>")
    return f"<table><tr><th>model</th>{head}<th>rows</th></tr>{''.join(body)}</table>"


def _ranking_table(
    rows: Sequence[MetricRow], ks: Sequence[int], task: str = RETRIEVAL, extra: Sequence[str] = ()
) -> str:
    mine = [r for r in rows if r.task == task]
    if not mine:
        return ""
    values = {(r.model_kind, r.metric, r.k): r.value for r in mine}
    users = {r.model_kind: r.n_examples for r in mine}
    columns = [(m, k) for m in RANKING_METRICS for k in ks] + [("mrr", None)]
    best = {c: max((values.get((kind, *c)) or 0.0) for kind in users) for c in columns}
    head = "".join(f"<th>{m}@{k}</th>" if k else f"<th>{m}</th>" for m, k in columns)
    head += "".join(f"<th>{m}</th>" for m in extra)
    body = []
    for kind in _ordered(users):
        cells = ""
        for c in columns:
            value = values.get((kind, *c))
            cells += f"<td{' class=best' if value == best[c] and best[c] > 0 else ''}>{_fmt(value)}</td>"
        cells += "".join(f"<td>{_fmt(values.get((kind, m, None)))}</td>" for m in extra)
        body.append(f"<tr><th>{escape(kind)}</th>{cells}<td>{users[kind]:,}</td></tr>")
    return f"<table><tr><th>model</th>{head}<th>users</th></tr>{''.join(body)}</table>"


def _candidates_table(rows: Sequence[MetricRow]) -> str:
    mine = {(r.model_kind, r.metric): r.value for r in rows if r.task == CANDIDATES}
    sources = list(dict.fromkeys(kind for kind, _ in mine))
    body = "".join(
        f"<tr><th>{escape(s)}</th><td>{_fmt(mine.get((s, 'recall')))}</td>"
        f"<td>{_fmt(mine.get((s, 'per_user')))}</td></tr>"
        for s in sources
    )
    return f"<table><tr><th>source</th><th>recall</th><th>candidates per user</th></tr>{body}</table>" if body else ""


def _fmt(value: Optional[float]) -> str:
    return "&ndash;" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------
# figures


def _binary_panels(data: ReportData):
    """(task, labels, {kind: scores}) of each binary task with labelled rows."""
    for task in BINARY_TASKS:
        mask = population_mask(data.frame, task)
        if not mask.any():
            continue
        scores = {}
        for scorer in data.scorers:
            s = task_scores(data.frame, scorer.kind, task)
            if s is not None:
                scores[scorer.kind] = s[mask]
        if scores:
            yield task, data.frame[task.label].to_numpy(dtype=np.float64)[mask], scores


def _grid(n: int):
    cols = min(3, max(n, 1))
    rows = -(-max(n, 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (thinned to MAX_CURVE_POINTS)."""
    order = np.argsort(-scores, kind="stable")
    y, s = labels[order], scores[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(1 - y)[last_of_tie]
    tpr = np.r_[0.0, tp / max(tp[-1], 1)]
    fpr = np.r_[0.0, fp / max(fp[-1], 1)]
    keep = np.unique(np.linspace(0, len(tpr) - 1, min(len(tpr), MAX_CURVE_POINTS)).astype(int))
    return fpr[keep], tpr[keep]


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean prediction and observed positive rate in quantile bins of the prediction."""
    edges = np.unique(np.quantile(probs, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, max(len(edges) - 2, 0))
    counts = np.bincount(which, minlength=len(edges))
    used = counts > 0
    mean_p = np.bincount(which, weights=probs, minlength=len(edges))[used] / counts[used]
    rate = np.bincount(which, weights=labels, minlength=len(edges))[used] / counts[used]
    return mean_p, rate


def _roc_figure(data: ReportData):
    panels = list(_binary_panels(data))
    fig, axes = _grid(len(panels))
    for ax, (task, labels, scores) in zip(axes, panels):
        for kind in _ordered(scores):
            fpr, tpr = roc_points(labels, scores[kind])
            ax.plot(
                fpr, tpr, label=f"{kind} ({M.auc(labels, scores[kind]):.3f})", lw=2.2 if kind == "multi_task" else 1.2
            )
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set(title=task.name, xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    return fig


def _calibration_figure(data: ReportData):
    probabilistic = {s.kind for s in data.scorers if s.probabilistic}
    panels = [(t, y, {k: s for k, s in sc.items() if k in probabilistic}) for t, y, sc in _binary_panels(data)]
    panels = [p for p in panels if p[2]]
    fig, axes = _grid(len(panels))
    for ax, (task, labels, scores) in zip(axes, panels):
        top = 0.0
        for kind in _ordered(scores):
            mean_p, rate = reliability(labels, scores[kind], data.calibration_bins)
            ax.plot(mean_p, rate, marker="o", ms=3, label=kind, lw=2.2 if kind == "multi_task" else 1.2)
            top = max(top, mean_p.max(initial=0), rate.max(initial=0))
        ax.plot([0, top], [0, top], color="grey", ls=":", lw=1)
        ax.set(title=task.name, xlabel="mean prediction (quantile bins)", ylabel="observed rate")
        ax.legend(fontsize=7, loc="upper left")
    return fig


def _recall_figure(data: ReportData):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    k_max = max(data.ks)
    ks = range(1, k_max + 1)
    for kind in _ordered(data.rankings):
        values = M.ranking_metrics(data.rankings[kind][:, :k_max], data.relevant, ks)
        ax.plot(list(ks), [values[f"recall_at_{k}"] for k in ks], label=kind, lw=2.2 if kind == "multi_task" else 1.2)
    ax.set(xlabel="K", ylabel="Recall@K", title="next items over the full catalogue")
    ax.legend(fontsize=7)
    return fig


def _history_figure(history: pd.DataFrame, ks: Sequence[int]):
    if history.empty or history["ds"].nunique() < 2:
        return None
    k_mid = sorted(ks)[len(ks) // 2]
    panels = [(t.name, "auc", None) for t in BINARY_TASKS] + [(RETRIEVAL, "recall", k_mid)]
    panels = [p for p in panels if ((history["task"] == p[0]) & (history["metric"] == p[1])).any()]
    fig, axes = _grid(len(panels))
    for ax, (task, metric, k) in zip(axes, panels):
        rows = history[(history["task"] == task) & (history["metric"] == metric)]
        if k is not None:
            rows = rows[rows["k"] == k]
        # One value per day and kind: the latest evaluation of that day.
        rows = rows.sort_values("evaluated_at").groupby(["model_kind", "ds"], as_index=False).last()
        for kind in _ordered(rows["model_kind"].unique()):
            line = rows[rows["model_kind"] == kind].sort_values("ds")
            ax.plot(
                pd.to_datetime(line["ds"]),
                line["value"],
                marker="o",
                ms=3,
                label=kind,
                lw=2.2 if kind == "multi_task" else 1.2,
            )
        ax.set(title=f"{task} {metric}" + (f"@{k}" if k else ""), xlabel="ds")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.legend(fontsize=7)
    return fig


def figure_html(fig) -> str:
    """An <img> of ``fig`` embedded as a base64 PNG (the page stays one self-contained file); closes it."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def escape(text: object) -> str:
    return html.escape(str(text))


def html_page(title: str, parts: Sequence[str]) -> str:
    """One HTML page of the report's style around ``parts`` (HTML fragments)."""
    return _PAGE.format(title=escape(title), body="\n".join(parts))


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 13px; }}
th:first-child, table.facts th {{ text-align: left; }}
td.best {{ font-weight: bold; background: #e8f4e8; }}
tr.fail td {{ background: #fbe3e3; }}
.note {{ color: #555; font-style: italic; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""
