"""Shared fixtures: one real local SparkSession with Delta for the whole run, and a config
whose warehouse is a fresh temporary folder for each test."""

from __future__ import annotations

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
]


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
