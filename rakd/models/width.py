"""Width pruning: each layer's feed-forward channels kept by activation importance (Minitron, Muralidharan et al.
2024): channel j of a layer's MLP matters by the mean magnitude of its activation, act(gate_j) x up_j, the input
of the down projection, over the calibration tokens; the `keep` channels of most importance stay in every layer
(rows of gate and up, columns of down), the others go. Minitron found width pruning kinder than depth pruning,
most of all on arithmetic.

Attention heads go by whole key-value groups (a GQA model's query heads share their group's key and value head, so
a group is the smallest unit that keeps the layout): a group matters by the mean L2 norm of its query heads'
outputs, the input of the output projection, over the same tokens; the `keep` groups of most importance stay in
every layer (their rows of q, k and v, their columns of o) and the head size stays, so `config.head_dim` is set.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def _input_means(model: PreTrainedModel, modules: list, score, ids, mask, read) -> torch.Tensor:
    """(layers, width) the mean over the positions `read` (B, T bool) marks of `score` (N, in) -> (N, width) applied
    to the input of each layer's module in `modules`, from one forward pass."""
    sums: list[torch.Tensor | None] = [None] * len(modules)

    def recorder(index: int):
        def hook(_module, args):
            total = score(args[0][read].float()).sum(0).cpu()
            sums[index] = total if sums[index] is None else sums[index] + total

        return hook

    hooks = [module.register_forward_pre_hook(recorder(i)) for i, module in enumerate(modules)]
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(sums) / max(1, int(read.sum()))


def _most_important(importance: torch.Tensor, keep: int, what: str) -> torch.Tensor:
    """(layers, keep) the indices of each layer's `keep` most important `what`, ascending."""
    if not 1 <= keep <= importance.shape[1]:
        raise ValueError(f"a layer keeps 1..{importance.shape[1]} {what}, not {keep}")
    return importance.topk(keep, dim=1).indices.sort(dim=1).values


def ffn_importance(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """(layers, intermediate) mean |activation| of every MLP channel at the positions `read` (B, T bool) marks."""
    downs = [layer.mlp.down_proj for layer in model.model.layers]
    return _input_means(model, downs, torch.abs, ids, mask, read)


def kept_channels(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """(layers, keep) the indices of each layer's `keep` most important channels, ascending."""
    return _most_important(importance, keep, "feed-forward channels")


def _rows(old: torch.nn.Linear, rows: torch.Tensor) -> torch.nn.Linear:
    """A copy of `old` with only the outputs `rows` (their weights and biases)."""
    new = torch.nn.Linear(old.in_features, len(rows), bias=old.bias is not None, dtype=old.weight.dtype)
    new.weight.copy_(old.weight[rows])
    if old.bias is not None:
        new.bias.copy_(old.bias[rows])
    return new.to(old.weight.device)


def _columns(old: torch.nn.Linear, columns: torch.Tensor) -> torch.nn.Linear:
    """A copy of `old` that reads only the inputs `columns` (its bias whole)."""
    new = torch.nn.Linear(len(columns), old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
    new.weight.copy_(old.weight[:, columns])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    return new.to(old.weight.device)


@torch.no_grad()
def prune_ffn(model: PreTrainedModel, channels: torch.Tensor) -> PreTrainedModel:
    """`model` with each layer's MLP cut to its `channels` (layers, keep) in place: gate and up keep those rows,
    down those columns; `config.intermediate_size` follows."""
    for layer, kept in zip(model.model.layers, channels):
        mlp = layer.mlp
        mlp.gate_proj, mlp.up_proj = _rows(mlp.gate_proj, kept), _rows(mlp.up_proj, kept)
        mlp.down_proj = _columns(mlp.down_proj, kept)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(kept)
    model.config.intermediate_size = int(channels.shape[1])
    return model


def _attention(layer):
    attention = getattr(layer, "self_attn", None)
    if attention is None or not all(hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise ValueError(f"head pruning needs q/k/v/o projections in every layer: {type(layer).__name__} has none")
    return attention


def _head_shape(config) -> tuple[int, int, int]:
    """(query heads, key-value heads, head size) of `config`."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv, getattr(config, "head_dim", None) or config.hidden_size // heads


def kv_group_importance(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, read: torch.Tensor
) -> torch.Tensor:
    """(layers, key-value heads) the mean over the positions `read` (B, T bool) marks of the summed L2 norms of each
    group's query-head outputs (the output projection's input, per head)."""
    heads, kv, head_dim = _head_shape(model.config)

    def group_norms(outputs: torch.Tensor) -> torch.Tensor:  # (N, heads x head_dim) -> (N, kv)
        return outputs.reshape(-1, kv, heads // kv, head_dim).norm(dim=-1).sum(-1)

    outs = [_attention(layer).o_proj for layer in model.model.layers]
    return _input_means(model, outs, group_norms, ids, mask, read)


def kept_groups(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """(layers, keep) the indices of each layer's `keep` most important key-value groups, ascending."""
    return _most_important(importance, keep, "key-value head groups")


@torch.no_grad()
def prune_kv_groups(model: PreTrainedModel, groups: torch.Tensor) -> PreTrainedModel:
    """`model` with each layer's attention cut to its key-value `groups` (layers, keep) in place: q keeps the rows of
    those groups' query heads, k and v the rows of their key-value heads, o the matching columns; the head size
    stays (`config.head_dim`), the head counts follow."""
    heads, kv, head_dim = _head_shape(model.config)
    per_group = heads // kv
    for layer, kept in zip(model.model.layers, groups):
        attention = _attention(layer)
        kv_rows = (kept[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        q_heads = (kept[:, None] * per_group + torch.arange(per_group)).reshape(-1)
        q_rows = (q_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        attention.q_proj = _rows(attention.q_proj, q_rows)
        attention.k_proj = _rows(attention.k_proj, kv_rows)
        attention.v_proj = _rows(attention.v_proj, kv_rows)
        attention.o_proj = _columns(attention.o_proj, q_rows)
        for name, value in (("num_heads", len(q_heads)), ("num_key_value_heads", len(kept))):
            if hasattr(attention, name):
                setattr(attention, name, value)
    keep = int(groups.shape[1])
    model.config.head_dim = head_dim
    model.config.num_key_value_heads = keep
    model.config.num_attention_heads = keep * per_group
    return model
