"""The generator job: a synthetic behaviour log with known ground truth, written by Spark block by
block (no user data passes through the driver), in the canonical or the Taobao format."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.broadcast import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mtl.config import Config, GeneratorConfig
from mtl.generate import simulate as S
from mtl.generate.world import block_count, block_users, build_world
from mtl.tables import resolve_path

log = logging.getLogger(__name__)

RAW_EVENT_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("category_id", T.StringType()),
        T.StructField("event_type", T.StringType()),
        T.StructField("event_ts", T.LongType()),
        T.StructField("quantity", T.IntegerType()),
        T.StructField("price", T.DoubleType()),
    ]
)
IMPRESSION_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("category_id", T.StringType()),
        T.StructField("impression_ts", T.LongType()),
        T.StructField("day", T.IntegerType()),
        T.StructField("position", T.IntegerType()),
        T.StructField("hour", T.IntegerType()),
        T.StructField("true_affinity", T.DoubleType()),
        T.StructField("true_popularity", T.DoubleType()),
        T.StructField("p_click", T.DoubleType()),
        T.StructField("clicked", T.BooleanType()),
        T.StructField("p_purchase", T.DoubleType()),
        T.StructField("purchased", T.BooleanType()),
    ]
)
REPURCHASE_SCHEMA = T.StructType(
    [
        T.StructField("level", T.StringType()),
        T.StructField("user_id", T.StringType()),
        T.StructField("category_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("day", T.IntegerType()),
        T.StructField("days_since_last_purchase", T.IntegerType()),
        T.StructField("p_repurchase", T.DoubleType()),
        T.StructField("consumable", T.BooleanType()),
    ]
)
USER_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("activity_level", T.StringType()),
        T.StructField("true_activity", T.DoubleType()),
        T.StructField("true_price_sensitivity", T.DoubleType()),
    ]
)
TAOBAO_BEHAVIOUR = {"click": "pv", "fav": "fav", "cart": "cart", "purchase": "buy"}


@dataclass
class GenerateResult:
    output: str
    format: str
    events: int
    users: int
    items: int
    seconds: float


def output_paths(root: str) -> dict[str, str]:
    return {
        name: f"{root}/{name}"
        for name in ("events", "items", "users", "truth/impressions", "truth/repurchase", "truth/categories")
    }


def _block_tables(shared_world: Broadcast, g: GeneratorConfig, kind: str):
    """The pandas function that turns block numbers into one kind of table."""

    def run(batches):
        world = shared_world.value
        for pdf in batches:
            for block in pdf["id"].tolist():
                if kind == "users":
                    yield S.users_table(g, block_users(g, block))
                    continue
                b = S.simulate_block(world, g, block)
                if kind == "events":
                    yield S.raw_events(world, b)
                elif kind == "impressions":
                    yield S.impressions_truth(world, b)
                else:
                    yield S.repurchase_truth(world, g, b)

    return run


def generate_tables(spark: SparkSession, cfg: Config) -> dict[str, DataFrame]:
    """The generated tables as DataFrames (lazy): raw events, side tables and ground truth."""
    g = cfg.generator
    world = build_world(g, cfg.format_config(g.output_format).business_time_zone)
    n_blocks = block_count(g)
    blocks = spark.range(0, n_blocks, 1, numPartitions=min(g.partitions, n_blocks))
    shared = spark.sparkContext.broadcast(world)

    def per_block(kind: str, schema: T.StructType) -> DataFrame:
        return blocks.mapInPandas(_block_tables(shared, g, kind), schema)

    items = spark.createDataFrame(
        pd.DataFrame(
            {
                "item_id": (np.arange(g.items) + 1).astype(str),
                "category_id": (world.item_cat + 1).astype(str),
                "price": world.item_price,
                "release_day": world.item_release.astype(np.int32),
            }
        )
    ).withColumn("first_available_date", F.date_add(F.lit(g.start_date).cast("date"), F.col("release_day")))
    categories = spark.createDataFrame(
        pd.DataFrame(
            {
                "category_id": (np.arange(g.categories) + 1).astype(str),
                "consumable": world.cat_consumable,
                "cycle_days": world.cat_cycle.astype(np.int32),
                "cycle_jitter_days": world.cat_jitter.astype(np.int32),
            }
        )
    )
    return {
        "events": per_block("events", RAW_EVENT_SCHEMA),
        "items": items.drop("release_day"),
        "users": per_block("users", USER_SCHEMA),
        "truth/impressions": per_block("impressions", IMPRESSION_SCHEMA),
        "truth/repurchase": per_block("repurchase", REPURCHASE_SCHEMA),
        "truth/categories": categories,
    }


def format_log(events: DataFrame, output_format: str) -> DataFrame:
    """The raw log's columns as the chosen format has them."""
    if output_format == "taobao_user_behavior":
        behaviour = F.create_map(*[F.lit(x) for kv in TAOBAO_BEHAVIOUR.items() for x in kv])
        return events.filter(F.col("event_type") != "impression").select(
            F.col("user_id").alias("user"),
            F.col("item_id").alias("item"),
            F.col("category_id").alias("category"),
            behaviour[F.col("event_type")].alias("behavior"),
            F.col("event_ts").alias("ts"),
        )
    if output_format == "transactions":
        # A retailer's order history: purchases only, no category, no impressions.
        return events.filter(F.col("event_type") == "purchase").select(
            F.col("user_id").alias("customer_id"),
            F.col("item_id").alias("product_id"),
            F.date_format(F.timestamp_seconds("event_ts"), "yyyy-MM-dd HH:mm:ss").alias("invoice_ts"),
            "quantity",
            F.col("price").alias("unit_price"),
        )
    return events.select(
        "user_id",
        "item_id",
        "category_id",
        "event_type",
        F.date_format(F.timestamp_seconds("event_ts"), "yyyy-MM-dd'T'HH:mm:ss'Z'").alias("event_ts"),
        "quantity",
        "price",
    )


