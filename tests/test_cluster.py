"""The cluster path on a real Spark standalone cluster started by the test: a master and two
workers in JVMs of their own (one core each), jobs submitted with spark-submit, the executors'
Python from the packed environment of `make package`, mtl shipped with --py-files."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.conftest import LOCAL_CONF, ROOT
from tests.support.cluster import StandaloneCluster, package, spark_submit, submit_chain

JOBS = ROOT / "jobs"
# Settings the tests' local sessions use too (tests/conftest.py), as --set for a submitted job.
JOB_SETTINGS = ["spark.shuffle_partitions=2", "spark.show_progress=false", "spark.log_level=ERROR"]


@pytest.fixture(scope="module")
def cluster(standalone_cluster):
    return standalone_cluster


@pytest.fixture(scope="module")
def spark_env(tmp_path_factory):
    """The packed environment of the Spark-side jobs (numpy, pandas, pyarrow, pyyaml; no torch)."""
    return package("spark", tmp_path_factory.mktemp("dist"))


def _job_args(warehouse: Path, *args: str) -> list[str]:
    out = ["--conf", str(LOCAL_CONF), "--set", f"storage.warehouse={warehouse}"]
    for setting in JOB_SETTINGS:
        out += ["--set", setting]
    return out + list(args)


def test_both_workers_register_and_stop_leaves_nothing(tmp_path):
    one = StandaloneCluster.start(tmp_path / "c", workers=2, cores=1, memory="512m")
    info = one.status()
    assert info["aliveworkers"] == 2
    assert sorted(w["cores"] for w in info["workers"]) == [1, 1]
    assert {w["host"] for w in info["workers"]} == {"127.0.0.1"}
    assert len(one.processes()) >= 3
    port = int(one.master_url.rsplit(":", 1)[1])
    one.stop()
    assert one.processes() == []
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the master's port any more
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not (tmp_path / "c" / "cluster.json").exists()


def test_ingest_writes_delta_through_spark_submit_with_the_packed_environment(cluster, spark_env, tmp_path, spark):
    raw = tmp_path / "raw.csv"
    raw.write_text("1,100,10,pv,1511600000\n1,101,10,buy,1511600100\n2,100,10,pv,1511700000\n2,100,10,xx,1511700001\n")
    warehouse = tmp_path / "wh"
    job = spark_submit(
        cluster,
        spark_env,
        JOBS / "ingest.py",
        *_job_args(warehouse, "--input", str(raw), "--set", "ingest.format=taobao_user_behavior"),
        "--set",
        "ingest.max_quarantine_share=0.5",
    )
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-4000:]
    assert f"master {cluster.master_url} (from spark-submit)" in out
    # The executors imported the job's modules from the unpacked archive, not from this machine's .venv.
    assert "executors' Python has mtl, numpy, pandas, pyarrow" in out
    assert "environment/bin/python" in out
    assert "accepted                3" in out and "quarantined             1" in out

    events = spark.read.format("delta").load(str(warehouse / "events"))
    assert sorted((r.user_id, r.item_id, r.event_type) for r in events.collect()) == [
        ("1", "100", "view"),
        ("1", "101", "purchase"),
        ("2", "100", "view"),
    ]
    assert spark.read.format("delta").load(str(warehouse / "events_quarantine")).count() == 1
    # The cluster ran it: an application finished on the master.
    assert any(app["name"] for app in cluster.status()["completedapps"])


def test_a_missing_executor_module_is_named(cluster, spark_env, tmp_path):
    """Scoring needs torch on the executors; the Spark-side environment has none. The job says
    so before it reads anything, naming the module and the interpreter."""
    job = spark_submit(cluster, spark_env, JOBS / "score.py", *_job_args(tmp_path / "wh", "--ds", "2017-11-27"))
    out = job.stdout + job.stderr
    assert job.returncode == 1, out[-4000:]
    assert "lacks modules this job needs" in out
    assert "torch (ModuleNotFoundError: No module named 'torch')" in out
    assert "environment/bin/python" in out
    assert "make package" in out
    assert "Traceback" not in out and "Py4JJavaError" not in out
    assert not (tmp_path / "wh" / "daily_recommendations").exists()


@pytest.mark.slow
def test_an_executor_python_that_does_not_exist_is_named(cluster, spark_env, tmp_path):
    job = spark_submit(
        cluster,
        spark_env,
        JOBS / "ingest.py",
        *_job_args(tmp_path / "wh", "--input", str(tmp_path / "none.csv")),
        conf={"spark.pyspark.python": "./no-such-env/bin/python"},
    )
    out = job.stdout + job.stderr
    assert job.returncode == 1, out[-4000:]
    assert "could not start Python on the executors of spark://127.0.0.1" in out
    assert 'Cannot run program "./no-such-env/bin/python"' in out


@pytest.mark.slow
def test_dynamic_allocation_adds_executors_under_a_wide_stage_and_releases_them(cluster, spark_env, tmp_path):
    report = tmp_path / "executors.json"
    job = spark_submit(
        cluster,
        spark_env,
        ROOT / "tests" / "support" / "dynamic_allocation_app.py",
        str(LOCAL_CONF),
        str(report),
        "spark.dynamic_allocation.enabled=true",
        "spark.dynamic_allocation.min_executors=0",
        "spark.dynamic_allocation.max_executors=2",
        "spark.dynamic_allocation.executor_idle_timeout_s=3",
        "spark.dynamic_allocation.shuffle_tracking_timeout_s=3",
        "spark.check_executor_modules=false",
    )
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
    seen = json.loads(report.read_text())
    assert seen["before"] == 0  # min_executors 0: nothing held before there is work
    assert seen["during"] == 2  # both workers' cores while 8 tasks wait
    assert seen["after_idle"] == 0, seen  # released once idle, shuffle data and all


def test_a_module_missing_in_executor_code_is_found_in_sparks_error(spark):
    """The fallback when the check was skipped: the module is read out of Spark's real error."""
    from pyspark.sql import functions as F

    from mtl.spark import executor_failure_reason, missing_executor_module

    @F.udf("int")
    def needs_a_module(x):
        import mtl_module_nobody_installed  # noqa: F401

        return x

    with pytest.raises(Exception) as failed:
        spark.range(2).select(needs_a_module("id")).collect()
    assert missing_executor_module(failed.value) == "mtl_module_nobody_installed"
    assert executor_failure_reason(failed.value) == "ModuleNotFoundError: No module named 'mtl_module_nobody_installed'"
    assert missing_executor_module(ModuleNotFoundError("No module named 'x'")) is None  # the driver's own


