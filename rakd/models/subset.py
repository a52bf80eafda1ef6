"""Initialise a student from a teacher by keeping some of its decoder layers (every k-th, or a chosen list)."""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel


def kept_layers(num_layers: int, every_k: int) -> list[int]:
    """Indices 0, k, 2k, ... of the layers a k-subset keeps."""
    if every_k < 1:
        raise ValueError(f"every_k must be >= 1, got {every_k}")
    return list(range(0, num_layers, every_k))


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """`model.model.layers`, the decoder layers a subset or a pruning works on; a TypeError naming the class else."""
    decoder = getattr(model, "model", None)
    if decoder is None or not hasattr(decoder, "layers"):
        raise TypeError(f"a layer subset needs a decoder with `.model.layers`; got {type(model).__name__}")
    return decoder.layers


def keep_layers(teacher: PreTrainedModel, kept: list[int], *, copy_model: bool = True) -> PreTrainedModel:
    """A model of `teacher`'s layers `kept` (ascending), its embeddings, norm and head kept: a trainable copy (the
    teacher is usually frozen when this runs, and a deep copy would keep it so), or `teacher` itself cut down."""
    total = len(decoder_layers(teacher))
    decoder = teacher.model
    if not kept or sorted(set(kept)) != list(kept) or kept[0] < 0 or kept[-1] >= total:
        raise ValueError(f"kept layers must be distinct, ascending indices in 0..{total - 1}; got {kept}")
    if copy_model:  # the layers left out are not copied
        layers, decoder.layers = decoder.layers, torch.nn.ModuleList(decoder.layers[i] for i in kept)
        try:
            student = copy.deepcopy(teacher)
        finally:
            decoder.layers = layers
    else:
        student = teacher
        student.model.layers = torch.nn.ModuleList(student.model.layers[i] for i in kept)
    for new_index, layer in enumerate(student.model.layers):
        # The KV cache is indexed by layer_idx; it must follow the new positions.
        layer.self_attn.layer_idx = new_index
    student.config.num_hidden_layers = len(kept)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in kept]
    return student.requires_grad_(True) if copy_model else student


def layer_subset(teacher: PreTrainedModel, every_k: int) -> PreTrainedModel:
    """A trainable copy of `teacher` holding only layers 0, k, 2k, ... (embeddings, norm and head kept)."""
    return keep_layers(teacher, kept_layers(len(decoder_layers(teacher)), every_k))
