"""Log-probabilities of sampled completions under a model: plain padded passes, or prefix forests on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from rakd.rollout.batch import Rollouts, batch_ids, position_ids, select_rows, trimmed
from rakd.rollout.forests import _forest_forward, forest_logprobs, packs_forests, prefix_forests
from rakd.rollout.head import forest_head_logprobs, splits_head
from rakd.rollout.masks import attention_mask_4d, no_cudnn_attention


def forward_completion(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits (B, T, V) that predict each completion token, from one forward pass over prompt+completion."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    full = attention_mask_4d(model, mask, ids.shape[1])
    with no_cudnn_attention(ids.device):
        logits = model(input_ids=ids, attention_mask=full, position_ids=position_ids(mask), use_cache=False).logits
    start = prompt_ids.shape[1]
    return logits[:, start - 1 : -1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(token) at each position from logits (B, T, V) and tokens (B, T)."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def completion_logits(model: PreTrainedModel, rollouts: Rollouts, packed: bool | None = None) -> torch.Tensor:
    """`forward_completion`'s logits (B, T, V), each predicting a completion token. Packed (the default where
    `packs_forests`), from one forward pass over the batch as a prefix forest: each distinct prompt and
    completion prefix computed once, and gradients flow to it from every row that shares it; else one plain
    padded pass. Entries past a row's end are arbitrary (masked by the caller)."""
    rows, width = len(rollouts.texts), rollouts.completion_ids.shape[1]
    if not rows:
        raise ValueError("forest_logits of an empty batch")
    device = next(model.parameters()).device
    if not (packs_forests(device) if packed is None else packed):
        return forward_completion(model, *batch_ids(rollouts, device))
    (forest,) = prefix_forests(rollouts, rows)
    flat = _forest_forward(model, forest)
    logits = flat[forest.predictors.to(flat.device)][torch.argsort(forest.rows).to(flat.device)]
    return F.pad(logits, (0, 0, 0, width - logits.shape[1]))


def score_completions(
    model: PreTrainedModel,
    rollouts: Rollouts,
    batch_size: int | None = None,
    temperature: float = 1.0,
    packed: bool | None = None,
) -> torch.Tensor:
    """Per-token log-probabilities (B, T) of the sampled tokens under `model` on logits / `temperature`, no grad
    (0 past each row's end), in chunks of at most `batch_size` rows (default: 64 on a CPU, 256 on an
    accelerator). Packed (the default where `packs_forests`), each chunk is a prefix forest (`prefix_forests`):
    each distinct prompt and each distinct completion prefix is computed once; else chunks of rows of similar
    length go through as plain padded passes over prompt + completion."""
    device = next(model.parameters()).device
    batch_size = batch_size or (64 if device.type == "cpu" else 256)
    scores = torch.zeros(rollouts.completion_ids.shape, dtype=torch.float32)
    with torch.no_grad():
        if packs_forests(device) if packed is None else packed:
            per_forest = forest_head_logprobs if splits_head(model) else forest_logprobs
            for forest in prefix_forests(rollouts, batch_size):
                logprobs = per_forest(model, forest, temperature).cpu()
                scores[forest.rows, : logprobs.shape[1]] = logprobs
            return scores
        lengths = rollouts.prompt_mask.sum(-1) + rollouts.completion_mask.sum(-1)
        for rows in torch.argsort(lengths, stable=True).split(batch_size):
            chunk = trimmed(select_rows(rollouts, rows))
            ids = batch_ids(chunk, device)
            logits = forward_completion(model, *ids)
            logprobs = token_logprobs(logits, ids[2], temperature).float().cpu()
            scores[rows, : logprobs.shape[1]] = logprobs * chunk.completion_mask
    return scores


class TorchScorer:
    """Per-token log-probs of a batch's completions under `model` in this process (the teacher's, or π_old's)."""

    def __init__(self, model):
        self.teacher = model

    def __call__(self, batch: Rollouts, temperature: float) -> torch.Tensor:
        return score_completions(self.teacher, batch, temperature=temperature)
