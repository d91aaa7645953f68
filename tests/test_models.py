"""The model, its inputs and its losses: configs, hashing, every architecture's forward and
backward, ESMM's algebra, and the retrieval loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl.config import ConfigError
from mtl.models import MultiTaskLoss, build_model, load_model_config
from mtl.models.embedding import dense_feature_stats, hash_to_bucket
from mtl.models.losses import FrequencyEstimator, ctcvr_loss, in_batch_softmax_loss, masked_bce_with_logits
from mtl.models.multi_task.esmm import ctcvr_logit
from mtl.schema import LABELS, Field, model_fields, row_kind_code
from tests.support.model_data import FIELDS, MODEL_CONF, TASKS, World, model_config, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ARCHITECTURES = ["shared_bottom", "mmoe", "ple", "esmm"]
INT64 = np.iinfo(np.int64)


@pytest.fixture(scope="module")
def world() -> World:
    return World.create(seed=0)


@pytest.fixture(scope="module")
def batch(world: World) -> dict[str, torch.Tensor]:
    return world.sample(256, seed=1)[0]


# ---- config


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_shipped_model_configs_load_and_build_for_the_project_schema(name):
    cfg = load_model_config(MODEL_CONF / f"{name}.yaml")
    assert cfg.architecture.name == name
    assert cfg.task_names == LABELS
    model = build_model(cfg, model_fields(), None)
    # one table per vocab, shared by every field of that vocab
    assert set(model.features.tables) == {"user", "item", "category", "row_kind"}
    assert model.features.tables["item"].num_embeddings == 200_000


def test_esmm_config_documents_its_backbone():
    cfg = load_model_config(MODEL_CONF / "esmm.yaml")
    assert cfg.architecture.backbone == "mmoe"
    assert (cfg.architecture.esmm_ctr_task, cfg.architecture.esmm_ctcvr_task) == ("click", "purchase")


@pytest.mark.parametrize(
    "override, message",
    [
        ("tasks=[{label: clicks}]", "tasks[0].label: 'clicks' is not a label"),
        ("tasks=[{label: click}, {label: click}]", "listed more than once"),
        ("tasks=[{label: click, weight: -1}]", "tasks[0].weight"),
        ("trainer.early_stopping_metric=recall", "trainer.early_stopping_metric: 'recall'"),
        ("trainer.early_stopping_metric=repurchase_30d_auc", "trainer.early_stopping_metric"),
        ("architecture.experts=0", "architecture.experts: must be at least 1"),
        ("architecture.dropout=1.0", "architecture.dropout"),
        ("embedding.buckets.user=1", "embedding.buckets.user: must be at least 2"),
        ("retrieval.temperature=0", "retrieval.temperature"),
        ("optimizer.sparse_lr=0", "optimizer.sparse_lr"),
        ("trainer.grad_clip_norm=0", "trainer.grad_clip_norm"),
        ("architecture.expert_units=[]", "architecture.expert_units"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        model_config("mmoe", override)
    assert message in str(err.value)


def test_esmm_needs_its_tasks():
    with pytest.raises(ConfigError, match="architecture.esmm_ctcvr_task: 'purchase' is not one of the tasks"):
        model_config("esmm", "tasks=[{label: click}, {label: repurchase_7d}]")


def test_config_keys_and_types_are_checked_by_the_shared_loader():
    with pytest.raises(ConfigError, match="unknown config key 'architecture.expert'"):
        model_config("mmoe", "architecture.expert=4")
    with pytest.raises(ConfigError, match="architecture.experts: expected an integer"):
        model_config("mmoe", "architecture.experts=four")


def test_schema_problems_fail_when_building():
    with pytest.raises(ConfigError, match="no bucket count for vocab 'brand' \\(field brand_hash\\)"):
        build_model(model_config(), FIELDS + (Field("brand_hash", "categorical", "item", "brand"),), None)
    with pytest.raises(ConfigError, match="retrieval.item_id_field: 'user_hash'"):
        build_model(model_config("mmoe", "retrieval.item_id_field=user_hash"), FIELDS, None)
    with pytest.raises(ValueError, match="dense_std has 2 values, the schema has 3"):
        build_model(model_config(), FIELDS, {"dense_mean": [0.0] * 3, "dense_std": [1.0] * 2})


# ---- inputs


def test_hash_to_bucket_keeps_zero_and_maps_every_other_hash_into_range():
    hashes = torch.tensor([0, 1, -1, 7, INT64.min, INT64.max, 123456789012345, -98765432109876])
    buckets = hash_to_bucket(hashes, 11)
    assert buckets[0] == 0
    assert ((buckets[1:] >= 1) & (buckets[1:] <= 10)).all()
    # deterministic, and the documented formula: 1 + hash mod (buckets - 1), floor modulo
    assert buckets.tolist() == [0] + [1 + (int(h) % 10) for h in hashes[1:]]


def test_dense_inputs_are_log_normalised_with_stats_kept_in_the_state_dict(world):
    raw = torch.tensor([[0.0, 10.0, 1.0], [3.0, 10.0, -5.0], [float("nan"), 10.0, 2.0]])
    stats = dense_feature_stats(raw)
    assert stats["dense_std"][1] == 0.0  # a constant column
    model = build_model(model_config(), FIELDS, stats)
    state = model.state_dict()
    assert torch.allclose(state["features.dense_mean"], torch.tensor(stats["dense_mean"]))
    assert state["features.dense_std"][1] == 1.0  # a zero spread is only centred, never divided by
    batch = world.sample(3, seed=5)[0] | {"dense": raw}
    user = model.features(batch, ("user",))["user"][:, -1]  # the user tower's one dense column
    logged = torch.log1p(torch.tensor([0.0, 3.0, 0.0]))
    assert torch.allclose(user, (logged - logged.mean()) / logged.std(unbiased=False), atol=1e-6)
    item = model.features(batch, ("item",))["item"][:, -1]
    assert torch.equal(item, torch.zeros(3))
    assert torch.isfinite(model(batch).logits["click"]).all()


def test_sequences_are_pooled_over_present_ids_only(world, batch):
    model = build_model(model_config(), FIELDS, None)
    hist = batch["hist_item_hashes"][:2].clone()
    hist[0, 2:] = 0  # two items, then padding
    hist[1, :] = 0  # no history at all
    table = model.features.tables["item"]
    user = model.features({**{k: v[:2] for k, v in batch.items()}, "hist_item_hashes": hist}, ("user",))["user"]
    pooled = user[:, 8:16]  # user_hash (8), then the history (8)
    expected = table(hash_to_bucket(hist[0, :2], table.num_embeddings)).mean(0)
    assert torch.allclose(pooled[0], expected, atol=1e-6)
    assert torch.equal(pooled[1], torch.zeros(8))


# ---- forward and backward


def _loss_and_grads(model, loss_fn, batch):
    out = model(batch)
    loss = loss_fn(out, batch)
    loss.total.backward()
    return out, loss


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_forward_backward_reaches_every_tower_and_the_shared_tables(name, batch):
    cfg = model_config(name, "loss_weighting=uncertainty")
    torch.manual_seed(0)
    model = build_model(cfg, FIELDS, dense_feature_stats(batch["dense"]))
    loss_fn = MultiTaskLoss(cfg)
    out, loss = _loss_and_grads(model, loss_fn, batch)

    assert set(out.logits) == set(TASKS)
    assert all(v.shape == (256,) for v in out.logits.values())
    assert out.user_vec.shape == out.item_vec.shape == (256, 16)
    assert set(loss.parts) == set(TASKS) | {"retrieval"}
    assert all(torch.isfinite(v) for v in loss.parts.values())
    for task, tower in model.towers.items():
        grads = [p.grad for p in tower.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), f"tower {task} got no gradient"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    for vocab, table in model.features.tables.items():
        assert table.weight.grad.is_sparse, vocab
        assert table.weight.grad.coalesce().values().abs().sum() > 0, vocab
    assert loss_fn.log_vars.grad is not None and (loss_fn.log_vars.grad != 0).all()


def test_cross_layers_pass_a_gradient_to_every_field(batch):
    cfg = model_config(
        "mmoe", "architecture.interaction=cross", "architecture.cross_layers=2", "retrieval.enabled=false"
    )
    torch.manual_seed(0)
    model = build_model(cfg, FIELDS, dense_feature_stats(batch["dense"]))
    inputs = []
    model.interaction.register_forward_pre_hook(lambda _, args: inputs.append(args[0]) or args[0].retain_grad())
    _loss_and_grads(model, MultiTaskLoss(cfg), batch)

    assert model.interaction is not None and len(model.interaction.layers) == 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.interaction.parameters())
    # Every column of the concatenated input (each field's embedding, each dense value) gets a gradient.
    column_grads = inputs[0].grad.abs().sum(dim=0)
    assert column_grads.shape == (sum(model.features.widths.values()),)
    assert (column_grads > 0).all()
    for vocab, table in model.features.tables.items():
        assert table.weight.grad.coalesce().values().abs().sum() > 0, vocab


def test_wide_part_adds_a_linear_term_over_the_normalised_dense_inputs(batch):
    """architecture.wide: each task's logit is its deep tower's plus w_t . x over the normalised
    dense columns, in every tower (kind towers too), on the training and the traceable path."""
    batch = dict(batch)
    candidate = torch.arange(256) % 3 == 0
    batch["row_kind_code"] = torch.where(candidate, row_kind_code("candidate"), batch["row_kind_code"])
    cfg = model_config("mmoe", "architecture.wide=true", "architecture.kind_towers=[candidate]")
    torch.manual_seed(0)
    model = build_model(cfg, FIELDS, dense_feature_stats(batch["dense"])).eval()
    towers = [*model.towers.values(), *model.kind_towers["candidate"].values()]
    assert all(t.wide is not None and not t.wide.weight.any() for t in towers), "the wide part starts at zero"
    with torch.no_grad():
        deep = model(batch).logits
        weights = {}
        for i, (name, tower) in enumerate(model.named_modules()):
            if name.endswith(".wide"):
                weights[name] = torch.linspace(-1.0, 1.0, tower.weight.numel()) * (i + 1)
                tower.weight.copy_(weights[name].view_as(tower.weight))
        both = model(batch).logits
        traced = model.probabilities(batch, traceable=True)
    x = (torch.log1p(batch["dense"].clamp_min(0)) - model.features.dense_mean) / model.features.dense_std
    for task in TASKS:
        for rows, prefix in ((~candidate, "towers"), (candidate, "kind_towers.candidate")):
            expected = deep[task][rows] + x[rows] @ weights[f"{prefix}.{task}.wide"]
            assert torch.allclose(both[task][rows], expected, atol=1e-5), (task, prefix)
        assert torch.allclose(traced[task], torch.sigmoid(both[task]), atol=1e-6), task

    model.train()
    MultiTaskLoss(cfg)(model(batch), batch).total.backward()
    assert all(t.wide.weight.grad.abs().sum() > 0 for t in towers), "every wide part learns"

    no_dense = [f for f in FIELDS if f.kind != "dense"]
    with pytest.raises(ConfigError, match="architecture.wide: the schema has no dense field"):
        build_model(cfg, no_dense, None)


def test_retrieval_loss_alone_trains_the_ranking_tables(batch):
    """The two towers read the very tables the ranking part reads, not copies of them."""
    cfg = model_config()
    model = build_model(cfg, FIELDS, None)
    out = model(batch)
    MultiTaskLoss(cfg)._retrieval_loss(out, batch).backward()
    assert model.features.tables["item"].weight.grad.coalesce().values().abs().sum() > 0
    assert model.features.tables["user"].weight.grad.coalesce().values().abs().sum() > 0
    assert all(tower.out.weight.grad is None for tower in model.towers.values())
    assert len([m for m in model.modules() if isinstance(m, torch.nn.Embedding)]) == len(model.features.tables)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_batch_of_one_and_ids_never_seen(name, world):
    model = build_model(model_config(name, "embedding.sequence_pooling=attention"), FIELDS, None)
    model.eval()
    rng = np.random.default_rng(3)
    for size in (1, 5):
        batch = world.sample(size, seed=9)[0]
        for key in ("user_hash", "item_hash", "category_hash", "row_kind_code", "hist_item_hashes"):
            huge = rng.integers(INT64.min, INT64.max, size=batch[key].shape, dtype=np.int64)
            batch[key] = torch.from_numpy(huge)
        batch["item_hash"][0] = INT64.min
        batch["user_hash"][0] = INT64.max
        batch["hist_item_hashes"][0] = 0  # no history
        with torch.no_grad():
            out = model(batch)
        probs = model.predict_proba(batch)
        assert all(v.shape == (size,) and torch.isfinite(v).all() for v in out.logits.values())
        assert all(((p >= 0) & (p <= 1)).all() for p in probs.values())
        assert out.user_vec.shape == (size, 16) and torch.isfinite(out.user_vec).all()


def test_towers_read_only_their_own_side(world):
    model = build_model(model_config(), FIELDS, None)
    model.eval()
    catalogue = world.catalogue()  # item fields only: no user or pair key in the batch
    assert set(catalogue) == {"item_hash", "category_hash", "dense"}
    items = model.item_vectors(catalogue)
    assert items.shape == (world.items, 16)
    assert torch.allclose(items.norm(dim=1), torch.ones(world.items), atol=1e-5)
    users = model.user_vectors(world.users(np.arange(7)))
    assert users.shape == (7, 16)
    # the same rows inside a full training batch get the same vectors
    batch, _, u, i = world.sample(32, seed=4)
    with torch.no_grad():
        out = model(batch)
    assert torch.allclose(out.item_vec, items[i], atol=1e-6)
    assert torch.allclose(out.user_vec, model.user_vectors(world.users(u)), atol=1e-6)


def test_kind_towers_give_rows_of_that_kind_heads_of_their_own(batch):
    """architecture.kind_towers=[candidate]: candidate rows are scored and trained by their own
    towers; every other row keeps the shared ones."""
    batch = dict(batch)
    candidate = torch.arange(256) % 3 == 0
    batch["row_kind_code"] = torch.where(candidate, row_kind_code("candidate"), batch["row_kind_code"])
    torch.manual_seed(0)
    plain = build_model(model_config("mmoe", "architecture.kind_towers=[]"), FIELDS, None)
    torch.manual_seed(0)
    split = build_model(model_config("mmoe", "architecture.kind_towers=[candidate]"), FIELDS, None)
    split.load_state_dict(plain.state_dict(), strict=False)  # same shared weights, own towers fresh
    p_plain, p_split = plain.predict_proba(batch), split.predict_proba(batch)
    for task in TASKS:
        assert torch.allclose(p_plain[task][~candidate], p_split[task][~candidate], rtol=0, atol=1e-6)
        assert not torch.allclose(p_plain[task][candidate], p_split[task][candidate])

    only_others = {k: v[~candidate] for k, v in batch.items()}
    MultiTaskLoss(split.cfg)(split(only_others), only_others).total.backward()
    own = split.kind_towers["candidate"]
    assert all(p.grad is None or not p.grad.any() for p in own.parameters()), "no candidate row, no gradient"
    assert all(t.out.weight.grad.abs().sum() > 0 for t in split.towers.values())
    split.zero_grad(set_to_none=True)
    MultiTaskLoss(split.cfg)(split(batch), batch).total.backward()
    assert all(t.out.weight.grad.abs().sum() > 0 for t in own.values()), "candidate rows train their own towers"

    with pytest.raises(ConfigError, match="architecture.kind_towers: \\['impression'\\] not row kinds"):
        model_config("mmoe", "architecture.kind_towers=[impression]")


def test_predict_proba_restores_the_training_mode_and_is_deterministic(batch):
    model = build_model(model_config("mmoe", "architecture.dropout=0.5"), FIELDS, None)
    model.train()
    first = model.predict_proba(batch)
    assert model.training
    second = model.predict_proba(batch)
    assert all(torch.equal(first[t], second[t]) for t in TASKS)


# ---- ESMM


def test_esmm_ctcvr_is_the_product_of_ctr_and_cvr(batch):
    model = build_model(model_config("esmm"), FIELDS, None)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    probs = model.predict_proba(batch)
    p_ctr, p_cvr = torch.sigmoid(out.logits["click"]), torch.sigmoid(out.cvr_logit)
    assert torch.allclose(probs["purchase"], p_ctr * p_cvr, rtol=0, atol=1e-7)
    assert torch.allclose(torch.sigmoid(out.logits["purchase"]), p_ctr * p_cvr, atol=1e-6)
    assert (probs["purchase"] <= probs["click"]).all()  # pCTCVR never exceeds pCTR


def test_ctcvr_loss_is_bce_of_the_product_and_stays_finite_when_saturated():
    ctr = torch.tensor([0.3, -2.0, 1.5, 4.0, -40.0, 40.0], requires_grad=True)
    cvr = torch.tensor([-1.0, 0.5, 2.0, -3.0, -40.0, 40.0])
    labels = torch.tensor([1.0, 0.0, 1.0, -1.0, 0.0, 1.0])
    loss = ctcvr_loss(ctr, cvr, labels)
    keep = labels >= 0
    p = (torch.sigmoid(ctr) * torch.sigmoid(cvr)).double()
    expected = F.binary_cross_entropy(p[keep], labels[keep].double())
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)
    loss.backward()
    assert torch.isfinite(ctr.grad).all() and ctr.grad[3] == 0  # the missing label gets no gradient
    assert torch.isfinite(ctcvr_logit(ctr, cvr)).all()


# ---- losses


def test_masked_bce_averages_over_present_labels_only():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0], requires_grad=True)
    labels = torch.tensor([1.0, -1.0, 0.0, -1.0])
    loss = masked_bce_with_logits(logits, labels)
    expected = F.binary_cross_entropy_with_logits(logits[[0, 2]], labels[[0, 2]])
    assert torch.isclose(loss, expected)
    nothing = masked_bce_with_logits(logits, torch.full((4,), -1.0))
    assert nothing.item() == 0.0
    nothing.backward()  # still part of the graph
    assert torch.equal(logits.grad, torch.zeros(4))


def test_in_batch_softmax_masks_duplicate_items_and_subtracts_log_q():
    torch.manual_seed(0)
    user = F.normalize(torch.randn(4, 8), dim=1)
    item = F.normalize(torch.randn(4, 8), dim=1)
    ids = torch.tensor([10, 20, 10, 30])  # rows 0 and 2 hold the same item
    log_q = torch.log(torch.tensor([0.5, 0.1, 0.5, 0.2]))
    loss = in_batch_softmax_loss(user, item, ids, temperature=0.1, log_q=log_q)
    logits = user @ item.T / 0.1 - log_q
    expected = []
    for i in range(4):
        keep = [j for j in range(4) if j == i or ids[j] != ids[i]]
        expected.append(-(logits[i, i] - torch.logsumexp(logits[i, keep], 0)))
    assert torch.isclose(loss, torch.stack(expected).mean(), atol=1e-6)
    # no correction, no positives
    plain = in_batch_softmax_loss(user, item, torch.arange(4), temperature=0.1)
    assert torch.isclose(plain, F.cross_entropy(user @ item.T / 0.1, torch.arange(4)), atol=1e-6)
    assert in_batch_softmax_loss(user[:0], item[:0], ids[:0], 0.1).item() == 0.0


def test_frequency_estimator_learns_how_often_items_occur():
    est = FrequencyEstimator(buckets=1024, alpha=0.05)
    every_step, every_fourth, once = torch.tensor([101]), torch.tensor([-202]), torch.tensor([303])
    for step in range(1, 401):
        items = [every_step] + ([every_fourth] if step % 4 == 0 else []) + ([once] if step == 200 else [])
        est.update(torch.cat(items + [every_step]))  # a duplicate in the batch counts once
    q = est.log_q(torch.tensor([101, -202, 303])).exp()
    assert q[0].item() == pytest.approx(1.0, rel=0.01)
    assert q[1].item() == pytest.approx(0.25, rel=0.05)
    assert q[2].item() == pytest.approx(1 / 200, rel=0.01)  # seen once, at step 200
    assert {"frequency.step", "frequency.gap", "frequency.last_step"} <= set(MultiTaskLoss(model_config()).state_dict())
