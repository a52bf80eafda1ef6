"""Batches as the trainers see them: (question, completion) pairs packed like rollouts, and the per-token tensors
one forward pass gives a loss."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rakd.rollout import Rollouts, completion_logits, encode_prompts, packs_forests, token_logprobs
from rakd.rollout.head import completion_kd, completion_logprobs, splits_head


def pack_pairs(tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]]) -> Rollouts:
    """Left-padded prompts and right-padded completions (each ending in EOS) as a Rollouts batch."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [q for q, _ in pairs])
    encoded = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, c in pairs]
    width = max(len(ids) for ids in encoded)
    completion_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in encoded])
    completion_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in encoded])
    return Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, [c for _, c in pairs])


def batch_tensors(
    model: PreTrainedModel, batch: Rollouts, temperature: float = 1.0, *, logits: bool = False
) -> dict[str, torch.Tensor]:
    """The per-token tensors a loss may ask for, from one forward pass of `model` (with grad): `logprobs` (B, T)
    on logits / `temperature` (the sampling temperature), `mask` (B, T), and either `entropy` (B, T, no gradient)
    or, with `logits`, the raw `student_logits` (B, T, V). The rows go through as one prefix forest on a
    CPU (`packs_forests`: a prefix that several rows share is computed once and its gradient is the sum of theirs;
    one plain pass on accelerators). Without `logits`, where the model allows it (`splits_head`), the output head
    runs only at completion positions, a chunk at a time (`rakd.rollout.head`): no (B, T, V) tensor is made."""
    device = next(model.parameters()).device
    mask = batch.completion_mask.to(device).float()
    if not logits and splits_head(model):
        logprobs, entropy = completion_logprobs(model, batch, temperature, packed=packs_forests(device))
        return {"logprobs": logprobs, "mask": mask, "entropy": entropy}
    full = completion_logits(model, batch)
    logprobs = token_logprobs(full, batch.completion_ids.to(full.device), temperature)
    return {"logprobs": logprobs, "mask": mask, "student_logits": full.float()}


def kd_tensors(
    model: PreTrainedModel, teacher: PreTrainedModel, batch: Rollouts, top_k: int
) -> dict[str, torch.Tensor]:
    """What the healing loss reads, from one teacher pass (no grad) and one student pass (with grad) over the
    batch: the student's `logprobs` (B, T) of the trace's tokens, `forward_kl` (B, T) from the teacher's top-`top_k`
    distribution to the student's at each completion position, and `mask` (B, T)."""
    device = next(model.parameters()).device
    logprobs, forward_kl = completion_kd(model, teacher, batch, top_k, packed=packs_forests(device))
    return {"logprobs": logprobs, "forward_kl": forward_kl, "mask": batch.completion_mask.to(device).float()}
