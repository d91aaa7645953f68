"""The multi-task recommender: shared embeddings -> backbone -> one tower per task, plus a
two-tower retrieval head on the same embedding tables.

Ranking reads every side (user, item, pair); the retrieval towers read the user and the item
side respectively. Training runs one embedding pass per batch for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mtl.config import ConfigError
from mtl.models.embedding import SIDES, Batch, FeatureEmbedding
from mtl.models.layers import CrossNetwork, Tower
from mtl.models.matching.two_tower import TwoTower
from mtl.models.model_config import ModelConfig, check_model_config
from mtl.models.multi_task import build_backbone
from mtl.models.multi_task.esmm import ctcvr_logit, ctcvr_prob
from mtl.schema import ROW_KIND_FIELD, Field, row_kind_code


@dataclass
class ModelOutput:
    # task -> logit [B]; ESMM's CTCVR task holds logit(pCTR * pCVR)
    logits: dict[str, Tensor]
    # ESMM only: the CVR tower's logit, pCVR = P(purchase | click, exposure)
    cvr_logit: Optional[Tensor] = None
    # retrieval head only: L2-normalised user and item vectors [B, d] of every row
    user_vec: Optional[Tensor] = None
    item_vec: Optional[Tensor] = None


class MultiTaskRecModel(nn.Module):
    def __init__(
        self, fields: Sequence[Field], cfg: ModelConfig, feature_stats: Mapping[str, Sequence[float]] | None = None
    ) -> None:
        super().__init__()
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ConfigError(f"fields: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
        self.cfg = cfg
        self.tasks = cfg.task_names
        arch = cfg.architecture
        self.features = FeatureEmbedding(fields, cfg.embedding, feature_stats)
        widths = self.features.widths
        self.input_sides = tuple(s for s in SIDES if widths[s])
        in_dim = sum(widths.values())
        if arch.wide and not self.features.dense_width:
            raise ConfigError("architecture.wide: the schema has no dense field for the wide part to read")
        self.interaction = CrossNetwork(in_dim, arch.cross_layers) if arch.interaction == "cross" else None
        self.backbone = build_backbone(arch, in_dim, len(self.tasks))
        self.towers = self._towers()
        if arch.kind_towers and ROW_KIND_FIELD not in names:
            raise ConfigError(f"architecture.kind_towers: the schema has no {ROW_KIND_FIELD} field to tell rows apart")
        self.kind_codes = {kind: row_kind_code(kind) for kind in arch.kind_towers}
        self.kind_towers = nn.ModuleDict({kind: self._towers() for kind in arch.kind_towers})
        # ESMM: the tower of the CTCVR task is the CVR tower; its task output is the product.
        self.esmm_tasks = (arch.esmm_ctr_task, arch.esmm_ctcvr_task) if arch.name == "esmm" else None

        self.retrieval: Optional[TwoTower] = None
        ret = cfg.retrieval
        if ret.enabled:
            item_id = next((f for f in fields if f.name == ret.item_id_field), None)
            if item_id is None or item_id.kind != "categorical" or item_id.side != "item":
                raise ConfigError(
                    f"retrieval.item_id_field: {ret.item_id_field!r} is not an item-side categorical field"
                )
            if not widths["user"] or not widths["item"]:
                raise ConfigError("retrieval: the schema needs user-side and item-side fields for the two towers")
            self.retrieval = TwoTower(widths["user"], widths["item"], ret.tower_units, ret.dim, arch.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        parts = self.features(batch, self.input_sides)
        out = self._rank(parts, batch)
        if self.retrieval is not None:
            out.user_vec = self.retrieval.user_vectors(parts["user"])
            out.item_vec = self.retrieval.item_vectors(parts["item"])
        return out

    def user_vectors(self, batch: Batch) -> Tensor:
        """[B, d] from the user-side fields only."""
        return self._retrieval_head().user_vectors(self.features(batch, ("user",))["user"])

    def item_vectors(self, batch: Batch) -> Tensor:
        """[B, d] from the item-side fields only (``dense`` still has every column, in schema
        order; only the item-side ones are read), so the catalogue is embedded once."""
        return self._retrieval_head().item_vectors(self.features(batch, ("item",))["item"])

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> dict[str, Tensor]:
        """Task -> probability [B], in eval mode (no dropout); the previous mode is restored."""
        was_training = self.training
        self.eval()
        try:
            return self.probabilities(batch)
        finally:
            self.train(was_training)

    def probabilities(self, batch: Batch, traceable: bool = False) -> dict[str, Tensor]:
        """Task -> probability [B] in the current mode. ``traceable`` computes every row kind's
        towers on every row and selects per row (same values, no data-dependent control flow),
        which is what an exported graph needs; training keeps the cheaper per-kind indexing."""
        out = self._rank(self.features(batch, self.input_sides), batch, traceable)
        probs = {t: torch.sigmoid(logit) for t, logit in out.logits.items()}
        if self.esmm_tasks is not None:
            ctr, ctcvr = self.esmm_tasks
            probs[ctcvr] = ctcvr_prob(out.logits[ctr], out.cvr_logit)
        return probs

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding tables when they take sparse gradients (SparseAdam's parameters)."""
        return self.features.sparse_parameters() if self.cfg.embedding.sparse else []

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def task_parameters(self, task: str) -> dict[str, slice]:
        """Parameter name -> the rows of it that only ``task``'s output reads (``slice(None)``:
        all of it): its towers, and its part of the backbone. Everything else is shared."""
        whole = slice(None)
        index = self.tasks.index(task)
        owned = {f"towers.{task}.{name}": whole for name, _ in self.towers[task].named_parameters()}
        for kind, towers in self.kind_towers.items():
            owned |= {f"kind_towers.{kind}.{task}.{name}": whole for name, _ in towers[task].named_parameters()}
        owned |= {f"backbone.{name}": rows for name, rows in self.backbone.task_parameters(index).items()}
        return owned

    def _rank(self, parts: dict[str, Tensor], batch: Batch, traceable: bool = False) -> ModelOutput:
        x = torch.cat([parts[s] for s in self.input_sides], dim=1)
        if self.interaction is not None:
            x = self.interaction(x)
        hidden = dict(zip(self.tasks, self.backbone(x)))
        wide = self.features.dense_inputs(batch) if self.cfg.architecture.wide else None
        if traceable:
            logits = self._selected_tower_logits(hidden, wide, batch)
        else:
            logits = self._tower_logits(hidden, wide, batch)
        if self.esmm_tasks is None:
            return ModelOutput(logits)
        ctr, ctcvr = self.esmm_tasks
        cvr = logits[ctcvr]
        logits[ctcvr] = ctcvr_logit(logits[ctr], cvr)
        return ModelOutput(logits, cvr_logit=cvr)

    def _tower_logits(self, hidden: dict[str, Tensor], wide: Tensor | None, batch: Batch) -> dict[str, Tensor]:
        """Each task's tower over its backbone output (and the wide inputs); rows of a kind in
        ``kind_towers`` go through that kind's towers instead, and each row through one tower only."""
        if not self.kind_towers:
            return {t: self.towers[t](h, wide) for t, h in hidden.items()}
        codes = batch[ROW_KIND_FIELD]
        groups = [(codes == self.kind_codes[kind], towers) for kind, towers in self.kind_towers.items()]
        shared = ~torch.stack([rows for rows, _ in groups]).any(dim=0)
        groups = [(rows, towers) for rows, towers in [*groups, (shared, self.towers)] if bool(rows.any())]
        logits = {}
        for task, h in hidden.items():
            out = h.new_zeros(h.shape[0])
            for rows, towers in groups:
                out = out.index_put((rows,), towers[task](h[rows], None if wide is None else wide[rows]))
            logits[task] = out
        return logits

    def _selected_tower_logits(self, hidden: dict[str, Tensor], wide: Tensor | None, batch: Batch) -> dict[str, Tensor]:
        """_tower_logits without data-dependent control flow: every tower runs on every row and
        each row keeps the output of its kind's tower (kinds are disjoint, so the order of the
        selections does not matter)."""
        logits = {t: self.towers[t](h, wide) for t, h in hidden.items()}
        if not self.kind_towers:
            return logits
        codes = batch[ROW_KIND_FIELD]
        for kind, towers in self.kind_towers.items():
            rows = codes == self.kind_codes[kind]
            logits = {t: torch.where(rows, towers[t](h, wide), logits[t]) for t, h in hidden.items()}
        return logits

    def _towers(self) -> nn.ModuleDict:
        arch = self.cfg.architecture
        wide_dim = self.features.dense_width if arch.wide else 0
        return nn.ModuleDict(
            {t: Tower(self.backbone.out_dim, arch.tower_units, arch.dropout, wide_dim) for t in self.tasks}
        )

    def _retrieval_head(self) -> TwoTower:
        if self.retrieval is None:
            raise RuntimeError("the retrieval head is disabled (retrieval.enabled: false)")
        return self.retrieval


def build_model(
    model_cfg: ModelConfig, fields: Sequence[Field], feature_stats: Mapping[str, Sequence[float]] | None
) -> MultiTaskRecModel:
    """The model for ``fields`` (e.g. mtl.schema.model_fields()).

    ``feature_stats`` holds ``dense_mean`` and ``dense_std`` per dense field in log1p space (see
    mtl.models.embedding.dense_feature_stats); None leaves the dense inputs at log1p only.
    """
    check_model_config(model_cfg)
    return MultiTaskRecModel(fields, model_cfg, feature_stats)
