"""Small helpers shared by the tests."""

from __future__ import annotations

from pyspark.sql import SparkSession

from mtl.config import Config
from mtl.tables import EVENTS, EVENTS_QUARANTINE, PIPELINE_RUNS


def read_table(spark: SparkSession, cfg: Config, spec):
    return spark.read.format("delta").load(spec.path(cfg.storage))


def events(spark, cfg):
    return read_table(spark, cfg, EVENTS)


def quarantine(spark, cfg):
    return read_table(spark, cfg, EVENTS_QUARANTINE)


def runs(spark, cfg):
    return read_table(spark, cfg, PIPELINE_RUNS)


def event_tuples(spark, cfg, columns=("user_id", "item_id", "category_id", "event_type", "event_ts",
                                       "event_date", "quantity", "price", "source")):
    return sorted(tuple(r) for r in events(spark, cfg).select(*columns).collect())