def run_generate(spark: SparkSession, cfg: Config) -> GenerateResult:
    g = cfg.generator
    started = time.perf_counter()
    root = resolve_path(g.output)
    paths = output_paths(root)
    tables = generate_tables(spark, cfg)
    log.info(
        "generating %d users x %d days (%d blocks) into %s as %s",
        g.users,
        g.days,
        block_count(g),
        root,
        g.output_format,
    )

    # Spark's UTC session time zone makes the canonical timestamps exact.
    events = tables["events"].persist(StorageLevel.DISK_ONLY)
    try:
        log_df = format_log(events, g.output_format)
        header = g.output_format != "taobao_user_behavior"
        log_df.write.mode("overwrite").option("header", str(header).lower()).csv(paths["events"])
        _strip_job_ids(spark, paths["events"])
        n_events = log_df.count()
        log.info("wrote %d log rows to %s", n_events, paths["events"])
        for name in ("items", "users", "truth/impressions", "truth/repurchase", "truth/categories"):
            tables[name].write.mode("overwrite").parquet(paths[name])
            log.info("wrote %s", paths[name])
    finally:
        events.unpersist()

    seconds = time.perf_counter() - started
    manifest = {"generator": asdict(g), "events": n_events, "seconds": round(seconds, 1), "tables": paths}
    _write_text(spark, f"{root}/MANIFEST.json", json.dumps(manifest, indent=2, sort_keys=True))
    return GenerateResult(root, g.output_format, n_events, g.users, g.items, seconds)


def _hadoop_fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hadoop_path, jvm


def _strip_job_ids(spark: SparkSession, folder: str) -> None:
    """part-00003-<job uuid>-c000.csv -> part-00003.csv, so the same seed gives the same files."""
    fs, root, jvm = _hadoop_fs(spark, folder)
    for status in fs.listStatus(root):
        name = status.getPath().getName()
        if name.startswith("part-"):
            index, _, rest = name.partition("-")[2].partition("-")
            suffix = rest.rsplit(".", 1)[-1] if "." in rest else ""
            fs.rename(status.getPath(), jvm.org.apache.hadoop.fs.Path(root, f"part-{index}.{suffix}"))


def _write_text(spark: SparkSession, path: str, text: str) -> None:
    fs, hadoop_path, _ = _hadoop_fs(spark, path)
    stream = fs.create(hadoop_path, True)
    stream.write(bytearray(text.encode()))
    stream.close()
