"""Width pruning: each layer's feed-forward channels kept by activation importance (Minitron, Muralidharan et al.
2024): channel j of a layer's MLP matters by the mean magnitude of its activation, act(gate_j) x up_j, the input
of the down projection, over the calibration tokens; the `keep` channels of most importance stay in every layer
(rows of gate and up, columns of down), the others go. Minitron found width pruning kinder than depth pruning,
most of all on arithmetic."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def ffn_importance(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """(layers, intermediate) mean |activation| of every MLP channel at the positions `read` (B, T bool) marks."""
    layers = model.model.layers
    sums = torch.zeros(len(layers), model.config.intermediate_size)

    def recorder(index: int):
        def hook(_module, args):
            sums[index] += args[0][read].abs().float().sum(0).cpu()

        return hook

    hooks = [layer.mlp.down_proj.register_forward_pre_hook(recorder(i)) for i, layer in enumerate(layers)]
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return sums / max(1, int(read.sum()))


def kept_channels(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """(layers, keep) the indices of each layer's `keep` most important channels, ascending."""
    if not 1 <= keep <= importance.shape[1]:
        raise ValueError(f"a layer keeps 1..{importance.shape[1]} feed-forward channels, not {keep}")
    return importance.topk(keep, dim=1).indices.sort(dim=1).values


@torch.no_grad()
def prune_ffn(model: PreTrainedModel, channels: torch.Tensor) -> PreTrainedModel:
    """`model` with each layer's MLP cut to its `channels` (layers, keep) in place: gate and up keep those rows,
    down those columns; `config.intermediate_size` follows."""
    for layer, kept in zip(model.model.layers, channels):
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, len(kept), bias=old.bias is not None, dtype=old.weight.dtype)
            new.weight.copy_(old.weight[kept])
            if old.bias is not None:
                new.bias.copy_(old.bias[kept])
            setattr(mlp, name, new.to(old.weight.device))
        old = mlp.down_proj
        new = torch.nn.Linear(len(kept), old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
        new.weight.copy_(old.weight[:, kept])
        if old.bias is not None:
            new.bias.copy_(old.bias)
        mlp.down_proj = new.to(old.weight.device)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(kept)
    model.config.intermediate_size = int(channels.shape[1])
    return model
