"""Shared fixtures: one real local SparkSession with Delta for the whole run, a config whose
warehouse is a fresh temporary folder for each test, and the session's cache of generated worlds.
Shared helpers live in tests/support/."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mtl.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
LOCAL_CONF = ROOT / "conf" / "local.yaml"

TEST_OVERRIDES = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.show_progress=false",
    "spark.log_level=ERROR",
    "spark.driver_memory=2g",
    # The tests' tables hold hundreds of rows: compiling generated code for each stage costs more
    # than it saves (about 30% of a build_features run here), so expressions are interpreted.
    "spark.extra.spark.sql.codegen.wholeStage='false'",
    "spark.extra.spark.sql.codegen.factoryMode='NO_CODEGEN'",
    # Every job commits a few Delta versions: one task per snapshot and no checksum file per commit
    # make each commit cheaper (together about 20% of a build_features run on the tests' tables).
    "spark.delta_snapshot_partitions=1",
    "spark.extra.spark.databricks.delta.writeChecksumFile.enabled='false'",
    # Adaptive execution runs each shuffle stage as a job of its own and plans again after it: on
    # these tables that doubles the jobs of a build_features day and costs about a fifth of its time.
    "spark.extra.spark.sql.adaptive.enabled='false'",
]


@pytest.fixture(scope="session", autouse=True)
def _world_cache(tmp_path_factory):
    """One folder per run where each flavour of generated world is built once (tests/support/worlds.py).
    Under pytest-xdist the workers share it: their temporary roots sit side by side in the run's
    folder, and a lock per flavour lets one worker build a world while the others wait for it."""
    from tests.support import worlds

    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "world_cache"
        shared.mkdir(exist_ok=True)
        worlds.set_cache_root(shared)
    else:
        worlds.set_cache_root(tmp_path_factory.mktemp("world_cache"))


@pytest.fixture(scope="session")
def spark():
    from mtl.spark import build_spark

    session = build_spark(load_config(LOCAL_CONF, TEST_OVERRIDES).spark)
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Config from conf/local.yaml with the warehouse under tmp_path, plus extra overrides."""

    def make(*overrides: str) -> Config:
        return load_config(LOCAL_CONF, TEST_OVERRIDES + [f"storage.warehouse={tmp_path / 'warehouse'}", *overrides])

    return make


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], str]:
    """Write text to tmp_path/name and return its path."""

    def write(name: str, text: str) -> str:
        path = tmp_path / "input" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A real Spark standalone cluster for the module: a master and two one-core workers on
    127.0.0.1 (scripts/standalone_cluster.py), stopped afterwards with every process it started."""
    from tests.support.cluster import StandaloneCluster

    running = StandaloneCluster.start(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="1500m")
    yield running
    running.stop()
    assert running.processes() == [], "the cluster left processes behind"


@pytest.fixture(scope="module")
def full_shipment(tmp_path_factory):
    """`make package`'s full environment (torch, horovod, ...; built once, cached in ~/.cache),
    unpacked once for both workers as a node image holds it: 3.4 GB unpacked by each executor of
    each job would write tens of gigabytes over a chain."""
    from tests.support.cluster import package

    return package("full", tmp_path_factory.mktemp("dist_full")).unpack_once(tmp_path_factory.mktemp("env_full"))


# The longest modules, longest first (about four fifths of the suite's time, measured with
# `make test PYTEST_ARGS=--durations=0`), start first: with parallel workers (make test runs two,
# each module on one worker) no long module then begins while the other worker sits idle.
LONGEST_MODULES = (
    "test_pipeline.py",
    "test_features_pit.py",
    "test_score.py",
    "test_evaluate.py",
    "test_cluster.py",
    "test_train_distributed.py",
    "test_monitor.py",
    "test_ingest_cli.py",
    "test_candidates.py",
    "test_trainer.py",
    "test_features_taobao_sample.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise
