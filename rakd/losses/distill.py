"""Distillation losses: SeqKD (`sft`), logit KD (`fkl`), generalised JSD (`gkd`), and the warm start's healing loss.

`logprobs` and `mask` are (B, T); `student_logits` and `teacher_logits` are
(B, T, V) over the shared vocabulary. Returns `(loss, metrics)`, minimised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rakd.losses.common import Aggregation, aggregate, masked_mean
from rakd.schema import LOSS_DEFAULTS


def sft_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, *, agg: Aggregation = "token_mean"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative log-likelihood of the target tokens (SeqKD on teacher traces)."""
    loss = aggregate(-logprobs, mask, agg)
    return loss, {"nll": float(loss.detach())}


def heal_loss(
    logprobs: torch.Tensor,
    forward_kl: torch.Tensor,
    mask: torch.Tensor,
    *,
    ce_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Healing a pruned student by distillation: the forward KL to the teacher at every completion token (over its
    top-k tokens and tail, teacher-forced on its traces; `forward_kl` (B, T)) plus `ce_weight` x the negative
    log-likelihood of the trace's tokens, both token means (torchtune's KD recipe, Minitron's healing with a CE
    term)."""
    kl = masked_mean(forward_kl, mask)
    nll = masked_mean(-logprobs, mask)
    return kl + ce_weight * nll, {"forward_kl": float(kl.detach()), "nll": float(nll.detach())}


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Per-position KL(p ‖ q) from log-probabilities, summed over the vocabulary: (B, T)."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def fkl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    kd_temperature: float = LOSS_DEFAULTS.kd_temperature,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward KL(π_T ‖ π_θ) over the vocabulary at temperature τ, scaled by τ² (Hinton et al.)."""
    student_log = F.log_softmax(student_logits / kd_temperature, dim=-1)
    teacher_log = F.log_softmax(teacher_logits.detach() / kd_temperature, dim=-1)
    loss = masked_mean(_kl(teacher_log, student_log), mask) * kd_temperature**2
    return loss, {"forward_kl": float(loss.detach())}


def gkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = LOSS_DEFAULTS.beta,
    kd_temperature: float = LOSS_DEFAULTS.kd_temperature,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Generalised JSD_β(π_T, π_θ) over the vocabulary (Agarwal et al., GKD).

    With M = β π_T + (1 − β) π_θ:  JSD_β = β KL(π_T ‖ M) + (1 − β) KL(π_θ ‖ M).
    The ends follow GKD's convention: β = 0 is the forward KL(π_T ‖ π_θ) and
    β = 1 the reverse KL(π_θ ‖ π_T) (the interior tends to 0 at both ends).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"gkd beta must lie in [0, 1], got {beta}")
    student_log = F.log_softmax(student_logits / kd_temperature, dim=-1)
    teacher_log = F.log_softmax(teacher_logits.detach() / kd_temperature, dim=-1)
    if beta == 0.0:
        per_token = _kl(teacher_log, student_log)
    elif beta == 1.0:
        per_token = _kl(student_log, teacher_log)
    else:
        mixture = torch.logsumexp(
            torch.stack([teacher_log + math.log(beta), student_log + math.log(1.0 - beta)]), dim=0
        )
        per_token = beta * _kl(teacher_log, mixture) + (1.0 - beta) * _kl(student_log, mixture)
    loss = masked_mean(per_token, mask)
    return loss, {"jsd": float(loss.detach())}
