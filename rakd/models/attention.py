"""Grouped-query attention without copying the keys and values, on the CPU.

transformers' SDPA attention (`sdpa_attention_forward`) repeats a GQA model's keys and values to one copy per query
head (`repeat_kv`, a `reshape` of an expanded view: a full copy) whenever it is given a mask, because on CUDA the
kernels that take both a mask and `enable_gqa` fall back to the slow math path. On the CPU that does not hold: the
CPU flash kernel takes a mask with `enable_gqa=True`, gives the same numbers, and the copy was a third of a decode
step (SmolLM2 has 9 query heads to 3 key-value heads: every decode step copied the whole cache three times over,
in every layer; `bench/README.md` has the profile). Every rakd pass gives attention a mask (the 4-D masks of
rakd.rollout), so every pass paid it.

`install()` registers `gqa_sdpa_attention` as transformers' "sdpa" attention (AttentionInterface): on a CPU tensor
of a GQA module, outside tracing and export, it calls SDPA with `enable_gqa=True`; anywhere else it is
transformers' own function, unchanged. The models rakd loads or builds call it (rakd.models.load, rakd.models.zoo).
"""

from __future__ import annotations

import torch

_ORIGINAL = None


def _in_export() -> bool:
    onnx = getattr(torch, "onnx", None)
    exporting = bool(onnx and getattr(onnx, "is_in_onnx_export", lambda: False)())
    return exporting or torch.jit.is_tracing() or torch.compiler.is_compiling()


def gqa_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with the keys and values of a GQA module read in place on the CPU."""
    groups = getattr(module, "num_key_value_groups", 1)
    if (
        groups == 1
        or key.device.type != "cpu"
        or isinstance(key, torch.fx.Proxy)
        or kwargs.get("output_attentions")
        or kwargs.get("head_mask") is not None
        or _in_export()
    ):
        return _ORIGINAL(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    if is_causal is None:
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=True,
    )
    return output.transpose(1, 2).contiguous(), None


def install() -> None:
    """Make `gqa_sdpa_attention` transformers' "sdpa" attention (once; later calls do nothing)."""
    global _ORIGINAL
    if _ORIGINAL is not None:
        return
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    _ORIGINAL = sdpa_attention_forward
    AttentionInterface.register("sdpa", gqa_sdpa_attention)
