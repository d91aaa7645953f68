"""The one Spark session builder every job uses."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import sys
from typing import Optional

from pyspark.sql import SparkSession

from mtl.config import SparkConfig
from mtl.config.sections import DynamicAllocationConfig
from mtl.errors import JobError

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


def dynamic_allocation_settings(cfg: DynamicAllocationConfig) -> dict[str, str]:
    """Spark settings for ``spark.dynamic_allocation``; none when it is off, so a cluster's own
    spark-submit defaults stay in force."""
    if not cfg.enabled:
        return {}
    settings = {
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.minExecutors": str(cfg.min_executors),
        "spark.dynamicAllocation.maxExecutors": str(cfg.max_executors),
        "spark.dynamicAllocation.executorIdleTimeout": f"{cfg.executor_idle_timeout_s}s",
    }
    if cfg.initial_executors is not None:
        settings["spark.dynamicAllocation.initialExecutors"] = str(cfg.initial_executors)
    if cfg.shuffle_tracking_timeout_s is not None:
        settings["spark.dynamicAllocation.shuffleTracking.timeout"] = f"{cfg.shuffle_tracking_timeout_s}s"
    return settings


def build_spark(cfg: SparkConfig, executor_needs: tuple[str, ...] = ()) -> SparkSession:
    """Session with Delta configured and UTC as the session time zone.

    Under spark-submit the master, memory and packages are spark-submit's business; otherwise
    (a laptop, tests) the local defaults from config apply and Spark fetches the Delta jars from
    Maven Central on first use (cached under ~/.ivy2.5.2 afterwards). On a cluster master the
    executors' Python is checked for ``spark.executor_modules`` and ``executor_needs`` (the
    modules this job's executor code imports) before the job reads anything.
    """
    builder = SparkSession.builder.appName(cfg.app_name)
    settings = dict(DELTA_CONF)
    settings["spark.sql.session.timeZone"] = "UTC"
    settings["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions)
    # Progress bars redraw one line with carriage returns: on a terminal only, never into a log file.
    settings["spark.ui.showConsoleProgress"] = str(cfg.show_progress and sys.stderr.isatty()).lower()
    if cfg.delta_snapshot_partitions:
        settings["spark.databricks.delta.snapshotPartitions"] = str(cfg.delta_snapshot_partitions)
    settings.update(dynamic_allocation_settings(cfg.dynamic_allocation))
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
    if cfg.check_executor_modules:
        check_executor_python(spark, [*cfg.executor_modules, *executor_needs])
    return spark


# How an executor's Python reports a package it could not import, inside a Py4J error's text.
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")

SHIP_HINT = (
    "ship them with the job: `make package` builds the packed environment for --archives and the mtl"
    " archive for --py-files (README.md, 'Running on a cluster')"
)


def missing_executor_module(exc: BaseException) -> Optional[str]:
    """The module an executor's Python could not import, when that is why a Spark action failed
    (the driver's own ImportErrors are not this)."""
    if isinstance(exc, ImportError):
        return None
    found = MISSING_MODULE.search(str(exc))
    return found.group(1) if found else None


def check_executor_python(spark: SparkSession, modules: list[str]) -> None:
    """Import ``modules`` in the executors' Python and raise a JobError naming each one that is
    missing, with the host and interpreter. A no-op on a local master, whose executors run in
    the driver's environment."""
    sc = spark.sparkContext
    if sc.master.startswith("local") or not modules:
        return
    wanted = sorted(set(modules))

    # Nested, so cloudpickle ships it by value: the probe must not need mtl on the executor.
    def probe(_rows):
        import importlib
        import socket
        import sys as executor_sys

        missing = []
        for name in wanted:
            try:
                importlib.import_module(name)
            except Exception as exc:  # an ImportError, or a package that fails while importing
                missing.append(f"{name} ({type(exc).__name__}: {exc})")
        yield socket.gethostname(), executor_sys.executable, tuple(missing)

    slots = max(sc.defaultParallelism, 2)
    try:
        reports = set(sc.parallelize(range(slots), slots).mapPartitions(probe).collect())
    except Exception as exc:
        raise JobError(
            f"could not start Python on the executors of {sc.master}: {executor_failure_reason(exc)}"
        ) from exc
    broken = sorted(r for r in reports if r[2])
    if broken:
        lines = [f"{host} ({python}): {', '.join(missing)}" for host, python, missing in broken]
        raise JobError(
            f"the executors' Python on {sc.master} lacks modules this job needs:\n  "
            + "\n  ".join(lines)
            + f"\n{SHIP_HINT}"
        )
    pythons = sorted({python for _, python, _ in reports})
    log.info(
        "executors' Python has %s (%s)",
        ", ".join(wanted),
        ", ".join(pythons[:3]) + (" ..." if len(pythons) > 3 else ""),
    )


def executor_failure_reason(exc: BaseException) -> str:
    """The line of an executor-side failure a user can act on, out of a Py4J error's stack trace:
    the missing module, the Python that could not start, or the last Python exception line."""
    text = str(exc)
    for pattern in (
        MISSING_MODULE.pattern,
        r"Cannot run program \"[^\"]+\"[^\n]*",
        r"ImportError: [^\n]+",
    ):
        found = re.search(pattern, text)
        if found:
            return found.group(0)
    python_errors = re.findall(r"^\w+(?:Error|Exception): [^\n]+", text, re.MULTILINE)
    return python_errors[-1] if python_errors else text.strip().splitlines()[0] if text.strip() else repr(exc)
