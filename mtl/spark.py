"""The one Spark session builder every job uses."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys

from pyspark.sql import SparkSession

from mtl.config import SparkConfig

log = logging.getLogger(__name__)

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def delta_package() -> str:
    """Maven coordinate of the Delta jar matching the installed delta-spark (for --packages)."""
    return f"io.delta:delta-spark_2.13:{importlib.metadata.version('delta_spark')}"


def under_spark_submit() -> bool:
    """True when spark-submit launched this Python process (it hands over its JVM gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_spark(cfg: SparkConfig) -> SparkSession:
    """Session with Delta configured and UTC as the session time zone.

    Under spark-submit the master, memory and packages are spark-submit's business; otherwise
    (a laptop, tests) the local defaults from config apply and Spark fetches the Delta jars from
    Maven Central on first use (cached under ~/.ivy2.5.2 afterwards).
    """
    builder = SparkSession.builder.appName(cfg.app_name)
    settings = dict(DELTA_CONF)
    settings["spark.sql.session.timeZone"] = "UTC"
    settings["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions)
    # Progress bars redraw one line with carriage returns: on a terminal only, never into a log file.
    settings["spark.ui.showConsoleProgress"] = str(cfg.show_progress and sys.stderr.isatty()).lower()
    if cfg.delta_snapshot_partitions:
        settings["spark.databricks.delta.snapshotPartitions"] = str(cfg.delta_snapshot_partitions)
    settings.update(cfg.extra)

    if not under_spark_submit():
        if cfg.master:
            builder = builder.master(cfg.master)
        if cfg.driver_memory:
            settings["spark.driver.memory"] = cfg.driver_memory
        # Python workers (pandas UDFs) run in this interpreter's environment.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if not under_spark_submit():
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)

    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    log.info(
        "Spark %s, master %s%s",
        spark.version,
        spark.sparkContext.master,
        " (from spark-submit)" if under_spark_submit() else "",
    )
    return spark
