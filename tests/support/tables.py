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


def event_tuples(
    spark,
    cfg,
    columns=(
        "user_id",
        "item_id",
        "category_id",
        "event_type",
        "event_ts",
        "event_date",
        "quantity",
        "price",
        "source",
    ),
):
    return sorted(tuple(r) for r in events(spark, cfg).select(*columns).collect())


def write_events(spark: SparkSession, cfg: Config, rows, source: str = "test") -> None:
    """Append hand-made events to the events table. Each row is
    (user, item, category, event_type, "YYYY-MM-DD HH:MM", price, quantity); times are UTC."""
    import datetime as dt
    import hashlib

    from mtl import delta_io

    records = []
    for user, item, category, kind, ts, price, quantity in rows:
        when = dt.datetime.fromisoformat(ts)
        key = f"{user}|{item}|{kind}|{ts}|{price}|{quantity}"
        records.append(
            {
                "event_id": hashlib.md5(key.encode()).hexdigest(),
                "user_id": user,
                "item_id": item,
                "category_id": category,
                "event_type": kind,
                "event_ts": when,
                "event_date": when.date(),
                "quantity": quantity,
                "price": price,
                "source": source,
            }
        )
    delta_io.append(spark, spark.createDataFrame(records, EVENTS.schema), EVENTS, EVENTS.path(cfg.storage))
