"""Attention masks built once per call, and the attention kernels sampling and scoring run under."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

DECODE_ATTENTION = "rakd_grouped_decode"  # the attention `decode_attention` puts a model on (registered below)


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
    if getattr(model.config, "_attn_implementation", "sdpa") in ("sdpa", DECODE_ATTENTION):
        return allowed
    return torch.zeros(allowed.shape, dtype=model.dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(model.dtype).min
    )


def grouped_decode_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' SDPA attention, except for a one-token query (a decode step): there the G query heads that
    share a key-value head are one (G, D) block against that head's (L, D) keys and values, so the cache is read
    once. SDPA given a mask needs the keys and values repeated G times first (transformers' `repeat_kv`, a copy of
    the whole cache at every layer of every step: most of a decode step's memory traffic at RL batch sizes on a
    CPU, as SmolLM2's 9 query heads share 3). Same arithmetic, summed in another order."""
    if query.shape[2] != 1 or dropout > 0 or kwargs.get("output_attentions"):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    scores = torch.matmul(query.reshape(rows, kv_heads, heads // kv_heads, dim), key.transpose(-1, -2))
    scores.mul_(scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:  # (B, 1, 1, L): the same columns for every head
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask)
    out = torch.matmul(scores.softmax(-1).to(value.dtype), value)  # (B, kv heads, G, D)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_ATTENTION, grouped_decode_attention)


@contextlib.contextmanager
def decode_attention(model):
    """Within the block a model on SDPA attends with `grouped_decode_attention` (its decode steps grouped by
    key-value head, everything else SDPA as before); other attention implementations are left as they are."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
