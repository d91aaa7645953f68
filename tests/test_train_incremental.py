"""Incremental training on drifting generator data: the daily update must not make the model
worse on the next, held-out day.

The generated world drifts (``generator.popularity_drift``: every item's popularity swings, and
``generator.new_item_share`` of the items are released during the window). A full model for ds D
(trains on D-3..D-2, validates on D-1) is published; the next day's incremental run (ds H = D+1)
warm-starts from it and trains one epoch on H-1 = D. Both are then scored on H, which neither
has seen, with the trainer's own validation code (``evaluate`` + ``validation_metrics``).

Measured margins (incremental minus champion on H, this world: 1500 users, 600 items; generator
seeds 7 / 8 / 9, the test uses 7): click AUC +0.014 / +0.017 / +0.016, purchase AUC +0.131 /
+0.096 / +0.051. A bootstrap over H's rows puts the standard error of the paired difference at
0.002-0.003 (click, about 1100 positives) and 0.012-0.019 (purchase, 127-181 positives), so the
tolerances below are about two standard errors: a smaller decline would not be a measurable
one. With 300 users a day has only 13-30 purchases and purchase AUC is noise (the champion
scores 0.49-0.60 and the margins were -0.008 to -0.017 while click gained +0.009 to +0.032),
hence the larger world. Training is deterministic on CPU (fixed seeds, fixed batch order), so on
one machine the margins are the same on every run.

What this does not show: that the gain comes from the drift. With the drift off
(popularity_drift=0, new_item_share=0, seed 7) the update still gained click +0.012 and purchase
+0.062: the tiny champion trains only 2 epochs (the test model's trainer.epochs), so most of the
gain is more training on fresher data. The test checks the issue's "at least as good as before
the update" on drifting data.
"""

from __future__ import annotations

import datetime as dt

import pytest
import torch

from mtl import registry
from mtl.data.loader import ExampleBatches
from mtl.data.snapshot import snapshot_files
from mtl.models.artifacts import load_model
from mtl.tables import TRAINING_EXAMPLES
from mtl.train.job import run_train
from mtl.train.trainer import evaluate, validation_metrics
from tests.support.worlds import START, build_world, world_config

D = START + dt.timedelta(days=8)  # full: trains on D-3..D-2 (training.window_days=3), validates on D-1
H = D + dt.timedelta(days=1)  # held out; incremental for ds H trains on H-1 = D
FEATURE_DAYS = [D - dt.timedelta(days=k) for k in (3, 2, 1, 0)] + [H]

CLICK_TOLERANCE = 0.005
PURCHASE_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental_world")
    return build_world(spark, world_config(root, users=1500, items=600), FEATURE_DAYS)


def _metrics_on(spark, cfg, version: str, day: dt.date) -> dict[str, float]:
    """Validation metrics of a registered version on ``day``'s training_examples."""
    model = load_model(registry.load_version(cfg, version=version))
    snapshot = snapshot_files(spark, TRAINING_EXAMPLES.path(cfg.storage), day, day)
    with ExampleBatches(snapshot.files, 1024, shuffle=False) as batches:
        return validation_metrics(evaluate(model, batches.epoch(0)))


@pytest.mark.slow
def test_incremental_update_is_at_least_as_good_on_the_next_day(spark, world):
    assert world.generator.popularity_drift > 0 and world.generator.new_item_share > 0  # the data drifts

    full = run_train(spark, world, D, "full")
    registry.set_champion(world, full.model_version)
    inc = run_train(spark, world, H, "incremental")
    assert inc.train_days == (D.isoformat(), D.isoformat())
    assert registry.load_version(world, version=inc.model_version).metadata["warm_start_version"] == full.model_version

    before = registry.load_version(world, version=full.model_version).state_dict
    after = registry.load_version(world, version=inc.model_version).state_dict
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"features.tables.item.weight", "towers.click.out.weight", "towers.purchase.out.weight"} <= changed
    # The published model's feature statistics are kept: inputs mean the same to both.
    assert not changed & {"features.dense_mean", "features.dense_std"}

    champion = _metrics_on(spark, world, full.model_version, H)
    updated = _metrics_on(spark, world, inc.model_version, H)
    margins = {t: round(updated[f"{t}_auc"] - champion[f"{t}_auc"], 4) for t in ("click", "purchase")}
    print(f"AUC on held-out {H}: champion {champion}, incremental {updated}, margins {margins}")
    assert champion["click_auc"] > 0.6  # the comparison is between models that learned something
    assert updated["click_auc"] >= champion["click_auc"] - CLICK_TOLERANCE, margins
    assert updated["purchase_auc"] >= champion["purchase_auc"] - PURCHASE_TOLERANCE, margins
