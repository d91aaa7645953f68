"""The evaluate job: a registered model version against its baselines on a held-out ds.

    mtl-evaluate --ds D [--model VERSION]        (default: the latest registered version)

ds must lie after every day the version was trained or validated on. The job

1. scores the training_examples rows of ds with the version, the current champion (when it is
   another version) and every configured baseline (mtl.evaluate.baselines, the single-task
   twins of mtl.evaluate.twins), and ranks the whole catalogue for the users who clicked on ds;
2. computes every metric with the same code (mtl.evaluate.model_metrics over mtl.metric_functions) and
   replaces the (ds, version) rows of ``model_metrics``;
3. writes the HTML report next to the artifact (the version's MLflow run, under
   ``evaluation/ds=D/``), logs the version's metrics to that run, and records the run, with the
   report's address and the gate's preview, in ``pipeline_runs``.

It publishes nothing: the quality gate (``mtl-publish``) reads model_metrics and decides.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from mtl import delta_io, registry
from mtl.config import Config, parse_typed
from mtl.errors import InputError
from mtl.evaluate import baselines as B
from mtl.evaluate import report
from mtl.evaluate.data import (
    RankingTask,
    Split,
    label_count_columns,
    label_counts,
    ranking_task,
    read_split,
    training_window,
)
from mtl.evaluate.gate import GateDecision, check_evaluation_config, decide
from mtl.evaluate.model_metrics import (
    BINARY_TASKS,
    MODEL_KINDS,
    MetricRow,
    Scorer,
    binary_metric_rows,
    metric_values,
    ranking_metric_rows,
    read_metrics,
    score_column,
    write_metrics,
)
from mtl.evaluate.predict import ModelOutputs, ScoreTile, collect_model_scores, inner_product, model_vectors, top_k
from mtl.evaluate.recommendation_lists import list_rows
from mtl.evaluate.training_window import RETRIEVAL_TWIN, TrainingWindow
from mtl.models.artifacts import load_model
from mtl.models.model_config import ModelConfig
from mtl.recommend.lists import recommendable
from mtl.registry import Artifact
from mtl.run_record import RunRecorder
from mtl.schema import LABELS, REPURCHASE_HORIZONS_DAYS
from mtl.tables import EVENTS, MODEL_METRICS

log = logging.getLogger(__name__)

# Columns of the examples that reach the predictions frame besides the scores.
REPURCHASE_HORIZONS = {f"repurchase_{n}d": n for n in REPURCHASE_HORIZONS_DAYS}
KEEP = ("row_kind", "user_id", "item_id", "category_id", "is_sampled_negative", *LABELS)
TABULAR = ("logistic_regression", "gbt")
BASELINE_TILES = ("popularity", "category_popularity", "als")
REPORT_FILE = "report.html"


@dataclass
class EvaluationResult:
    ds: dt.date
    model_version: str
    run_id: str
    champion_version: Optional[str]
    rows: list[MetricRow]
    decision: GateDecision
    report_uri: str
    notes: list[str] = field(default_factory=list)


def run_evaluate(
    spark: SparkSession, cfg: Config, ds: dt.date, model_version: Optional[str] = None
) -> EvaluationResult:
    check_evaluation_config(cfg)
    with RunRecorder(spark, cfg, "evaluate", ds) as run:
        version = model_version or registry.latest_version(cfg)
        if version is None:
            raise InputError(f"registered model {cfg.tracking.registered_model!r} has no version: run train first")
        candidate = registry.load_version(cfg, version=version)
        run.model_version = candidate.version
        window = TrainingWindow.from_metadata(candidate.metadata, version)
        if ds <= window.last_day_used:
            raise InputError(
                f"ds {ds} is not held out from version {version}: it was trained and validated on "
                f"ds {window.train_from}..{window.last_day_used}; evaluate a later day"
            )
        split = read_split(spark, cfg, ds)
        run.tables_read = dict(split.tables_read)
        popularity = B.Popularity.of(split)
        notes = _notes(split) + _overlapping_labels(spark, cfg, candidate, window, ds)
        champion_version = registry.champion_version(cfg)
        champion = _comparable_champion(cfg, champion_version, version, notes)
        for label, (neg, pos) in split.label_counts.items():
            if not neg + pos:
                notes.append(f"{label}: no labelled rows on {ds} (its window is not observed yet): not evaluated")
        with _timed("single-task twins"):
            twins = _twins(spark, cfg, candidate, window, split.label_counts, notes)
        with _timed("binary predictions"):
            frame, scorers = _binary_predictions(spark, cfg, split, popularity, candidate, champion, window, twins)
        rows = binary_metric_rows(frame, scorers)
        with _timed("ranking task"):
            task = ranking_task(split, cfg)
        rankings: dict[str, np.ndarray] = {}
        if len(task.users):
            events_version = delta_io.table_version(spark, EVENTS.path(cfg.storage))
            run.tables_read[EVENTS.name] = events_version
            rankings, ranking_scorers, tiles = _rankings(
                spark,
                cfg,
                split,
                popularity,
                task,
                events_version,
                {"multi_task": candidate, "champion": champion, "single_task": twins.get(RETRIEVAL_TWIN)},
            )
            for scorer in ranking_scorers:
                rows += ranking_metric_rows(scorer, rankings[scorer.kind], task.relevant, cfg.evaluation.ks)
            with _timed("recommendation lists"):
                listable = {
                    "multi_task": candidate if _can_recommend(candidate) else None,
                    "champion": champion if champion is not None and _can_recommend(champion) else None,
                }
                if listable["multi_task"] is None:
                    notes.append(
                        f"recommendations: version {version} lacks the retrieval head or the click and purchase "
                        "heads a list needs: not evaluated"
                    )
                else:
                    rows += list_rows(spark, cfg, ds, task, listable, tiles)[0]
        else:
            notes.append(f"retrieval: nobody clicked on {ds}: not evaluated")

        commit = write_metrics(
            spark, cfg, rows, run_id=run.run_id, model_version=version, ds=ds, evaluated_at=run.started_at
        )
        run.tables_written = {MODEL_METRICS.name: commit.version}
        run.input_rows, run.output_rows = len(frame), len(rows)
        decision = decide(
            metric_values(rows, "multi_task"),
            metric_values(rows, "champion") if champion else None,
            cfg.gate,
            champion_version,
            {kind: metric_values(rows, kind) for kind in {r.model_kind for r in rows} - set(MODEL_KINDS)},
        )
        history = read_metrics(spark, cfg, ds - dt.timedelta(days=cfg.evaluation.history_days), ds)
        page = report.render(
            report.ReportData(
                title=f"{cfg.tracking.registered_model} version {version} on {ds}",
                facts=_facts(version, ds, window, champion_version, split, task, run.run_id, cfg),
                rows=rows,
                frame=frame,
                scorers=scorers,
                rankings=rankings,
                relevant=task.relevant,
                ks=cfg.evaluation.ks,
                history=history,
                decision=decision,
                calibration_bins=cfg.evaluation.calibration_bins,
                notes=notes,
            )
        )
        report_uri = _log_to_model_run(cfg, version, ds, rows, page)
        run.details.update(
            report=report_uri,
            gate_preview=decision.as_dict(),
            champion_version=champion_version,
            ranking_users=len(task.users),
            catalogue_items=len(task.items),
            notes=notes,
        )
        log.info("evaluated version %s on %s: %d metric rows; report at %s", version, ds, len(rows), report_uri)
    return EvaluationResult(ds, version, run.run_id, champion_version, rows, decision, report_uri, notes)


@contextlib.contextmanager
def _timed(stage: str):
    started = time.perf_counter()
    yield
    log.info("%s: %.1f s", stage, time.perf_counter() - started)


def _notes(split: Split) -> list[str]:
    if not split.sampled_negatives:
        return []
    return [
        "The log has no impressions: exposure negatives are sampled by popularity, so click (and purchase) "
        "AUC measures telling interactions from sampled items, not clicks from skipped impressions."
    ]


def _overlapping_labels(spark, cfg: Config, candidate: Artifact, window: TrainingWindow, ds: dt.date) -> list[str]:
    """Warnings for repurchase labels the version learned that were not observable on ds: a
    training row of day t labelled from [t, t + N) with t + N > ds saw outcomes on or after ds,
    the very window its evaluation scores, which makes its repurchase metrics optimistic. Rows
    built before those days were observed carry null labels instead and do not count. Versions
    trained since the train job reads such labels as unknown learned none of them."""
    notes = []
    if candidate.metadata.get("unobserved_labels_masked"):
        return notes
    for label in _tasks(candidate):
        horizon = REPURCHASE_HORIZONS.get(label)
        if horizon is None:
            continue
        first = max(ds - dt.timedelta(days=horizon - 1), window.train_from)
        if first > window.last_day_used:
            continue
        rows = training_window(spark, cfg, first, window.last_day_used, window.table_version)
        leaked = rows.where(F.col(label).isNotNull()).count()
        if leaked:
            notes.append(
                f"{label}: version {candidate.version} learned {leaked:,} labels of ds {first}.."
                f"{window.last_day_used} whose {horizon}-day windows reach ds {ds} or later, so its {label} "
                "metrics here are optimistic: those outcomes were not observable when it was trained."
            )
    return notes


def _comparable_champion(
    cfg: Config, champion_version: Optional[str], version: str, notes: list[str]
) -> Optional[Artifact]:
    """The published version, to score next to the candidate; None when there is none, it is the
    candidate, or this code cannot rebuild it (e.g. trained on another feature schema)."""
    if champion_version is None or champion_version == version:
        return None
    artifact = registry.load_version(cfg, version=champion_version)
    try:
        load_model(artifact)
    except InputError as exc:
        notes.append(
            f"The champion (version {champion_version}) cannot be scored by this code, so the gate has "
            f"nothing to compare with: {exc}"
        )
        return None
    return artifact


def _tasks(artifact: Artifact) -> tuple[str, ...]:
    return parse_typed(ModelConfig, artifact.model_config).task_names


def _has_retrieval(artifact: Artifact) -> bool:
    return parse_typed(ModelConfig, artifact.model_config).retrieval.enabled


def _can_recommend(artifact: Artifact) -> bool:
    """Whether the version has the heads a recommendation list needs."""
    try:
        recommendable(artifact)
    except InputError:
        return False
    return True


def _twins(
    spark,
    cfg: Config,
    candidate: Artifact,
    window: TrainingWindow,
    labelled: dict[str, tuple[int, int]],
    notes: list[str],
) -> dict[str, Artifact]:
    if "single_task" not in cfg.evaluation.baselines:
        return {}
    if window.mode != "full":
        notes.append(
            f"Single-task twins skipped: version {candidate.version} was trained {window.mode}ly "
            "(warm-started), which a twin trained from scratch cannot mirror."
        )
        return {}
    # Twins are trained by the training stack (Petastorm, Horovod): loaded only when twins are asked for.
    from mtl.evaluate.twins import train_twins

    labels = [label for label in _tasks(candidate) if all(labelled[label])]
    return train_twins(spark, cfg, candidate, window, labels)


def _binary_predictions(
    spark,
    cfg: Config,
    split: Split,
    popularity: B.Popularity,
    candidate: Artifact,
    champion: Optional[Artifact],
    window: TrainingWindow,
    twins: dict[str, Artifact],
):
    """The predictions frame of ds (see metrics_table) and the scorers it holds."""
    wanted = set(cfg.evaluation.baselines)
    # Labels as doubles, null kept: NaN in pandas, where the metrics drop it.
    df = split.examples.withColumns({label: F.col(label).cast("double") for label in LABELS})
    scorers = [Scorer("multi_task", True, candidate.version)]
    models = [ModelOutputs(candidate, {t: score_column("multi_task", t) for t in _tasks(candidate)})]
    if champion is not None:
        scorers.append(Scorer("champion", True, champion.version))
        models.append(ModelOutputs(champion, {t: score_column("champion", t) for t in _tasks(champion)}))
    if "popularity" in wanted:
        df = B.add_popularity(df, split, cfg.features.smoothing_strength)
        scorers.append(Scorer("popularity", False))
    if "category_popularity" in wanted:
        df = B.add_category_popularity(df, popularity)
        scorers.append(Scorer("category_popularity", False))
    if "recency_frequency" in wanted:
        df = B.add_recency_frequency(df)
        scorers.append(Scorer("recency_frequency", False))
    tabular = [kind for kind in TABULAR if kind in wanted]
    if tabular:
        train = training_window(spark, cfg, window.train_from, window.train_to, window.table_version, as_of=window.ds)
        trainable = label_counts(train.agg(*label_count_columns()).first())
        with _timed(f"fitting {', '.join(tabular)}"):
            fitted = [
                B.fit_tabular(train, kind, task, cfg)
                for kind in tabular
                for task in BINARY_TASKS
                if task.name == task.label and all(trainable[task.label]) and all(split.label_counts[task.label])
            ]
        df = B.add_tabular(df, fitted)
        scorers += [Scorer(kind, True) for kind in tabular]
    single = {label: artifact for label, artifact in twins.items() if label != RETRIEVAL_TWIN}
    if single:
        models += [ModelOutputs(a, {label: score_column("single_task", label)}) for label, a in single.items()]
        scorers.append(Scorer("single_task", True))
    baseline_columns = [
        score_column(s.kind, label) for s in scorers for label in LABELS if score_column(s.kind, label) in df.columns
    ]
    frame = collect_model_scores(df, models, KEEP + tuple(baseline_columns), cfg.evaluation.score_batch_size)
    return frame, scorers


def _rankings(
    spark,
    cfg: Config,
    split: Split,
    popularity: B.Popularity,
    task: RankingTask,
    events_version: int,
    neural: dict[str, Optional[Artifact]],
) -> tuple[dict[str, np.ndarray], list[Scorer], dict[str, ScoreTile]]:
    """Top-max(K) lists over the catalogue of every retrieval scorer, and the baselines' score
    tiles (their recommendation lists start from them)."""
    wanted = set(cfg.evaluation.baselines)
    k = max(cfg.evaluation.ks)
    tiles: dict[str, ScoreTile] = {}
    scorers = []
    models = {kind: a for kind, a in neural.items() if a is not None and _has_retrieval(a)}
    if models and len(task.items):
        started = time.perf_counter()
        batch = cfg.evaluation.score_batch_size
        user_keys, user_vecs = model_vectors(task.user_rows, models, "user", "user_id", batch)
        item_keys, item_vecs = model_vectors(task.item_rows, models, "item", "item_id", batch)
        user_order = _positions(user_keys, task.users)
        item_order = _positions(item_keys, task.items)
        for kind, artifact in models.items():
            tiles[kind] = inner_product(user_vecs[kind][user_order], item_vecs[kind][item_order])
            scorers.append(Scorer(kind, False, artifact.version))
        log.info("retrieval vectors of %s: %.1f s", sorted(models), time.perf_counter() - started)
    if "popularity" in wanted:
        tiles["popularity"] = B.popularity_tile(popularity, task)
        scorers.append(Scorer("popularity", False))
    if "category_popularity" in wanted:
        tiles["category_popularity"] = B.category_popularity_tile(split, popularity, task)
        scorers.append(Scorer("category_popularity", False))
    if "als" in wanted:
        with _timed("ALS"):
            tiles["als"] = B.als_tile(spark, cfg, split.ds, events_version, task)
        scorers.append(Scorer("als", False))
    rankings = {}
    for kind, tile in tiles.items():
        started = time.perf_counter()
        rankings[kind] = top_k(tile, len(task.users), len(task.items), k, task.exclude)
        log.info(
            "ranked %d items for %d users with %s in %.1f s",
            len(task.items),
            len(task.users),
            kind,
            time.perf_counter() - started,
        )
    baselines = {kind: tile for kind, tile in tiles.items() if kind in BASELINE_TILES}
    return rankings, scorers, baselines


def _positions(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return pd.Index(keys).get_indexer(wanted)


def _facts(
    version: str,
    ds: dt.date,
    window: TrainingWindow,
    champion: Optional[str],
    split: Split,
    task: RankingTask,
    run_id: str,
    cfg: Config,
) -> dict[str, str]:
    return {
        "model version": version,
        "held-out ds": ds.isoformat(),
        "trained on": f"{window.train_from}..{window.train_to} ({window.mode})",
        "validated on": str(window.val_ds or "-"),
        "champion": f"version {champion}" if champion else "none published",
        "rows scored": f"{split.rows:,}",
        "exposure negatives": "sampled (no impressions)" if split.sampled_negatives else "impressions",
        "item recommendation": (
            f"{len(task.users):,} of {task.clicking_users:,} users with a click ranked over {len(task.items):,} items"
            f"{'; seen items excluded' if cfg.evaluation.exclude_seen else ''}; "
            f"{task.relevant_outside_catalogue:,} clicked items outside the catalogue"
        ),
        "evaluate run": run_id,
    }


def _log_to_model_run(cfg: Config, version: str, ds: dt.date, rows: list[MetricRow], page: str) -> str:
    """Log the version's own metrics to the MLflow run that registered it (step: ds as YYYYMMDD)
    and the report next to its artifact; returns the report's URI."""
    uri = registry.tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.get_model_version(cfg.tracking.registered_model, version).run_id
    now_ms, step = int(time.time() * 1000), int(ds.strftime("%Y%m%d"))
    metrics = [
        Metric(f"eval_{r.task}_{r.metric}" + (f"_at_{r.k}" if r.k else ""), r.value, now_ms, step)
        for r in rows
        if r.model_kind == "multi_task" and r.value is not None
    ]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    folder = f"evaluation/ds={ds.isoformat()}"
    with tempfile.TemporaryDirectory(prefix="mtl-report-") as tmp:
        (Path(tmp) / REPORT_FILE).write_text(page)
        client.log_artifacts(run_id, tmp, folder)
    return f"{client.get_run(run_id).info.artifact_uri}/{folder}/{REPORT_FILE}"


def summarize(result: EvaluationResult) -> str:
    headline = [(t.name, "auc", None) for t in BINARY_TASKS] + [
        ("retrieval", "recall", 20),
        ("recommendations", "recall", 20),
    ]
    by_kind: dict[str, dict] = {}
    for r in result.rows:
        by_kind.setdefault(r.model_kind, {})[r.key] = r.value
    present = [h for h in headline if any(h in values for values in by_kind.values())]
    header = "model".ljust(22) + "".join(f"{t + ' ' + m + ('@' + str(k) if k else ''):>20}" for t, m, k in present)
    lines = [f"version {result.model_version} on {result.ds} (evaluate run {result.run_id})", header]
    for kind in report._ordered(by_kind):
        cells = "".join(f"{_cell(by_kind[kind].get(h)):>20}" for h in present)
        lines.append(kind.ljust(22) + cells)
    verdict = "would publish" if result.decision.passed else "would refuse: " + "; ".join(result.decision.failures)
    lines += [f"quality gate: {verdict}", f"report: {result.report_uri}", *result.notes]
    return "\n".join(lines)


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"
