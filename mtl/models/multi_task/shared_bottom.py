"""Shared-bottom: one MLP whose output every task tower reads (Caruana 1997)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtl.models.layers import MLP


class SharedBottom(nn.Module):
    def __init__(self, in_dim: int, n_tasks: int, units: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.bottom = MLP(in_dim, units, dropout)
        self.n_tasks = n_tasks
        self.out_dim = self.bottom.out_dim

    def task_parameters(self, task: int) -> dict[str, slice]:
        """Every parameter of the bottom is shared: a task owns nothing here."""
        return {}

    def forward(self, x: Tensor) -> list[Tensor]:
        """One representation per task, [B, out_dim] each (here the same one)."""
        return [self.bottom(x)] * self.n_tasks