def _partition_rows(spark, cfg, spec, ds):
    from pyspark.sql import functions as F

    from tests.support.tables import read_table

    table = read_table(spark, cfg, spec).where(F.col("ds") == F.lit(ds)).drop("ds")
    exact = [f.name for f in table.schema.fields if f.dataType.typeName() != "double"]
    rows = [r.asDict() for r in table.collect()]
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in exact)), exact


@pytest.mark.slow
def test_the_daily_chain_by_spark_submit_on_the_cluster_equals_a_local_run(
    cluster, full_shipment, spark, tmp_path_factory
):
    """ingest .. monitor for one ds, each step its own spark-submit against the two workers, train
    with one Horovod rank per executor; the same world and config run by mtl-pipeline on local[2]."""
    import datetime as dt

    from mtl import registry
    from mtl.cli.pipeline import run_day
    from mtl.config import load_config
    from mtl.pipeline.steps import STEP_NAMES
    from mtl.tables import DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS
    from tests.support.worlds import START, build_world, copy_world, world_overrides

    ds = START + dt.timedelta(days=8)
    settings = (
        "pipeline.full_retrain_weekday=null",
        "gate.metrics=[{task: click, metric: auc, floor: 0.5}]",
        "evaluation.baselines=[popularity]",
        "training.launcher=spark",
        "training.num_proc=2",
    )
    local_root, cluster_root = tmp_path_factory.mktemp("chain_local"), tmp_path_factory.mktemp("chain_cluster")
    feature_days = [ds - dt.timedelta(days=k) for k in (3, 2, 1)]
    local = build_world(spark, load_config(LOCAL_CONF, world_overrides(local_root, *settings)), feature_days)
    copy_world(local_root, cluster_root)
    run_day(spark, local, ds)

    overrides = world_overrides(cluster_root, *settings)
    steps = submit_chain(cluster, full_shipment, LOCAL_CONF, overrides, ds.isoformat())
    assert [s.name for s in steps] == list(STEP_NAMES), f"{steps[-1].name} failed:\n{steps[-1].output[-4000:]}"
    train = next(s for s in steps if s.name == "train")
    assert "horovod.spark.run: 2 workers on this job's executors" in train.output
    on_cluster = load_config(LOCAL_CONF, overrides)
    assert registry.champion_version(on_cluster) == registry.champion_version(local) == "1"

    for spec in (DAILY_RECOMMENDATIONS, REPURCHASE_PREDICTIONS):
        (a, exact), (b, _) = _partition_rows(spark, local, spec, ds), _partition_rows(spark, on_cluster, spec, ds)
        assert a and len(a) == len(b), spec.name
        assert [[r[k] for k in exact] for r in a] == [[r[k] for k in exact] for r in b], spec.name
        for ra, rb in zip(a, b):
            for k in set(ra) - set(exact):
                assert (ra[k] is None) == (rb[k] is None), (spec.name, k)
                if ra[k] is not None:
                    assert rb[k] == pytest.approx(ra[k], abs=1e-4), (spec.name, k)
