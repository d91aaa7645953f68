"""The rows of ``model_metrics``: every scorer's predictions through the same metric code.

Binary tasks read one pandas frame of the held-out day's training_examples rows (the
*predictions frame*): ``row_kind``, ``user_id``, the label columns (NaN where the label is
null) and one score column per (scorer, label), named by :func:`score_column`. Each task is a
population of those rows and a label:

- ``click``: exposure rows;
- ``purchase``: exposure rows, purchase label, as the model learns it (CTCVR: clicked and bought);
- ``purchase_cvr``: exposure rows with a click, purchase label, scored with
  P(purchase) / P(click), the conversion rate implied by the scorer's two predictions (ESMM's
  own pCVR; for any other scorer the same ratio);
- ``repurchase_<N>d``: repurchase_item and repurchase_category rows.

Retrieval (next items over the whole catalogue) reads ranked lists. Metric values come from
:mod:`mtl.metric_functions` only, for the model and every baseline alike.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from mtl import delta_io
from mtl import metric_functions as M
from mtl.config import Config
from mtl.delta_io import Commit
from mtl.schema import REPURCHASE_HORIZONS_DAYS, REPURCHASE_ROW_KINDS
from mtl.tables import MODEL_METRICS

RETRIEVAL = "retrieval"
# The published list of ds and every baseline's list through the same filters
# (mtl.evaluate.recommendation_lists), and the recall of the candidate sources it is made from.
RECOMMENDATIONS = "recommendations"
CANDIDATES = "candidates"
Population = Literal["exposure", "clicked", "repurchase"]


@dataclass(frozen=True)
class BinaryTask:
    name: str  # the task column of model_metrics
    label: str  # the label column of training_examples
    population: Population


BINARY_TASKS: tuple[BinaryTask, ...] = (
    BinaryTask("click", "click", "exposure"),
    BinaryTask("purchase", "purchase", "exposure"),
    BinaryTask("purchase_cvr", "purchase", "clicked"),
    *(BinaryTask(f"repurchase_{n}d", f"repurchase_{n}d", "repurchase") for n in REPURCHASE_HORIZONS_DAYS),
)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in BINARY_TASKS) + (RETRIEVAL, RECOMMENDATIONS)
LIST_TASKS = (RETRIEVAL, RECOMMENDATIONS)
# model_kinds that are model versions; every other kind is a baseline (the gate's versus_baselines).
MODEL_KINDS = ("multi_task", "champion")
# Metrics that need probabilities; rank-only scorers (popularity, heuristics) get the others only.
PROBABILITY_METRICS = ("log_loss", "calibration")
RANK_METRICS = ("auc", "gauc")
RANKING_METRICS = ("recall", "ndcg", "hit_rate")


@dataclass(frozen=True)
class Scorer:
    """One source of predictions, as model_metrics names it."""

    kind: str
    # True when scores are probabilities (log loss and calibration mean something)
    probabilistic: bool
    scored_version: Optional[str] = None


@dataclass(frozen=True)
class MetricRow:
    model_kind: str
    task: str
    metric: str
    k: Optional[int]
    value: Optional[float]  # None where the metric is undefined
    n_examples: int
    scored_version: Optional[str] = None

    @property
    def key(self) -> tuple[str, str, Optional[int]]:
        return self.task, self.metric, self.k


def score_column(kind: str, label: str) -> str:
    """Column of the predictions frame holding ``kind``'s score for ``label``."""
    return f"{kind}__{label}"


def population_mask(frame: pd.DataFrame, task: BinaryTask) -> np.ndarray:
    """Rows of ``frame`` that belong to the task and have its label."""
    kind = frame["row_kind"].to_numpy()
    if task.population == "repurchase":
        rows = np.isin(kind, REPURCHASE_ROW_KINDS)
    else:
        rows = kind == "exposure"
        if task.population == "clicked":
            rows &= frame["click"].to_numpy() == 1
    return rows & ~np.isnan(frame[task.label].to_numpy(dtype=np.float64))


def task_scores(frame: pd.DataFrame, kind: str, task: BinaryTask) -> Optional[np.ndarray]:
    """``kind``'s scores for ``task`` over every row of ``frame``; None if it does not score it."""
    if task.name == "purchase_cvr":
        click, purchase = score_column(kind, "click"), score_column(kind, "purchase")
        if click not in frame or purchase not in frame:
            return None
        p_click = frame[click].to_numpy(dtype=np.float64)
        p_purchase = frame[purchase].to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(p_click > 0, np.clip(p_purchase / p_click, 0.0, 1.0), 0.0)
    column = score_column(kind, task.label)
    return frame[column].to_numpy(dtype=np.float64) if column in frame else None


