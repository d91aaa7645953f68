"""Training losses: masked BCE per ranking task, ESMM's CTCVR loss, in-batch sampled softmax with
log-Q correction for retrieval, and the joint loss L_rec + sum_t lambda_t L_t.

A label of MISSING_LABEL (-1) says "this task does not apply to this row" (e.g. no click label
on a repurchase row); such rows are left out of that task's mean and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.models.embedding import Batch
from mtl.models.model import ModelOutput
from mtl.models.model_config import ModelConfig
from mtl.models.multi_task.esmm import ctcvr_log_probs
from mtl.schema import MISSING_LABEL


def masked_bce_with_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean BCE over the rows whose label is present; 0 (with a gradient path) when none is."""
    present = (labels != MISSING_LABEL).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, labels.clamp_min(0).to(logits.dtype), reduction="none")
    return (loss * present).sum() / present.sum().clamp_min(1.0)


def ctcvr_loss(ctr_logit: Tensor, cvr_logit: Tensor, labels: Tensor) -> Tensor:
    """ESMM: BCE of pCTCVR = pCTR * pCVR against the purchase label, over every exposure row.

    Computed from log-sigmoids rather than from the product so that tiny products neither
    underflow to log(0) nor lose their gradient.
    """
    present = (labels != MISSING_LABEL).to(ctr_logit.dtype)
    y = labels.clamp_min(0).to(ctr_logit.dtype)
    log_p, log_not_p = ctcvr_log_probs(ctr_logit, cvr_logit)
    loss = -(y * log_p + (1.0 - y) * log_not_p)
    return (loss * present).sum() / present.sum().clamp_min(1.0)


def in_batch_softmax_loss(
    user_vec: Tensor, item_vec: Tensor, item_ids: Tensor, temperature: float, log_q: Optional[Tensor] = None
) -> Tensor:
    """Sampled softmax over the batch's positive pairs: row i's positive is item i, the other
    rows' items are its negatives.

    logits = u.v / T - log q(item): in-batch negatives are drawn in proportion to popularity, so
    without the correction the model learns to push popular items down (Yi et al. 2019). Another
    row holding the same item is not a negative of row i (it is a positive too), so it is masked.
    """
    n = user_vec.shape[0]
    if n == 0:
        return user_vec.sum() * 0.0
    logits = (user_vec @ item_vec.T) / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    duplicate = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    duplicate.fill_diagonal_(False)
    logits = logits.masked_fill(duplicate, float("-inf"))
    return F.cross_entropy(logits, torch.arange(n, device=logits.device))


class FrequencyEstimator(nn.Module):
    """Streaming estimate of how often each item occurs among the positives (Yi et al. 2019, Alg. 2).

    Per hash bucket it keeps the step an item was last seen and a moving average of the steps
    between sightings; q = 1 / gap. Counting within the batch instead would give almost every
    item q = 1/B (most items occur once per batch) and correct nothing; the streaming estimate
    remembers across batches in O(buckets) memory and is saved with the loss's state_dict.
    """

    def __init__(self, buckets: int, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_step", torch.zeros(buckets, dtype=torch.long))
        self.register_buffer("gap", torch.zeros(buckets))

    @torch.no_grad()
    def update(self, item_hashes: Tensor) -> None:
        self.step += 1
        b = torch.remainder(item_hashes, self.gap.numel())
        last = self.last_step[b]
        # First sighting (last step 0): seen once in `step` steps.
        gap = torch.where(
            last > 0, (1.0 - self.alpha) * self.gap[b] + self.alpha * (self.step - last), self.step.to(self.gap.dtype)
        )
        # An item repeated in the batch writes the same value each time.
        self.gap[b] = gap
        self.last_step[b] = self.step

    def log_q(self, item_hashes: Tensor) -> Tensor:
        return -torch.log(self.gap[torch.remainder(item_hashes, self.gap.numel())].clamp_min(1.0))


@dataclass
class LossOutput:
    total: Tensor
    # task -> loss, "retrieval" when enabled; detached, for logging
    parts: dict[str, Tensor]


class MultiTaskLoss(nn.Module):
    """L = w_rec * L_rec + sum_t lambda_t * L_t (static) or, with uncertainty weighting
    (Kendall et al. 2018), sum_t exp(-s_t) * L_t + s_t / 2 with learned log-variances s_t.

    Only the ranking tasks are uncertainty-weighted; the retrieval loss keeps its static weight
    as the anchor of the joint objective. Its parameters (s_t) belong to the dense optimiser and
    its buffers (the frequency estimator) to the checkpoint.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tasks = cfg.task_names
        self.register_buffer("static_weights", torch.tensor([t.weight for t in cfg.tasks]), persistent=False)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks))) if cfg.loss_weighting == "uncertainty" else None
        arch = cfg.architecture
        self.esmm_tasks = (arch.esmm_ctr_task, arch.esmm_ctcvr_task) if arch.name == "esmm" else None
        self.retrieval = cfg.retrieval if cfg.retrieval.enabled else None
        self.frequency = (
            FrequencyEstimator(cfg.retrieval.frequency_buckets, cfg.retrieval.frequency_alpha)
            if self.retrieval is not None and self.retrieval.logq_correction
            else None
        )

    def forward(self, out: ModelOutput, batch: Batch) -> LossOutput:
        losses = []
        for task in self.tasks:
            if self.esmm_tasks is not None and task == self.esmm_tasks[1]:
                losses.append(ctcvr_loss(out.logits[self.esmm_tasks[0]], out.cvr_logit, batch[task]))
            else:
                losses.append(masked_bce_with_logits(out.logits[task], batch[task]))
        task_losses = torch.stack(losses)
        if self.log_vars is None:
            total = (self.static_weights * task_losses).sum()
        else:
            # A task without labels in this batch must not pull its s_t down through s_t / 2.
            present = torch.stack([(batch[t] != MISSING_LABEL).any() for t in self.tasks]).to(task_losses.dtype)
            total = (torch.exp(-self.log_vars) * task_losses + 0.5 * self.log_vars * present).sum()
        parts = dict(zip(self.tasks, task_losses.detach().unbind()))
        if self.retrieval is not None:
            rec = self._retrieval_loss(out, batch)
            total = total + self.retrieval.weight * rec
            parts["retrieval"] = rec.detach()
        return LossOutput(total, parts)

    def task_weights(self) -> dict[str, float]:
        """The current weight of each ranking task's loss (learned ones move during training)."""
        weights = self.static_weights if self.log_vars is None else torch.exp(-self.log_vars.detach())
        return dict(zip(self.tasks, weights.tolist()))

    def _retrieval_loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        positive = batch[self.retrieval.positive_label] == 1
        item_ids = batch[self.retrieval.item_id_field][positive]
        log_q = None
        if self.frequency is not None:
            if self.training:
                self.frequency.update(item_ids)
            log_q = self.frequency.log_q(item_ids)
        return in_batch_softmax_loss(
            out.user_vec[positive], out.item_vec[positive], item_ids, self.retrieval.temperature, log_q
        )
