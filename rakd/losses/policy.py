"""Policy-gradient losses on sampled tokens: GRPO, GRPO+KL (KDRL), TRRD (RLAD), OPD.

Inputs are log-probabilities of the *sampled* tokens, all (B, T):
`logprobs` under the student being trained (π_θ, carries gradient),
`old_logprobs` under the student that sampled the rollouts (π_old),
`teacher_logprobs` under the frozen teacher (π_T); `advantages` is (B,), the
same for every token of a rollout; `mask` is 1 on completion tokens.
Every loss returns `(loss, metrics)` and is minimised.
"""

from __future__ import annotations

import torch

from rakd.losses.common import Aggregation, aggregate, masked_mean, masked_stat
from rakd.schema import LOSS_DEFAULTS


def clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    agg: Aggregation,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped objective −min(ρA, clip(ρ, 1−ε_lo, 1+ε_hi)A) with ρ = exp(log_ratio)."""
    ratio = torch.exp(log_ratio)
    adv = advantages.to(ratio.dtype).unsqueeze(-1).expand_as(ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = aggregate(-torch.minimum(unclipped, clipped), mask, agg)
    metrics = {
        # The clip binds (and the token gets no gradient) in these two regions.
        "clip_low_frac": masked_stat((ratio < 1.0 - eps_low) & (adv < 0), mask, "mean"),
        "clip_high_frac": masked_stat((ratio > 1.0 + eps_high) & (adv > 0), mask, "mean"),
        "ratio_mean": masked_stat(ratio, mask, "mean"),
        "ratio_max": masked_stat(ratio, mask, "max"),
    }
    return loss, metrics


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref) on tokens sampled from π_θ: e^d − d − 1, d = log π_ref − log π_θ."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = LOSS_DEFAULTS.eps_low,
    eps_high: float = LOSS_DEFAULTS.eps_high,
    agg: Aggregation = "seq_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO: clipped surrogate with ρ = π_θ / π_old."""
    return clipped_surrogate(
        logprobs - old_logprobs.detach(), advantages, mask, eps_low=eps_low, eps_high=eps_high, agg=agg
    )


def grpo_kl_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float = LOSS_DEFAULTS.kl_coef,
    eps_low: float = LOSS_DEFAULTS.eps_low,
    eps_high: float = LOSS_DEFAULTS.eps_high,
    agg: Aggregation = "seq_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """KDRL: GRPO plus kl_coef · KL(π_θ ‖ π_T) (k3 estimator on the sampled tokens)."""
    pg_loss, metrics = grpo_loss(logprobs, old_logprobs, advantages, mask, eps_low=eps_low, eps_high=eps_high, agg=agg)
    kl = aggregate(k3_kl(logprobs, teacher_logprobs.detach()), mask, agg)
    metrics.update(pg_loss=float(pg_loss.detach()), kl_student_teacher=float(kl.detach()))
    return pg_loss + kl_coef * kl, metrics


def clamp_log_ratio(log_ratio: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """TRRD's clamp of the teacher log-ratio to [-c, c]; None: unclamped."""
    return log_ratio if clamp is None else torch.clamp(log_ratio, -clamp, clamp)


def clamp_binds(log_ratio: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Where `clamp_log_ratio` changes the value (bool, the shape of `log_ratio`)."""
    return torch.zeros_like(log_ratio, dtype=torch.bool) if clamp is None else log_ratio.abs() > clamp


def trrd_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = LOSS_DEFAULTS.alpha,
    eps_low: float = LOSS_DEFAULTS.eps_low,
    eps_high: float = LOSS_DEFAULTS.eps_high,
    teacher_clamp: float | None = LOSS_DEFAULTS.teacher_clamp,
    agg: Aggregation = "seq_mean",
    teacher_lowers_only: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Trust Region Ratio Distillation (RLAD, arXiv 2602.22495): the teacher joins the trust-region anchor.

        log ρ_t = α (log π_θ − log π_old) + (1 − α) clamp(log π_θ − log π_T, −c, c)

    i.e. ρ = π_θ / π_anchor with log π_anchor = α log π_old + (1 − α) log π_T,
    and the clamp c (`teacher_clamp`; None: none) keeps ρ finite where the
    teacher finds a sampled token very unlikely. α = 1 is exactly GRPO.

    `teacher_lowers_only` (the `rakd_lower` method) keeps the teacher term only
    where it lowers the ratio below GRPO's, min(clamp(log π_θ − log π_T, −c, c),
    log π_θ − log π_old): where the student is surer of a sampled token than the
    teacher, TRRD's ratio starts above 1 and the clip takes the gradient of a
    positive-advantage token before any update; there this variant falls back to
    GRPO's ratio, and the teacher only widens the trust region toward tokens it
    prefers.
    """
    teacher_log_ratio = logprobs - teacher_logprobs.detach()  # the teacher is frozen
    old_log_ratio = logprobs - old_logprobs.detach()
    clamped = clamp_log_ratio(teacher_log_ratio, teacher_clamp)
    if teacher_lowers_only:
        lowers = clamped < old_log_ratio
        clamped = torch.where(lowers, clamped, old_log_ratio)
    log_ratio = alpha * old_log_ratio + (1.0 - alpha) * clamped
    loss, metrics = clipped_surrogate(log_ratio, advantages, mask, eps_low=eps_low, eps_high=eps_high, agg=agg)
    metrics.update(
        teacher_clamp_frac=masked_stat(clamp_binds(teacher_log_ratio, teacher_clamp), mask, "mean"),
        kl_student_teacher=float(masked_mean(k3_kl(logprobs.detach(), teacher_logprobs.detach()), mask)),
    )
    if teacher_lowers_only:
        metrics["teacher_term_frac"] = masked_stat(lowers, mask, "mean")
    return loss, metrics


def opd_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg: Aggregation = "token_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """On-policy distillation: policy gradient with per-token advantage sg[log π_T − log π_θ].

    Importance-weighted by ρ = π_θ / π_old so several passes over one batch
    stay on-policy in expectation; at π_θ = π_old the gradient is
    −A_t ∇ log π_θ, which lowers the per-token reverse KL to the teacher.
    """
    token_adv = (teacher_logprobs - logprobs).detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    loss = aggregate(-ratio * token_adv, mask, agg)
    metrics = {
        "reverse_kl": float(masked_mean(-token_adv, mask)),
        "ratio_mean": masked_stat(ratio, mask, "mean"),
        "ratio_max": masked_stat(ratio, mask, "max"),
    }
    return loss, metrics
