"""The monitoring report: one HTML page per monitored ds, each metric's history with its bounds.

One plot per metric over ``monitoring.history_days`` of monitoring_metrics: a line per subject
(the subjects that came closest to a bound, at most ``MAX_LINES``), the warn and fail bounds
of today's rules as dashed lines, and today's breaches in a table above.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd

from mtl.evaluate.report import escape, figure_html, html_page, plt
from mtl.monitor.metrics import BOUNDS, METRICS, Judged

MAX_LINES = 8
_BOUND_STYLE = {"warn": ("#d9a400", "--"), "fail": ("#c0392b", "--")}


def render(ds: dt.date, judged: Sequence[Judged], history: pd.DataFrame, start: dt.date) -> str:
    """``history``: monitoring_metrics rows (ds, metric, subject, value, bounds) of [start, ds]."""
    breached = [j for j in judged if j.severity != "ok"]
    parts = [f"<h1>Monitoring, ds {escape(ds)}</h1>", _summary(judged)]
    if breached:
        rows = "".join(
            f"<tr class='{escape(j.severity)}'><td>{escape(j.severity)}</td><td>{escape(j.measurement.metric)}</td>"
            f"<td>{escape(j.measurement.subject)}</td><td>{escape(j.breach)}</td></tr>"
            for j in sorted(breached, key=lambda j: (j.severity != "fail", j.measurement.metric))
        )
        parts.append(
            f"<h2>Breaches</h2><table><tr><th>severity</th><th>metric</th><th>subject</th><th></th></tr>{rows}</table>"
        )
    else:
        parts.append("<p>No breaches.</p>")
    parts.append("<h2>History</h2>")
    for metric, (group, what) in METRICS.items():
        rows = history[history["metric"] == metric]
        if rows["value"].notna().any():
            parts += [f"<h3>{escape(metric)} ({escape(group)})</h3>", f"<p class='note'>{escape(what)}</p>"]
            parts.append(_plot(metric, rows, start, ds))
    return html_page(f"Monitoring {ds}", parts)


def _summary(judged: Sequence[Judged]) -> str:
    counts = {s: sum(j.severity == s for j in judged) for s in ("ok", "warn", "fail")}
    measured = sum(j.measurement.value is not None for j in judged)
    return (
        f"<p>{len(judged)} metrics ({measured} with a value): {counts['fail']} fail, {counts['warn']} warn, "
        f"{counts['ok']} ok.</p>"
    )


def _plot(metric: str, rows: pd.DataFrame, start: dt.date, ds: dt.date) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    closest = rows.groupby("subject")["value"].max().sort_values(ascending=False).index[:MAX_LINES]
    for subject in closest:
        line = rows[rows["subject"] == subject].sort_values("ds")
        ax.plot(line["ds"], line["value"], marker="o", ms=3, lw=1.2, label=subject)
    latest = rows[rows["ds"] == rows["ds"].max()]
    for bound in BOUNDS:
        values = latest[bound].dropna().unique()
        if len(values) == 1:  # one bound for every subject: draw it (per-subject bounds would clutter)
            colour, style = _BOUND_STYLE[bound.split("_")[0]]
            ax.axhline(values[0], color=colour, ls=style, lw=1, label=bound)
    margin = dt.timedelta(days=1)  # the whole window, also when it holds one day so far
    ax.set(title=metric, xlabel="ds", xlim=(start - margin, ds + margin))
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.legend(fontsize=6, ncol=2)
    return figure_html(fig)
