"""A batch of rollouts and what every consumer does to one: encode prompts, mask completions, stack, trim, select.

Prompts are always left-padded and completions right-padded; position ids always follow the attention mask:
right padding or positions counted from the padded start silently change what a model computes for the shorter
prompts of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from rakd.prompt import model_prompt

# A prefix every prompt of a batch begins with (a chat template's system prompt) is computed once, its keys and
# values shared by every row, when it is at least this long; shorter ones are not worth a second forward.
MIN_SHARED_PREFIX = 8


@dataclass
class Rollouts:
    """B sampled completions; tensors are (B, P) for prompts and (B, T) for completions."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor  # 1 up to and including the first EOS
    texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids, mask) for `questions` in the model's prompt format (its chat template when it has one, as
    validation asks it; else the project's); the tokenizer is left as it was."""
    texts, special = zip(*(model_prompt(tokenizer, q) for q in questions)) if questions else ((), (True,))
    batch = tokenizer(
        list(texts), padding=True, padding_side="left", return_tensors="pt", add_special_tokens=special[0]
    )
    return batch["input_ids"], batch["attention_mask"]


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (pads sit at 0 and are masked anyway)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 for tokens up to and including each row's first EOS, 0 after it."""
    is_eos = (ids == eos_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # EOS tokens strictly before this position
    return (eos_before == 0).long()


def left_padded(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    """(B_i, P_i) tensors stacked into one (sum B_i, max P_i), each padded on the left with `value`."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (width - t.shape[1], 0), value=value) for t in tensors])


def right_padded(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    """(B_i, T_i) tensors stacked into one (sum B_i, max T_i), each padded on the right with `value`."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """One batch from several (prompts re-padded on the left, completions on the right)."""
    if len(parts) == 1:
        return parts[0]
    return Rollouts(
        left_padded([p.prompt_ids for p in parts], pad_id),
        left_padded([p.prompt_mask for p in parts], 0),
        right_padded([p.completion_ids for p in parts], pad_id),
        right_padded([p.completion_mask for p in parts], 0),
        [text for p in parts for text in p.texts],
    )


def assemble(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], tokenizer) -> Rollouts:
    """Rollouts from a sampler's (prompt ids, prompt mask, completion ids) chunks: stacked once, each completion
    masked up to its first EOS and decoded."""
    pad = tokenizer.pad_token_id
    completion_ids = right_padded([c for _, _, c in parts], pad)
    cmask = completion_mask(completion_ids, tokenizer.eos_token_id)
    # a pad the model emitted (only an untrained one does) ends its completion: no masked holes inside a row,
    # whose later tokens the sampler computed with the pad in context but a scorer would compute without it
    emitted_pad = ((completion_ids == pad) & (completion_ids != tokenizer.eos_token_id)).long()
    cmask &= (emitted_pad.cumsum(-1) == 0).long()
    texts = tokenizer.batch_decode(completion_ids * cmask + pad * (1 - cmask), skip_special_tokens=True)
    return Rollouts(
        left_padded([ids for ids, _, _ in parts], pad),
        left_padded([m for _, m, _ in parts], 0),
        completion_ids,
        cmask,
        texts,
    )


def batch_ids(batch: Rollouts, device: torch.device) -> list[torch.Tensor]:
    """(prompt ids, prompt mask, completion ids, completion mask) on `device`: `forward_completion`'s arguments."""
    return [t.to(device) for t in (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)]


def trimmed(rollouts: Rollouts) -> Rollouts:
    """The same rows without the prompt columns that are padding in every row (on the left) and the completion
    columns past every row's end (on the right): what a forward pass over them would waste."""
    prompt_cols = rollouts.prompt_mask.any(0).nonzero()
    first = int(prompt_cols.min()) if len(prompt_cols) else rollouts.prompt_mask.shape[1]
    used = rollouts.completion_mask.any(0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1  # the last column any row uses
    return Rollouts(
        rollouts.prompt_ids[:, first:],
        rollouts.prompt_mask[:, first:],
        rollouts.completion_ids[:, :width],
        rollouts.completion_mask[:, :width],
        rollouts.texts,
    )


def select_rows(rollouts: Rollouts, rows: torch.Tensor) -> Rollouts:
    return Rollouts(
        rollouts.prompt_ids[rows],
        rollouts.prompt_mask[rows],
        rollouts.completion_ids[rows],
        rollouts.completion_mask[rows],
        [rollouts.texts[i] for i in rows.tolist()],
    )
