"""The train job on a small generated world: single process, resume, incremental, errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mtl import registry
from mtl.data.snapshot import snapshot_files
from mtl.errors import InputError
from mtl.export.compress import used_buckets
from mtl.models.artifacts import artifact_bucket_usage, load_model, merge_bucket_usage
from mtl.run_record import RunRecorder  # noqa: F401  (pipeline_runs rows are checked through helpers)
from mtl.tables import TRAINING_EXAMPLES
from mtl.train.job import plan_training, run_train, unknown_labels
from tests.support.tables import runs
from tests.support.worlds import START, build_world, world_config

D = START + dt.timedelta(days=8)  # trains on D-3..D-2, validates on D-1
FEATURE_DAYS = [D - dt.timedelta(days=k) for k in (3, 2, 1)]


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_world")
    return build_world(spark, world_config(root), FEATURE_DAYS)


def _reached_by(files: list[str], model) -> dict[str, np.ndarray]:
    """The buckets the id columns of ``files`` reach, by the model's own hashing (torch)."""
    names = [f.name for f in model.features.id_fields]
    table = pq.read_table([f.removeprefix("file:") for f in files], columns=names)
    columns = {n: table.column(n).combine_chunks().to_numpy(zero_copy_only=False) for n in names}
    batch = {n: torch.from_numpy(np.stack(values)) for n, values in columns.items()}
    return {vocab: rows[rows > 0].numpy() for vocab, rows in used_buckets(model, [batch]).items()}


def _same_usage(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for vocab in expected:
        assert actual[vocab].tolist() == sorted(expected[vocab].tolist()), vocab


def test_full_training_registers_a_version_and_learns(spark, world):
    result = run_train(spark, world, D, "full")
    assert result.train_days == ((D - dt.timedelta(days=3)).isoformat(), (D - dt.timedelta(days=2)).isoformat())
    assert result.val_day == (D - dt.timedelta(days=1)).isoformat()
    assert result.final_metrics["click_auc"] > 0.6  # the generator's click signal is learnable
    assert registry.champion_version(world) is None  # training never publishes
    artifact = registry.load_version(world, version=result.model_version)
    assert artifact.metadata["tables_read"]["training_examples"] == result.table_version
    assert artifact.metadata["unobserved_labels_masked"] is True
    assert not Path(plan_training(spark, world, D, "full").checkpoint_dir).exists()  # removed once registered
    model = load_model(artifact)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The artifact records exactly the embedding rows the training files reach (export prunes the rest).
    usage = artifact_bucket_usage(artifact)
    _same_usage(usage, _reached_by(plan_training(spark, world, D, "full").train_files, model))
    assert 0 < len(usage["user"]) < model.features.tables["user"].num_embeddings
    record = runs(spark, world).where("job = 'train'").orderBy("started_at").collect()[-1]
    assert record.status == "succeeded" and record.model_version == result.model_version
    assert record.tables_read["training_examples"] == result.table_version


def test_repurchase_outcomes_reaching_ds_are_unknown_to_training(spark, world):
    """Every day read (D-3..D-1) is within 7 days of D, so no repurchase label may be learned:
    the plan reads both as unknown in every training and validation file."""
    plan = plan_training(spark, world, D, "full")
    files = plan.train_files + plan.val_files
    assert plan.unknown_labels == {f: ["repurchase_7d", "repurchase_30d"] for f in files}
    later = D + dt.timedelta(days=30)  # as of D + 30, every outcome of those days is observed
    snapshot = snapshot_files(spark, TRAINING_EXAMPLES.path(world.storage), FEATURE_DAYS[0], FEATURE_DAYS[-1])
    assert unknown_labels(later, snapshot) == {}
    week_later = unknown_labels(D + dt.timedelta(days=8), snapshot)  # 7-day windows observed, 30-day not
    assert week_later == {f: ["repurchase_30d"] for f in snapshot.files}


def test_incremental_needs_a_published_model_then_warm_starts(spark, world):
    with pytest.raises(InputError, match="published model"):
        run_train(spark, world, D, "incremental")
    full = run_train(spark, world, D, "full")
    registry.set_champion(world, full.model_version)
    before = registry.load_version(world, version=full.model_version).state_dict
    inc = run_train(spark, world, D, "incremental")
    after = registry.load_version(world, version=inc.model_version).state_dict
    assert inc.train_days == ((D - dt.timedelta(days=1)).isoformat(),) * 2
    assert registry.champion_version(world) == full.model_version  # still the published one
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "incremental training must change the weights"
    inc_meta = registry.load_version(world, version=inc.model_version).metadata
    assert inc_meta["warm_start_version"] == full.model_version
    # It reaches its own day's rows and starts from its parent's.
    full_artifact = registry.load_version(world, version=full.model_version)
    day = _reached_by(plan_training(spark, world, D, "incremental").train_files, load_model(full_artifact))
    inc_usage = artifact_bucket_usage(registry.load_version(world, version=inc.model_version))
    _same_usage(inc_usage, merge_bucket_usage(artifact_bucket_usage(full_artifact), day))


def test_missing_day_is_a_clear_error(spark, world):
    late = D + dt.timedelta(days=5)
    with pytest.raises(InputError, match="no rows for ds"):
        run_train(spark, world, late, "full")
