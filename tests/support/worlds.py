"""Small generated worlds taken through ingest and build_features, shared by the tests of the jobs
downstream (train, evaluate, score, the pipeline and the DAG).

Each flavour of world (its size, the data-shaping overrides and the feature days) is built once
per test run in a cache folder (shared by parallel workers) and copied into every module's own
root, so a module reads and writes its own warehouse (its own MLflow store, pipeline_runs,
checkpoints) while the generate-ingest-featurise work is done once. Delta tables keep relative file paths in their
logs, so a copied table is the same table.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

from mtl.config import Config, load_config
from mtl.features.job import build_features
from mtl.generate.job import run_generate
from mtl.ingest.job import run_ingest
from tests.conftest import LOCAL_CONF, ROOT, TEST_OVERRIDES

START = dt.date(2024, 3, 1)

TINY_MODEL = f"""\
extends: {ROOT / "conf" / "models" / "mmoe.yaml"}
embedding:
  dim: 8
  buckets: {{user: 4096, item: 4096, category: 256, row_kind: 8}}
architecture: {{experts: 2, expert_units: [16], tower_units: [8], dropout: 0.0}}
retrieval: {{dim: 8, tower_units: [16], frequency_buckets: 4096}}
trainer: {{epochs: 2, batch_size: 256, checkpoint_every_steps: 4, log_every_steps: 4, patience: 2}}
"""

# Config sections that shape the generated, ingested and featurised data (the cache key).
DATA_SECTIONS = ("generator.", "ingest.", "features.", "formats.")
_READY = "_WORLD_READY"
_cache_root: Optional[Path] = None


def set_cache_root(folder: Path) -> None:
    """Where this session keeps its built worlds (conftest sets it once per session)."""
    global _cache_root
    _cache_root = folder


def world_config(root: Path, *overrides: str, users: int = 300, items: int = 200, days: int = 12) -> Config:
    return load_config(LOCAL_CONF, world_overrides(root, *overrides, users=users, items=items, days=days))


def world_overrides(root: Path, *overrides: str, users: int = 300, items: int = 200, days: int = 12) -> list[str]:
    """The config overrides of the world under ``root`` (for jobs started as subprocesses too)."""
    model = root / "tiny_model.yaml"
    if not model.exists():
        root.mkdir(parents=True, exist_ok=True)
        model.write_text(TINY_MODEL)
    return TEST_OVERRIDES + [
        f"storage.warehouse={root / 'warehouse'}",
        f"generator.output={root / 'raw'}",
        "generator.output_format=canonical",
        f"generator.users={users}",
        f"generator.items={items}",
        "generator.categories=12",
        f"generator.days={days}",
        f"generator.start_date={START}",
        "generator.users_per_block=300",
        "generator.partitions=2",
        "ingest.format=canonical",
        f"ingest.input={root / 'raw' / 'events'}",
        f"model_config={model}",
        "training.window_days=3",
        "training.torch_threads=1",
        *overrides,
    ]


def build_world(spark, cfg: Config, feature_days: list[dt.date]) -> Config:
    """Generate, ingest and build features for ``feature_days`` into ``cfg``'s root: copied from
    this session's cache when a world of the same flavour was built before, built there first
    otherwise. Skipped when ``cfg``'s root already holds the world."""
    root = Path(cfg.storage.warehouse).parent
    if (root / "warehouse" / _READY).exists():
        return cfg
    if _cache_root is None:
        _build(spark, cfg, feature_days)
        return cfg
    cached = _cache_root / _flavour(cfg, root, feature_days)
    with _locked(cached.with_suffix(".lock")):
        if not (cached / "warehouse" / _READY).exists():
            shutil.rmtree(cached, ignore_errors=True)
            cached.mkdir(parents=True)
            _build(spark, _moved(cfg, root, cached), feature_days)
    for part in ("warehouse", "raw"):
        shutil.copytree(cached / part, root / part, dirs_exist_ok=True)
    return cfg


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` for the block: parallel test workers build a flavour once."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def copy_world(source: Path, target: Path) -> None:
    """A copy of the world built under ``source`` (warehouse, raw events, model YAML) under
    ``target``, so two runs of the same world write tables of their own."""
    for part in ("warehouse", "raw", "tiny_model.yaml"):
        path = source / part
        (shutil.copytree if path.is_dir() else shutil.copy)(path, target / part)


def _build(spark, cfg: Config, feature_days: list[dt.date]) -> None:
    run_generate(spark, cfg)
    run_ingest(spark, cfg)
    for ds in feature_days:
        build_features(spark, cfg, ds)
    (Path(cfg.storage.warehouse) / _READY).touch()


def _data_settings(cfg: Config, root: Path) -> dict:
    """The settings that shape the world's data, with ``root`` written as a placeholder."""
    flat = json.loads(json.dumps(cfg.to_dict(), default=str).replace(str(root), "<root>"))
    sections = {name.rstrip(".") for name in DATA_SECTIONS}
    return {key: flat[key] for key in sorted(sections)}


def _flavour(cfg: Config, root: Path, feature_days: list[dt.date]) -> str:
    key = {"data": _data_settings(cfg, root), "feature_days": [d.isoformat() for d in feature_days]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _moved(cfg: Config, root: Path, to: Path) -> Config:
    """``cfg`` with every path under ``root`` moved under ``to``."""
    import dataclasses

    def move(value):
        if isinstance(value, str) and value.startswith(str(root)):
            return str(to) + value[len(str(root)) :]
        return value

    return dataclasses.replace(
        cfg,
        storage=dataclasses.replace(cfg.storage, warehouse=move(cfg.storage.warehouse)),
        generator=dataclasses.replace(cfg.generator, output=move(cfg.generator.output)),
        ingest=dataclasses.replace(cfg.ingest, input=move(cfg.ingest.input)),
    )
