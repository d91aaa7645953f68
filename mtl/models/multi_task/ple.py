"""PLE (Tang et al. 2020): stacked CGC levels with experts of each task's own and shared experts.

At each level task t's gate mixes its own experts with the shared ones, and (below the last
level) a shared gate mixes all experts into the next level's shared input. Task-specific
experts keep negative transfer between conflicting tasks (click vs. repurchase) out of the
other tasks' representations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl.models.layers import ExpertMLPs, mix_experts


class CGCLevel(nn.Module):
    """One customised gate control level. Experts are ordered task 0's, ..., task T-1's, shared."""

    def __init__(
        self, in_dim: int, n_tasks: int, shared: int, specific: int, units: Sequence[int], dropout: float, last: bool
    ) -> None:
        super().__init__()
        self.n_tasks, self.specific = n_tasks, specific
        n = n_tasks * specific + shared
        self.experts = ExpertMLPs(n, in_dim, units, dropout)
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, specific + shared) for _ in range(n_tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, n)
        # Which input (task 0..T-1, or T for the shared input) each expert reads, and which
        # experts each task's gate mixes.
        owner = [t for t in range(n_tasks) for _ in range(specific)] + [n_tasks] * shared
        self.register_buffer("expert_input", torch.tensor(owner), persistent=False)
        shared_ids = list(range(n_tasks * specific, n))
        chosen = [list(range(t * specific, (t + 1) * specific)) + shared_ids for t in range(n_tasks)]
        self.register_buffer("task_experts", torch.tensor(chosen), persistent=False)
        self.out_dim = self.experts.out_dim

    def task_parameters(self, task: int) -> dict[str, slice]:
        """What only task ``task`` reads at this level: its gate and its own experts."""
        whole = slice(None)
        owned = {f"task_gates.{task}.{name}": whole for name, _ in self.task_gates[task].named_parameters()}
        experts = slice(task * self.specific, (task + 1) * self.specific)
        for name, _ in self.experts.named_parameters():
            owned[f"experts.{name}"] = experts
        return owned

    def forward(self, inputs: Tensor) -> Tensor:
        """inputs [B, in] (first level: all the same) or [B, T + 1, in] -> [B, T (+ 1), out]."""
        expert_in = inputs if inputs.dim() == 2 else inputs.index_select(1, self.expert_input)
        experts = self.experts(expert_in)  # [B, n, H]
        task_in = [inputs] * (self.n_tasks + 1) if inputs.dim() == 2 else inputs.unbind(1)
        outputs = [
            mix_experts(gate(task_in[t]).unsqueeze(1), experts.index_select(1, self.task_experts[t])).squeeze(1)
            for t, gate in enumerate(self.task_gates)
        ]
        if self.shared_gate is not None:
            outputs.append(mix_experts(self.shared_gate(task_in[-1]).unsqueeze(1), experts).squeeze(1))
        return torch.stack(outputs, dim=1)


class PLE(nn.Module):
    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        levels: int,
        shared_experts: int,
        specific_experts: int,
        expert_units: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for i in range(levels):
            level = CGCLevel(
                in_dim, n_tasks, shared_experts, specific_experts, expert_units, dropout, last=i == levels - 1
            )
            self.levels.append(level)
            in_dim = level.out_dim
        self.out_dim = in_dim

    def task_parameters(self, task: int) -> dict[str, slice]:
        return {
            f"levels.{i}.{name}": rows
            for i, level in enumerate(self.levels)
            for name, rows in level.task_parameters(task).items()
        }

    def forward(self, x: Tensor) -> list[Tensor]:
        """One representation per task, [B, out_dim] each."""
        for level in self.levels:
            x = level(x)
        return list(x.unbind(1))
