"""The monitor's measurements of one ds, group by group, from the tables the chain wrote.

Each function returns ``Measurement``s and never fails for want of history: a metric without a
reference (the first days of a pipeline) has a null value and a note saying why.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl import delta_io
from mtl.config import Config
from mtl.evaluate.gate import worse_by
from mtl.monitor.drift import Window, categorical_counts, numeric_drift, psi, reference_edges
from mtl.monitor.metrics import Measurement
from mtl.recommend.rank import catalogue
from mtl.schema import TABLE_CANDIDATE_SOURCES, dense_columns
from mtl.score.pseudonym import pseudonym_key, pseudonymised
from mtl.tables import (
    CANDIDATES,
    DAILY_RECOMMENDATIONS,
    EVENTS,
    ITEM_FEATURES,
    MODEL_METRICS,
    REPURCHASE_PREDICTIONS,
    USER_CATEGORY_FEATURES,
    USER_FEATURES,
    USER_ITEM_FEATURES,
    TableSpec,
)

log = logging.getLogger(__name__)

DRIFT_FEATURE_TABLES = (USER_FEATURES, ITEM_FEATURES, USER_CATEGORY_FEATURES, USER_ITEM_FEATURES)
PREDICTION_COLUMNS = {
    DAILY_RECOMMENDATIONS: ("p_click", "p_purchase"),
    REPURCHASE_PREDICTIONS: tuple(c for c in REPURCHASE_PREDICTIONS.column_names if c.startswith("p_repurchase_")),
}
TWO_TOWER_ONLY = "two_tower_only"


def read_table(spark: SparkSession, cfg: Config, spec: TableSpec) -> tuple[Optional[int], Optional[DataFrame]]:
    """(version, the table at that version), or (None, None) when it does not exist yet."""
    return delta_io.read_pinned(spark, spec.path(cfg.storage))


def _drift(
    metric: str, spec: TableSpec, table: DataFrame, columns: Sequence[str], window: Window, bins: int
) -> list[Measurement]:
    reference = table.where(window.reference())
    current = table.where(window.today())
    ref = reference_edges(reference, columns, bins)
    days = ref.days
    if not days:
        note = f"no {spec.name} partitions in the reference window {window.start}..{window.end}"
        return [Measurement(metric, f"{spec.name}.{c}", None, note=note) for c in columns]
    out = []
    for drift in numeric_drift(reference, current, columns, ref):
        subject = f"{spec.name}.{drift.column}"
        if drift.current_rows == 0:
            out.append(Measurement(metric, subject, None, note=f"{spec.name} has no rows for ds {window.ds}"))
        elif drift.current_nulls == drift.current_rows:
            # e.g. a task the model does not have: its column is null on every row
            out.append(Measurement(metric, subject, None, note=f"{drift.column} has no values on ds {window.ds}"))
        else:
            note = f"reference: {len(days)} day(s), {drift.reference_rows:,} rows; ds: {drift.current_rows:,} rows"
            out.append(Measurement(metric, subject, drift.psi, None, days[0], days[-1], note))
    return out


def input_drift(spark: SparkSession, cfg: Config, ds: dt.date, tables_read: dict[str, int]) -> list[Measurement]:
    """PSI of every dense feature column of the feature tables (ds against the reference
    window's partitions), and the event mix and volume of ds - 1 against the days before it."""
    mon = cfg.monitoring
    window = Window.before(ds, mon.reference_days)
    out: list[Measurement] = []
    dense = set(dense_columns())
    for spec in DRIFT_FEATURE_TABLES:
        version, table = read_table(spark, cfg, spec)
        columns = [c for c in spec.column_names if c in dense]
        if table is None:
            out += [Measurement("feature_psi", f"{spec.name}.{c}", None, note=f"no {spec.name} table") for c in columns]
            continue
        tables_read[spec.name] = version
        out += _drift("feature_psi", spec, table, columns, window, mon.psi_bins)

    # The events of ds - 1, the newest day the features of ds see, against the days before it.
    window = Window.before(ds - dt.timedelta(days=1), mon.reference_days)
    version, events = read_table(spark, cfg, EVENTS)
    if events is None:
        return out + [
            Measurement(m, EVENTS.name, None, note="no events table") for m in ("event_mix_psi", "event_volume_ratio")
        ]
    tables_read[EVENTS.name] = version
    recent = events.where(window.reference("event_date") | window.today("event_date"))
    ref, cur = categorical_counts(recent, "event_type", window.reference("event_date"))
    days = recent.where(window.reference("event_date")).select("event_date").distinct().count()
    span = dict(reference_start=window.start, reference_end=window.end)
    if not days:
        note = f"no events in the reference window {window.start}..{window.end}"
        return out + [Measurement(m, EVENTS.name, None, note=note) for m in ("event_mix_psi", "event_volume_ratio")]
    per_day = sum(ref.values()) / days
    note = f"reference: {days} day(s), {sum(ref.values()):,} events; ds: {sum(cur.values()):,} events"
    return out + [
        Measurement("event_mix_psi", EVENTS.name, psi(ref, cur), None, note=note, **span),
        Measurement("event_volume_ratio", EVENTS.name, sum(cur.values()) / per_day, per_day, note=note, **span),
    ]


def prediction_drift(spark: SparkSession, cfg: Config, ds: dt.date, tables_read: dict[str, int]) -> list[Measurement]:
    """PSI of each probability column of both output tables, ds against the reference window."""
    window = Window.before(ds, cfg.monitoring.reference_days)
    out: list[Measurement] = []
    for spec, columns in PREDICTION_COLUMNS.items():
        version, table = read_table(spark, cfg, spec)
        if table is None:
            note = f"no {spec.name} table"
            out += [Measurement("prediction_psi", f"{spec.name}.{c}", None, note=note) for c in columns]
            continue
        tables_read[spec.name] = version
        out += _drift("prediction_psi", spec, table, columns, window, cfg.monitoring.psi_bins)
    return out


def output_health(spark: SparkSession, cfg: Config, ds: dt.date, tables_read: dict[str, int]) -> list[Measurement]:
    """Users scored against users active, catalogue coverage, new items and candidate sources
    of ds's daily_recommendations."""
    names = ("users_scored_share", "catalogue_coverage", "new_item_share")
    version, recs = read_table(spark, cfg, DAILY_RECOMMENDATIONS)
    if recs is None:
        return [Measurement(m, DAILY_RECOMMENDATIONS.name, None, note="no daily_recommendations table") for m in names]
    tables_read[DAILY_RECOMMENDATIONS.name] = version
    recs = recs.where(F.col("ds") == F.lit(ds)).select("user_id", "item_id").cache()
    try:
        facts = recs.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct("user_id").alias("users"),
            F.countDistinct("item_id").alias("items"),
        ).first()
        if not facts["rows"]:
            note = f"daily_recommendations has no rows for ds {ds}"
            return [Measurement(m, DAILY_RECOMMENDATIONS.name, None, note=note) for m in names]
        features = {}
        for spec in (USER_FEATURES, ITEM_FEATURES, CANDIDATES):
            v, table = read_table(spark, cfg, spec)
            features[spec.name] = None if table is None else table.where(F.col("ds") == F.lit(ds)).drop("ds")
            if v is not None:
                tables_read[spec.name] = v
        return [
            *_scored_and_coverage(spark, cfg, ds, facts, features),
            _new_items(cfg, ds, recs, facts["rows"], features[ITEM_FEATURES.name]),
            *_source_shares(cfg, recs, facts["rows"], features[CANDIDATES.name]),
        ]
    finally:
        recs.unpersist()


