"""Batches as the trainers see them: (question, completion) pairs packed like rollouts, and the per-token tensors
one forward pass gives a loss."""

from __future__ import annotations

import hashlib

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
    model: PreTrainedModel,
    teacher: PreTrainedModel,
    batch: Rollouts,
    top_k: int,
    target: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """What the healing loss reads, from one teacher pass (no grad; none when `target` brings the teacher's
    distributions) and one student pass (with grad) over the batch: the student's `logprobs` (B, T) of the trace's
    tokens, `forward_kl` (B, T) from the teacher's top-`top_k` distribution to the student's at each completion
    position, and `mask` (B, T)."""
    device = next(model.parameters()).device
    logprobs, forward_kl = completion_kd(model, teacher, batch, top_k, packed=packs_forests(device), target=target)
    return {"logprobs": logprobs, "forward_kl": forward_kl, "mask": batch.completion_mask.to(device).float()}


class TeacherTargets:
    """The teacher's top-k distributions at each healing pair's completion positions, kept from the batch that
    first scored the pair: the epochs after the first read them instead of running the teacher again (its pass was
    about a third of a healing step). Kept to `max_bytes`; past it, pairs not kept are scored every time. A batch
    with a pair not kept runs the teacher over the whole batch and keeps what it lacks; a kept pair's distributions
    never change. Saved with each checkpoint (`tensors`, `load`), so that a resumed run reads what an unbroken one
    read."""

    def __init__(self, max_bytes: int = 2**30):
        self.max_bytes, self.bytes = max_bytes, 0
        self.kept: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def key(pair: tuple[str, str]) -> str:
        return hashlib.sha1("\0".join(pair).encode("utf-8")).hexdigest()

    def lookup(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The batch's targets in row order when every pair is kept, else None."""
        found = [self.kept.get(self.key(pair)) for pair in pairs]
        if not found or any(f is None for f in found):
            return None
        ids, logprobs, tail = zip(*found)
        return torch.cat(ids).long(), torch.cat(logprobs), torch.cat(tail)

    def merge(self, pairs: list[tuple[str, str]], batch: Rollouts, fresh: tuple) -> tuple:
        """The batch's targets: a kept pair's kept ones, the others from `fresh` (`teacher_targets` of the batch),
        which are kept while they fit."""
        counts = batch.completion_mask.sum(-1).tolist()
        rows = zip(*(part.cpu().split(counts) for part in fresh))
        merged = []
        for pair, (ids, logprobs, tail) in zip(pairs, rows):
            key = self.key(pair)
            if key not in self.kept:
                size = _entry_bytes(ids, logprobs, tail)
                if self.bytes + size > self.max_bytes:
                    merged.append((ids, logprobs, tail))
                    continue
                self.kept[key] = (ids.to(torch.int32), logprobs.float().clone(), tail.float().clone())
                self.bytes += size
            kept = self.kept[key]
            merged.append((kept[0].long(), kept[1], kept[2]))
        ids, logprobs, tail = zip(*merged)
        return torch.cat(ids), torch.cat(logprobs), torch.cat(tail)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything kept as flat tensors (safetensors holds no strings: the keys are their hex digits' bytes)."""
        keys = list(self.kept)
        if not keys:
            return {}
        ids, logprobs, tail = zip(*(self.kept[k] for k in keys))
        return {
            "keys": torch.tensor([list(k.encode("ascii")) for k in keys], dtype=torch.uint8),
            "counts": torch.tensor([len(t) for t in tail], dtype=torch.int64),
            "ids": torch.cat(ids).contiguous(),
            "logprobs": torch.cat(logprobs).contiguous(),
            "tail": torch.cat(tail).contiguous(),
        }

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.kept, self.bytes = {}, 0
        if not tensors:
            return
        counts = tensors["counts"].tolist()
        parts = zip(*(tensors[name].split(counts) for name in ("ids", "logprobs", "tail")))
        for key, (ids, logprobs, tail) in zip(tensors["keys"], parts):
            self.kept[bytes(key.tolist()).decode("ascii")] = (ids, logprobs, tail)
            self.bytes += _entry_bytes(ids, logprobs, tail)


def _entry_bytes(ids, logprobs, tail) -> int:
    """A kept pair's size: 4-byte token ids, float32 log-probabilities and tail."""
    return 4 * (ids.numel() + logprobs.numel() + tail.numel())
