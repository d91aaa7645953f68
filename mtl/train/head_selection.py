"""Per-task checkpoint selection (``trainer.head_selection: per_task``).

Tasks peak at different epochs: a sparse task such as repurchase overfits while click still
improves, so one stop on the mean validation metric is late for one and early for the other.
One model must still come out, so the parameters are split by who reads them:

- a task's own parameters (``MultiTaskRecModel.task_parameters``: its towers, its rows of the
  MMoE gate, its PLE gates and experts) are snapshotted at the task's own best epoch;
- the shared parameters (embeddings, shared experts, the retrieval head) keep the epoch best by
  ``trainer.early_stopping_metric``: the representation every task was validated on together.
  Mixing shared weights of several epochs would give a representation no task was trained on.

A head from another epoch than the shared weights reads a representation it was not trained
with, so it is kept only where the assembled model validates at least as well for that task as
the shared epoch's own head did; otherwise the task falls back to the shared epoch's head. So
every task's validation metric is at least what the single stop on the mean gave it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

Heads = dict[str, Tensor]  # parameter name -> the task's rows of it


def snapshot(model: nn.Module, owned: dict[str, slice]) -> Heads:
    params = dict(model.named_parameters())
    return {name: params[name].detach()[rows].clone() for name, rows in owned.items()}


def from_state(state: dict[str, Tensor], owned: dict[str, slice]) -> Heads:
    """The task's rows in a full state dict (e.g. the shared epoch's best state)."""
    return {name: state[name][rows].clone() for name, rows in owned.items()}


@torch.no_grad()
def restore(model: nn.Module, owned: dict[str, slice], heads: Heads) -> None:
    params = dict(model.named_parameters())
    for name, rows in owned.items():
        params[name][rows] = heads[name].to(params[name].device)


def is_worse(value: float, reference: float, higher_is_better: bool) -> bool:
    """``value`` loses to ``reference``; a NaN never wins against a number."""
    if math.isnan(reference):
        return False
    if math.isnan(value):
        return True
    return value < reference if higher_is_better else value > reference
