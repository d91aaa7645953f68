"""The ONNX export: the graphs equal the trained torch model on every output (a batch of one row,
unseen ids, every row kind), the signature describes them, the int8 variant keeps the gated
metrics, and pruning drops only rows no training id reaches."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from mtl.export.compress import pruned, quantise_int8, used_buckets
from mtl.export.graphs import GRAPHS, SIGNATURE_FILE, export_graphs
from mtl.export.job import read_export
from mtl.export.runtime import OnnxModel
from mtl.models.embedding import hash_to_bucket
from mtl.schema import DENSE_KEY
from tests.support.export_models import HeldOut, gated_metrics, trained_model, unseen_ids
from tests.support.model_data import TASKS, World, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARITY = 1e-5
# A variant whose metrics move more than this is not offered as a default (issue #18).
METRIC_TOLERANCE = 0.002


@pytest.fixture(scope="module")
def world() -> World:
    return World.create(seed=0)


def _exported(model, folder, variant="onnx") -> OnnxModel:
    export_graphs(model, folder, {"model_version": "test"})
    return OnnxModel(read_export(folder, variant))


def _max_diffs(model, onnx: OnnxModel, world: World, batch: dict) -> dict[str, float]:
    with torch.no_grad():
        expected = model.predict_proba(batch)
        actual = onnx.predict_proba(batch)
        diffs = {t: (expected[t] - actual[t]).abs().max().item() for t in model.tasks}
        users = {k: v for k, v in batch.items() if k in ("user_hash", "hist_item_hashes", DENSE_KEY)}
        diffs["user_vector"] = (model.user_vectors(users) - onnx.user_vectors(users)).abs().max().item()
        items = {k: v for k, v in batch.items() if k in ("item_hash", "category_hash", DENSE_KEY)}
        diffs["item_vector"] = (model.item_vectors(items) - onnx.item_vectors(items)).abs().max().item()
    return diffs


@pytest.mark.parametrize("name", ["mmoe", "esmm"])
def test_onnx_graphs_equal_the_trained_torch_model_on_every_output(name, world, tmp_path):
    model, _, _ = trained_model(world, name, rows=6_000, epochs=1)
    onnx = _exported(model, tmp_path / "onnx")
    held_out = HeldOut.sample(world, 500).batch
    assert set(held_out["row_kind_code"].tolist()) == {1, 2, 4}  # exposure, repurchase and candidate rows
    one_row = {k: v[:1] for k, v in held_out.items()}
    for batch in (one_row, held_out, unseen_ids(held_out, model, seed=5)):
        diffs = _max_diffs(model, onnx, world, batch)
        assert set(diffs) == {*TASKS, "user_vector", "item_vector"}
        assert max(diffs.values()) <= PARITY, diffs
    # The catalogue as scoring embeds it: item-side fields only.
    with torch.no_grad():
        catalogue = world.catalogue()
        assert (model.item_vectors(catalogue) - onnx.item_vectors(catalogue)).abs().max().item() <= PARITY


def test_the_signature_names_every_input_and_output_with_a_dynamic_batch(world, tmp_path):
    model, _, _ = trained_model(world, "mmoe", rows=2_000, epochs=1)
    export_graphs(model, tmp_path, {"model_version": "7", "ds": "2024-03-10"})
    signature = json.loads((tmp_path / SIGNATURE_FILE).read_text())
    assert signature["model_version"] == "7" and signature["tasks"] == list(TASKS)
    assert set(signature["graphs"]) == set(GRAPHS)
    ranking = signature["graphs"]["ranking"]
    assert [i["name"] for i in ranking["inputs"]] == [
        "user_hash",
        "hist_item_hashes",
        "item_hash",
        "category_hash",
        "row_kind_code",
        DENSE_KEY,
    ]
    assert ranking["inputs"][1] == {"name": "hist_item_hashes", "dtype": "int64", "shape": ["batch", 5]}
    assert ranking["inputs"][-1]["dtype"] == "float32"
    assert [o["name"] for o in ranking["outputs"]] == list(TASKS)
    assert [i["name"] for i in signature["graphs"]["user_tower"]["inputs"]] == [
        "user_hash",
        "hist_item_hashes",
        DENSE_KEY,
    ]
    assert signature["graphs"]["item_tower"]["outputs"] == [
        {"name": "item_vector", "dtype": "float32", "shape": ["batch", 16]}
    ]
    assert signature["hashing"]["buckets"] == {"user": 2003, "item": 1009, "category": 53, "row_kind": 8}
    assert signature["normalisation"]["mean"] == pytest.approx(model.features.dense_mean.tolist())
    # The graphs really take what the signature says, with any batch size.
    onnx = OnnxModel(read_export(tmp_path, "onnx"))
    for spec in signature["graphs"].values():
        session = onnx._sessions[spec["file"].removesuffix(".onnx")]
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in spec["inputs"]]
        assert all(i.shape[0] == "batch" for i in session.get_inputs())


def test_int8_keeps_every_gated_metric_within_the_tolerance(world, tmp_path):
    model, _, _ = trained_model(world, "mmoe", rows=30_000, epochs=3)
    export_graphs(model, tmp_path / "onnx", {"model_version": "test"})
    quantise_int8(tmp_path / "onnx", tmp_path / "onnx_int8")
    float_export, int8_export = read_export(tmp_path / "onnx", "onnx"), read_export(tmp_path / "onnx_int8", "onnx_int8")
    held_out = HeldOut.sample(world, 30_000)  # every user clicks in it: Recall@20 over all 400
    reference = gated_metrics(model, world, held_out)
    assert reference["click_auc"] > 0.58, reference  # the model has learned something
    int8 = gated_metrics(OnnxModel(int8_export), world, held_out)
    changes = {k: int8[k] - reference[k] for k in reference}
    assert all(abs(c) <= METRIC_TOLERANCE for c in changes.values()), changes
    # Every table and every dense layer's weights are stored in 8 bits (at this tiny size the graph
    # structure weighs as much as the weights, so the file ratio says little; see BENCHMARKS.md).
    for graph in int8_export.graphs.values():
        weights = [w for w in onnx.load_from_string(graph).graph.initializer if np.prod(w.dims) >= 256]
        assert weights and all(w.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for w in weights)
    assert int8_export.size_bytes < 0.7 * float_export.size_bytes


def test_pruning_keeps_the_rows_training_reached_and_zeroes_the_others(world, tmp_path):
    model, train, _ = trained_model(world, "mmoe", rows=4_000, epochs=1)
    keep = used_buckets(model, [train])
    small = pruned(model, keep)
    assert len(small.features.tables["user"].weight) < model.features.tables["user"].num_embeddings
    with torch.no_grad():
        seen = {k: v[:300] for k, v in train.items()}
        expected, actual = model.predict_proba(seen), small.predict_proba(seen)
        assert all(torch.equal(actual[t], expected[t]) for t in TASKS)
        # A bucket no training id reached reads the zero padding row, not its untrained noise.
        unseen = unseen_ids(seen, model, seed=9)
        for vocab, field in (("user", "user_hash"), ("item", "item_hash")):
            table, original = small.features.tables[vocab], model.features.tables[vocab]
            buckets = hash_to_bucket(unseen[field], table.num_embeddings)
            dropped = ~torch.isin(buckets, keep[vocab])
            assert dropped.any() and (table(buckets[dropped]) == 0).all()
            assert torch.equal(table(buckets[~dropped]), original(buckets[~dropped]))
    # And the pruned model exports like any other.
    onnx_model = _exported(small, tmp_path / "pruned")
    assert max(_max_diffs(small, onnx_model, world, unseen).values()) <= PARITY