def binary_metric_rows(frame: pd.DataFrame, scorers: Iterable[Scorer]) -> list[MetricRow]:
    """Every binary task each scorer has scores for: AUC and GAUC (by user), plus log loss and
    calibration for probabilistic scorers. Tasks without a labelled row give no rows."""
    rows: list[MetricRow] = []
    masks = {task.name: population_mask(frame, task) for task in BINARY_TASKS}
    for scorer in scorers:
        wanted = RANK_METRICS + (PROBABILITY_METRICS if scorer.probabilistic else ())
        for task in BINARY_TASKS:
            mask = masks[task.name]
            scores = task_scores(frame, scorer.kind, task)
            if scores is None or not mask.any():
                continue
            values = M.binary_metrics(
                frame[task.label].to_numpy()[mask], scores[mask], frame["user_id"].to_numpy()[mask]
            )
            rows += [
                MetricRow(
                    scorer.kind,
                    task.name,
                    metric,
                    None,
                    finite_or_none(values[metric]),
                    int(values["rows"]),
                    scorer.scored_version,
                )
                for metric in wanted
            ]
    return rows


def ranking_metric_rows(
    scorer: Scorer, ranked: np.ndarray, relevant: M.Relevance, ks: Sequence[int], task_name: str = RETRIEVAL
) -> list[MetricRow]:
    """Recall, NDCG and HitRate at each K and MRR over the whole list, for one scorer's lists."""
    values = M.ranking_metrics(ranked, relevant, ks)
    users = int(values["users"])
    rows = [
        MetricRow(
            scorer.kind,
            task_name,
            metric,
            int(k),
            finite_or_none(values[f"{metric}_at_{k}"]),
            users,
            scorer.scored_version,
        )
        for k in ks
        for metric in RANKING_METRICS
    ]
    rows.append(
        MetricRow(scorer.kind, task_name, "mrr", None, finite_or_none(values["mrr"]), users, scorer.scored_version)
    )
    return rows


def finite_or_none(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# the table


def write_metrics(
    spark: SparkSession,
    cfg: Config,
    rows: Sequence[MetricRow],
    *,
    run_id: str,
    model_version: str,
    ds: dt.date,
    evaluated_at: dt.datetime,
) -> Commit:
    """Replace the rows of (ds, model_version) with ``rows`` in one transaction: a rerun of the
    same evaluation leaves one copy, other versions evaluated on ds keep theirs."""
    records = [
        {
            "run_id": run_id,
            "model_version": model_version,
            "model_kind": r.model_kind,
            "scored_version": r.scored_version,
            "task": r.task,
            "metric": r.metric,
            "k": r.k,
            "value": r.value,
            "n_examples": r.n_examples,
            "evaluated_at": evaluated_at,
            "ds": ds,
        }
        for r in rows
    ]
    df = spark.createDataFrame(records, MODEL_METRICS.schema)
    predicate = f"ds = '{ds.isoformat()}' AND model_version = '{_quoted(model_version)}'"
    return delta_io.replace_where(
        spark, df, MODEL_METRICS, MODEL_METRICS.path(cfg.storage), predicate, cfg.storage.conflict_retries
    )


def read_metrics(
    spark: SparkSession,
    cfg: Config,
    ds_from: dt.date,
    ds_to: dt.date,
    model_version: Optional[str] = None,
) -> pd.DataFrame:
    """model_metrics rows of ds in [ds_from, ds_to] (of one evaluated version if given), as pandas."""
    path = MODEL_METRICS.path(cfg.storage)
    if delta_io.table_version(spark, path) is None:
        return pd.DataFrame(columns=MODEL_METRICS.column_names)
    df = spark.read.format("delta").load(path).where(F.col("ds").between(F.lit(ds_from), F.lit(ds_to)))
    if model_version is not None:
        df = df.where(F.col("model_version") == model_version)
    return df.toPandas()


def metric_values(rows: Iterable[MetricRow], kind: str) -> Mapping[tuple[str, str, Optional[int]], Optional[float]]:
    """(task, metric, k) -> value of one model_kind's rows."""
    return {r.key: r.value for r in rows if r.model_kind == kind}


def _quoted(text: str) -> str:
    return text.replace("'", "''")
