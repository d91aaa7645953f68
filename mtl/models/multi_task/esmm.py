"""ESMM (Ma et al. 2018): purchase is modelled over the whole exposure space as
pCTCVR = pCTR * pCVR, so the CVR tower is trained through the product on every exposure and
never on the click-selected sample only (no sample-selection bias, no CVR data sparsity).

The backbone under the towers is any of the others (config ``esmm_backbone``); this module
holds the probability algebra, in log space so that neither the loss nor the logit of the
product underflows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# log p is kept at most this far below 0, so log(1 - p) stays finite for a saturated product.
_MAX_LOG_P = -1e-7


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012). Each branch gets an input
    clamped to its own range so that the branch torch.where discards has no inf gradient."""
    near_zero = x > -math.log(2.0)
    hi = torch.log(-torch.expm1(x.clamp_min(-math.log(2.0))))
    lo = torch.log1p(-torch.exp(x.clamp_max(-math.log(2.0))))
    return torch.where(near_zero, hi, lo)


def ctcvr_log_probs(ctr_logit: Tensor, cvr_logit: Tensor) -> tuple[Tensor, Tensor]:
    """log pCTCVR and log(1 - pCTCVR) for pCTCVR = sigmoid(ctr) * sigmoid(cvr)."""
    log_p = (F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)).clamp_max(_MAX_LOG_P)
    return log_p, log1mexp(log_p)


def ctcvr_logit(ctr_logit: Tensor, cvr_logit: Tensor) -> Tensor:
    """The logit of pCTR * pCVR: the CTCVR task's output, comparable with the other tasks' logits."""
    log_p, log_not_p = ctcvr_log_probs(ctr_logit, cvr_logit)
    return log_p - log_not_p


def ctcvr_prob(ctr_logit: Tensor, cvr_logit: Tensor) -> Tensor:
    return torch.sigmoid(ctr_logit) * torch.sigmoid(cvr_logit)
