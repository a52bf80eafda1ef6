"""Masked reductions shared by every loss.

Shapes: per-token tensors are (B, T); `mask` is 1.0 on completion tokens and
0.0 on prompt and padding. Every mean guards its denominator, so an empty mask
gives a finite (zero) loss instead of NaN.
"""

from __future__ import annotations

import torch

from rakd.schema import Aggregation


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is set; 0 when none is."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, agg: Aggregation) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    `seq_mean`: mean over each sequence's tokens, then over the B sequences
    (1/G Σ_i 1/|y_i| Σ_t, as in GRPO); `token_mean`: one mean over all tokens.
    """
    mask = mask.to(per_token.dtype)
    if agg == "token_mean":
        return masked_mean(per_token, mask)
    if agg == "seq_mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean() if per_seq.numel() else per_token.sum() * 0.0
    raise ValueError(f"unknown aggregation {agg!r}; expected 'seq_mean' or 'token_mean'")


def masked_stat(values: torch.Tensor, mask: torch.Tensor, reduce: str) -> float:
    """A float metric (`mean`, `max`, `frac` of true values) over masked positions."""
    picked = values.detach()[mask.bool()]
    if picked.numel() == 0:
        return 0.0
    if reduce == "max":
        return float(picked.max())
    return float(picked.to(torch.float64).mean())
