"""Initialise a student from a teacher by keeping every k-th decoder layer."""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel


def kept_layers(num_layers: int, every_k: int) -> list[int]:
    """Indices 0, k, 2k, ... of the layers a k-subset keeps."""
    if every_k < 1:
        raise ValueError(f"every_k must be >= 1, got {every_k}")
    return list(range(0, num_layers, every_k))


def layer_subset(teacher: PreTrainedModel, every_k: int) -> PreTrainedModel:
    """A trainable copy of `teacher` holding only layers 0, k, 2k, ... (embeddings, norm and head kept). The teacher
    is usually frozen (`requires_grad_(False)`) when this runs, and a deep copy would keep it so."""
    decoder = getattr(teacher, "model", None)
    if decoder is None or not hasattr(decoder, "layers"):
        raise TypeError(f"layer_subset needs a decoder with `.model.layers`; got {type(teacher).__name__}")
    keep = kept_layers(len(decoder.layers), every_k)
    student = copy.deepcopy(teacher)
    student.model.layers = torch.nn.ModuleList(student.model.layers[i] for i in keep)
    for new_index, layer in enumerate(student.model.layers):
        # The KV cache is indexed by layer_idx; it must follow the new positions.
        layer.self_attn.layer_idx = new_index
    student.config.num_hidden_layers = len(keep)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in keep]
    return student.requires_grad_(True)
