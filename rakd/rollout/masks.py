"""Attention masks built once per call, and the attention kernels sampling and scoring run under."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def no_cudnn_attention(device: torch.device):
    """A context in which SDPA leaves out its cuDNN kernel on CUDA (flash, memory-efficient and math remain).
    cuDNN builds an execution plan for every new shape, about 10 ms of host time each, and sampling and scoring
    meet new shapes all the time: the key length grows every decode step, rows leave the batch, every batch pads to
    its own length (docs/design.md, "Where the step's time goes", has the measurement)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def attention_mask_4d(model, mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """The (B, 1, q, k) mask attention uses, built directly from a left-padded (B, k) mask: causal over the last
    `query_length` keys, pads never attended, and each query always sees itself (a pad query with nothing to
    attend to would give NaN). Passing it skips transformers' per-call mask construction, a third of a decode
    step's time for our small models. Bool for SDPA, additive float otherwise."""
    keys = mask.shape[1]
    rows = torch.arange(keys - query_length, keys, device=mask.device)[:, None]
    allowed = (torch.arange(keys, device=mask.device)[None, :] <= rows) & mask[:, None, None, :].bool()
    return mask_for_model(model, allowed | (torch.arange(keys, device=mask.device)[None, :] == rows))


def mask_for_model(model, allowed: torch.Tensor) -> torch.Tensor:
    """A bool (B, 1, q, k) mask as the model's attention takes it: bool for SDPA, additive float otherwise."""
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=model.dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(model.dtype).min
    )