def _scored_and_coverage(spark: SparkSession, cfg: Config, ds: dt.date, facts, features) -> list[Measurement]:
    users, items = features[USER_FEATURES.name], features[ITEM_FEATURES.name]
    out = []
    if users is None:
        out.append(Measurement("users_scored_share", DAILY_RECOMMENDATIONS.name, None, note="no user_features table"))
    else:
        active = users.where(F.col("u_days_since_last_event") <= cfg.scoring.active_days).count()
        note = f"{facts['users']:,} users with a list of {active:,} active in the {cfg.scoring.active_days} days"
        share = facts["users"] / active if active else None
        out.append(Measurement("users_scored_share", DAILY_RECOMMENDATIONS.name, share, float(active), note=note))
    if items is None:
        out.append(Measurement("catalogue_coverage", DAILY_RECOMMENDATIONS.name, None, note="no item_features table"))
    else:
        size = catalogue(spark, items, cfg.scoring.items, ds).count()
        note = f"{facts['items']:,} distinct items recommended of {size:,} in the catalogue"
        coverage = facts["items"] / size if size else None
        out.append(Measurement("catalogue_coverage", DAILY_RECOMMENDATIONS.name, coverage, float(size), note=note))
    return out


def _new_items(cfg: Config, ds: dt.date, recs: DataFrame, rows: int, items: Optional[DataFrame]) -> Measurement:
    days = cfg.monitoring.new_item_days
    if items is None:
        return Measurement("new_item_share", DAILY_RECOMMENDATIONS.name, None, note="no item_features table")
    since = F.lit(dt.datetime.combine(ds - dt.timedelta(days=days), dt.time()))
    first_seen = items.select("item_id", "first_seen_ts")
    new = (
        recs.join(first_seen, "item_id", "left")
        .where(F.col("first_seen_ts").isNull() | (F.col("first_seen_ts") >= since))
        .count()
    )
    note = f"{new:,} of {rows:,} rows: items first seen in the {days} days before ds, or without features"
    return Measurement("new_item_share", DAILY_RECOMMENDATIONS.name, new / rows, note=note)


