"""Multi-task backbones: each maps the shared input [B, in] to one representation per task."""

from __future__ import annotations

from torch import nn

from mtl.models.model_config import ArchitectureConfig
from mtl.models.multi_task.mmoe import MMoE
from mtl.models.multi_task.ple import PLE
from mtl.models.multi_task.shared_bottom import SharedBottom


def build_backbone(cfg: ArchitectureConfig, in_dim: int, n_tasks: int) -> nn.Module:
    """The backbone named by the config (ESMM's is ``esmm_backbone``); it has ``out_dim``."""
    if cfg.backbone == "shared_bottom":
        return SharedBottom(in_dim, n_tasks, cfg.bottom_units, cfg.dropout)
    if cfg.backbone == "mmoe":
        return MMoE(in_dim, n_tasks, cfg.experts, cfg.expert_units, cfg.dropout)
    return PLE(in_dim, n_tasks, cfg.levels, cfg.shared_experts, cfg.specific_experts, cfg.expert_units, cfg.dropout)
