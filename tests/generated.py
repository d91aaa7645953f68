"""A small generated world taken through ingest and build_features, shared by the tests of the
jobs downstream (train, evaluate, score). Built once per session and directory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

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
    """Generate, ingest and build features for ``feature_days`` (skipped when already there)."""
    done = Path(cfg.storage.warehouse) / "_WORLD_READY"
    if not done.exists():
        run_generate(spark, cfg)
        run_ingest(spark, cfg)
        for ds in feature_days:
            build_features(spark, cfg, ds)
        done.touch()
    return cfg
