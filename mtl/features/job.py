"""The build_features job: ``events`` -> feature tables and training examples for one ds (or a range).

Each table's ds partition is replaced in one Delta transaction, so a rerun replaces it and a
failed run leaves the previous partition readable. Tables are written in dependency order
(features, then examples, then their statistics).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Optional

from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mtl import delta_io
from mtl.candidates import pool
from mtl.candidates.pool import CandidateFrames
from mtl.config import Config
from mtl.errors import InputError
from mtl.features import examples as ex
from mtl.features import transforms as tf
from mtl.features.assemble import feature_defaults, model_inputs
from mtl.run_record import RunRecorder
from mtl.schema import dense_columns
from mtl.tables import (
    CANDIDATES,
    EVENTS,
    FEATURE_STATS,
    ITEM_FEATURES,
    ITEM_NEIGHBOURS,
    TRAINING_EXAMPLES,
    USER_CATEGORY_FEATURES,
    USER_FEATURES,
    USER_ITEM_FEATURES,
)

log = logging.getLogger(__name__)

CATEGORICAL_STATS = ("user_hash", "item_hash", "category_hash")


@dataclass
class FeatureResult:
    ds: dt.date
    rows: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    exposure_source: str = "none"  # impressions, sampled, or none (no events on ds yet)
    observed_until: Optional[dt.date] = None


@dataclass(frozen=True)
class FeatureFrames:
    users: DataFrame
    items: DataFrame
    user_categories: DataFrame
    user_items: DataFrame
    examples: DataFrame
    defaults: dict[str, float]
    exposure_source: str
    candidates: CandidateFrames


def compute(events: DataFrame, ds: dt.date, observed_until: Optional[dt.date], cfg: Config) -> FeatureFrames:
    """Every output of one ds as DataFrames (nothing written yet). Shared intermediates are
    persisted; the caller clears the cache once the outputs are written."""
    fc = cfg.features
    keep = StorageLevel.MEMORY_AND_DISK
    grain = tf.daily_grain(tf.history(events, ds, fc.history_days)).persist(keep)
    pairs = tf.user_item_pairs(grain, fc.history_days).persist(keep)
    priors = tf.priors(grain, pairs)
    log.info("ds %s: priors %s", ds, priors)
    user_cats = tf.user_category_features(grain, priors, fc).persist(keep)
    items = tf.item_features(pairs, ds, priors, fc).persist(keep)
    users = tf.user_features(grain, pairs, user_cats, priors, fc).persist(keep)

    future = tf.label_window(events, ds).persist(keep)
    day = future.where(F.col("days_ahead") == 0)
    if day.limit(1).count() == 0:
        source = "none"
        exposures = None
    elif ex.day_has_impressions(day):
        source = "impressions"
        exposures = ex.exposure_rows(day, with_impressions=True)
    else:
        source = "sampled"
        positives = ex.exposure_rows(day, with_impressions=False)
        negatives = ex.sampled_negatives(positives, day, ex.sampling_table(items, fc), ds, fc)
        exposures = positives.unionByName(negatives)
    rows = ex.repurchase_rows(pairs, user_cats, future, ds, observed_until, fc)
    candidates = pool.compute(events, ds, cfg)
    no_repurchase_labels = [F.lit(None).cast("int").alias(c) for c in ex.LABEL_HORIZON_COLUMNS.values()]
    if exposures is not None:
        rows = exposures.select("*", F.lit("exposure").alias("row_kind"), *no_repurchase_labels).unionByName(rows)
        if cfg.candidates.negatives_per_positive > 0:
            labelled = pool.training_rows(candidates.candidates, day, ds, cfg.candidates.negatives_per_positive)
            labelled = labelled.select("*", F.lit("candidate").alias("row_kind"), *no_repurchase_labels)
            rows = labelled.unionByName(rows, allowMissingColumns=True)
    user_items = tf.user_item_features(pairs)
    defaults = feature_defaults(priors, fc.history_days)
    passthrough = ("is_sampled_negative", "click", "purchase", *ex.LABEL_HORIZON_COLUMNS.values())
    examples = model_inputs(rows, users, items, user_cats, user_items, defaults, passthrough)
    return FeatureFrames(users, items, user_cats, user_items, examples, defaults, source, candidates)


def feature_stats(examples: DataFrame, defaults: dict[str, float]) -> list[dict]:
    """One row per dense and id column: what the model standardises with, and the value
    that fills a missing feature."""
    aggs = [F.count(F.lit(1)).alias("count")]
    for c in dense_columns():
        logged = F.log1p(F.greatest(F.col(c), F.lit(0.0)))
        aggs += [
            F.mean(c).alias(f"{c}__mean"),
            F.stddev_pop(c).alias(f"{c}__stddev"),
            F.min(c).alias(f"{c}__min"),
            F.max(c).alias(f"{c}__max"),
            F.mean(logged).alias(f"{c}__log_mean"),
            F.stddev_pop(logged).alias(f"{c}__log_stddev"),
        ]
    aggs += [F.approx_count_distinct(c).alias(f"{c}__approx_distinct") for c in CATEGORICAL_STATS]
    row = examples.agg(*aggs).first().asDict()
    out = []
    for c in dense_columns():
        out.append(
            {"column": c, "kind": "dense", "count": row["count"], "approx_distinct": None, "default_value": defaults[c]}
            | {k: row[f"{c}__{k}"] for k in ("mean", "stddev", "min", "max", "log_mean", "log_stddev")}
        )
    for c in CATEGORICAL_STATS:
        out.append(
            {
                "column": c,
                "kind": "categorical",
                "count": row["count"],
                "approx_distinct": row[f"{c}__approx_distinct"],
                "default_value": None,
            }
        )
    return out


def build_features(spark: SparkSession, cfg: Config, ds: dt.date) -> FeatureResult:
    events_path = EVENTS.path(cfg.storage)
    if not DeltaTable.isDeltaTable(spark, events_path):
        raise InputError(f"no events table at {events_path}: run ingest first")
    result = FeatureResult(ds=ds)
    with RunRecorder(spark, cfg, "build_features", ds) as run:
        events_version = delta_io.table_version(spark, events_path)
        run.tables_read = {EVENTS.name: events_version}
        # Pin the snapshot: every read of this run sees the same events.
        events = spark.read.format("delta").option("versionAsOf", events_version).load(events_path)
        # The last event date present: label windows reaching past it are not observed yet.
        result.observed_until = events.agg(F.max("event_date")).first()[0]
        if result.observed_until is None:
            raise InputError(f"the events table at {events_path} is empty: run ingest first")
        frames = compute(events, ds, result.observed_until, cfg)
        result.exposure_source = frames.exposure_source
        try:
            for spec, df in (
                (USER_FEATURES, frames.users),
                (ITEM_FEATURES, frames.items),
                (USER_CATEGORY_FEATURES, frames.user_categories),
                (USER_ITEM_FEATURES, frames.user_items),
                (TRAINING_EXAMPLES, frames.examples),
                (ITEM_NEIGHBOURS, frames.candidates.neighbours),
                (CANDIDATES, frames.candidates.candidates),
            ):
                log.info("ds %s: writing %s", ds, spec.name)
                _record(
                    result,
                    spec,
                    delta_io.replace_partition(
                        spark,
                        df.withColumn("ds", F.lit(ds)),
                        spec,
                        spec.path(cfg.storage),
                        ds,
                        cfg.storage.conflict_retries,
                    ),
                )
        finally:
            spark.catalog.clearCache()
        # Statistics of what was written, read back from the table rather than recomputed.
        examples = spark.read.format("delta").load(TRAINING_EXAMPLES.path(cfg.storage)).where(F.col("ds") == F.lit(ds))
        stats = spark.createDataFrame(
            [dict(r, ds=ds) for r in feature_stats(examples, frames.defaults)], schema=FEATURE_STATS.schema
        )
        _record(
            result,
            FEATURE_STATS,
            delta_io.replace_partition(
                spark, stats, FEATURE_STATS, FEATURE_STATS.path(cfg.storage), ds, cfg.storage.conflict_retries
            ),
        )
        run.tables_written = dict(result.versions)
        run.output_rows = result.rows[TRAINING_EXAMPLES.name]
        run.details.update(
            rows=result.rows, exposure_source=result.exposure_source, observed_until=result.observed_until
        )
    return result


def _record(result: FeatureResult, spec, commit: delta_io.Commit) -> None:
    result.versions[spec.name] = commit.version
    result.rows[spec.name] = commit.rows_written


def summarize(results: list[FeatureResult]) -> str:
    lines = []
    for r in results:
        counts = ", ".join(f"{name} {n:,}" for name, n in r.rows.items())
        lines.append(f"ds {r.ds}: {counts} (exposures: {r.exposure_source}; events observed until {r.observed_until})")
    return "\n".join(lines)


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise InputError(f"--end {end} is before --start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def build_features_days(spark, cfg: Config, days: list[dt.date]) -> list[FeatureResult]:
    """``build_features`` for each day, in the order given."""
    results = []
    for ds in days:
        log.info("building features for ds %s (%d of %d)", ds, len(results) + 1, len(days))
        results.append(build_features(spark, cfg, ds))
    return results
