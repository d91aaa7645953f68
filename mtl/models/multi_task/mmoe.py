"""MMoE (Ma et al. 2018): shared experts, and one softmax gate per task choosing their mix, so
tasks that disagree can use different experts instead of fighting over one shared bottom."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtl.models.layers import ExpertMLPs, mix_experts


class MMoE(nn.Module):
    def __init__(
        self, in_dim: int, n_tasks: int, experts: int, expert_units: Sequence[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.experts = ExpertMLPs(experts, in_dim, expert_units, dropout)
        # All task gates in one Linear: [B, in] -> [B, tasks * experts].
        self.gates = nn.Linear(in_dim, n_tasks * experts)
        self.n_tasks = n_tasks
        self.out_dim = self.experts.out_dim

    def task_parameters(self, task: int) -> dict[str, slice]:
        """The rows of the parameters that only task ``task`` reads: its gate."""
        rows = slice(task * self.experts.n, (task + 1) * self.experts.n)
        return {"gates.weight": rows, "gates.bias": rows}

    def forward(self, x: Tensor) -> list[Tensor]:
        """One representation per task, [B, out_dim] each."""
        gate_logits = self.gates(x).view(x.shape[0], self.n_tasks, self.experts.n)
        return list(mix_experts(gate_logits, self.experts(x)).unbind(1))