def _source_shares(cfg: Config, recs: DataFrame, rows: int, candidates: Optional[DataFrame]) -> list[Measurement]:
    """Per candidate source, the share of the list's rows it proposed (a row may have several);
    two_tower_only: rows only the model's own top-M proposed."""
    subjects = (*TABLE_CANDIDATE_SOURCES, TWO_TOWER_ONLY)
    if candidates is None:
        return [Measurement("source_share", s, None, note="no candidates table") for s in subjects]
    if cfg.scoring.pseudonymize:  # the list holds pseudonyms: match them with the same key
        candidates = candidates.withColumn("user_id", pseudonymised(F.col("user_id"), pseudonym_key(cfg.scoring)))
    joined = recs.join(candidates.select("user_id", "item_id", "sources"), ["user_id", "item_id"], "left")
    counts = joined.agg(
        *[F.sum(F.array_contains("sources", s).cast("int")).alias(s) for s in TABLE_CANDIDATE_SOURCES],
        F.sum(F.col("sources").isNull().cast("int")).alias(TWO_TOWER_ONLY),
    ).first()
    return [
        Measurement("source_share", s, (counts[s] or 0) / rows, note=f"{counts[s] or 0:,} of {rows:,} rows")
        for s in subjects
    ]


def _metric_subject(task: str, metric: str, k: Optional[int]) -> str:
    return f"{task}.{metric}" + (f"@{k}" if k is not None else "")


def model_health(spark: SparkSession, cfg: Config, ds: dt.date, tables_read: dict[str, int]) -> list[Measurement]:
    """Each of today's evaluation metrics of the model (model_kind multi_task, the latest
    evaluate run of each day) against its mean over the evaluated days before ds."""
    version, table = read_table(spark, cfg, MODEL_METRICS)
    if table is None:
        return []
    tables_read[MODEL_METRICS.name] = version
    window = Window.before(ds, cfg.monitoring.model_history_days)
    rows = table.where((window.reference() | window.today()) & (F.col("model_kind") == "multi_task"))
    latest = rows.groupBy("ds").agg(F.max_by("run_id", "evaluated_at").alias("run_id"))
    values = rows.join(latest, ["ds", "run_id"]).select("ds", "task", "metric", "k", "value").collect()
    today = {(r["task"], r["metric"], r["k"]): r["value"] for r in values if r["ds"] == ds}
    history: dict[tuple, list[float]] = {}
    days = sorted({r["ds"] for r in values if r["ds"] != ds})
    for r in values:
        if r["ds"] != ds and r["value"] is not None:
            history.setdefault((r["task"], r["metric"], r["k"]), []).append(r["value"])
    out = []
    for key, value in sorted(today.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        past = history.get(key)
        subject = _metric_subject(*key)
        if value is None or not past:
            why = "no value today" if value is None else f"no evaluation in {window.start}..{window.end}"
            out.append(Measurement("metric_drop", subject, None, note=why))
            continue
        trailing = sum(past) / len(past)
        note = f"today {value:.4f}, trailing mean {trailing:.4f} over {len(past)} day(s)"
        drop = worse_by(key[1], value, trailing)
        out.append(Measurement("metric_drop", subject, drop, trailing, days[0], days[-1], note))
    return out
