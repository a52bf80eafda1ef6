"""The output head only where a loss reads it, a chunk of positions at a time.

A causal LM's logits are its head (d_model x vocabulary) applied to every position's last hidden state. A loss on
completions reads only the positions that predict a completion token, and most of them only the log-probability
of the token that was there. So the backbone runs once (`completion_states`: a prefix forest on a CPU, else a
padded pass), and the head runs at each distinct predicting position once (`head_logprobs`), a chunk of positions
at a time in both passes: the (positions x vocabulary) logits never exist whole, the backward pass recomputes each
chunk's, and a step's largest fp32 tensor is one chunk's (`HEAD_CHUNK_ELEMENTS`) whatever its rows, positions and
vocabulary. Prompt positions and padding pay nothing for the vocabulary. The same idea as Liger Kernel's fused
linear cross-entropy, for a per-token consumer: the gradient with respect to each log-prob comes from the loss.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel

from rakd.rollout.batch import Rollouts, batch_ids, position_ids
from rakd.rollout.forests import PrefixForest, forest_pass, prefix_forests
from rakd.rollout.masks import attention_mask_4d, no_cudnn_attention

# The most logits one chunk of the head holds: 2^22 floats, 16 MiB in fp32 (about 85 positions of a 49k-token
# vocabulary; a 512-token vocabulary's batch is one chunk). Under 32 MiB on purpose: glibc serves larger blocks
# with a fresh mmap each time, and writing fresh pages made every elementwise pass over a 32 MiB chunk about 10x
# slower than over a reused 16 MiB one (2-core AMD EPYC: 21.7 against 2.2 ms per 2^23 elements).
HEAD_CHUNK_ELEMENTS = 2**22

# The log-mass of an empty tail (top-k holding the whole vocabulary), finite so that its terms are 0, not NaN.
TAIL_FLOOR = math.log(1e-30)

# Architectures whose logits are exactly `lm_head(base_model(...).last_hidden_state)`: no logit scaling or
# soft-capping after the head (GGUF export writes these two).
PLAIN_HEAD_TYPES = ("llama", "qwen2")


def splits_head(model: PreTrainedModel) -> bool:
    """Whether the head can run apart from the backbone on `model`: a plain linear head on an architecture with no
    logit post-processing, and a model that is not sharded (FSDP gathers a module's weights in its own forward)."""
    from torch.distributed.fsdp import FSDPModule

    head = model.get_output_embeddings()
    return (
        isinstance(head, torch.nn.Linear)
        and getattr(model.config, "model_type", None) in PLAIN_HEAD_TYPES
        and not isinstance(model, FSDPModule)
    )


def forest_states(model: PreTrainedModel, forest: PrefixForest) -> torch.Tensor:
    """The backbone's last hidden states (S * L, H) of every token of the forest's sequences, flattened."""
    return forest_pass(model.base_model, model, forest).last_hidden_state.flatten(0, 1)


def forest_head_logprobs(model: PreTrainedModel, forest: PrefixForest, temperature: float = 1.0) -> torch.Tensor:
    """`forest_logprobs` with the head only at the states that predict a completion token: per-token
    log-probabilities (R, T) of the forest's rows, 0 past a row's end."""
    states = forest_states(model, forest)
    valid = forest.valid.to(states.device)
    tokens = forest.ids.to(states.device).flatten()[forest.paths.to(states.device)]
    head = model.get_output_embeddings()
    picked, _ = head_logprobs(states, head, forest.predictors.to(states.device)[valid], tokens[valid], temperature)
    return _spread(valid, picked)


def completion_states(model: PreTrainedModel, rollouts: Rollouts, packed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's last hidden states (M, H), flattened, and for each completion token (B, T) the index of the
    state that predicts it (0 past a row's end). Packed, the rows go through as one prefix forest (a shared prefix
    is computed once and its gradient is the sum of its rows'); else one padded pass over prompt + completion."""
    device = next(model.parameters()).device
    if packed:
        (forest,) = prefix_forests(rollouts, len(rollouts.texts))
        index = torch.zeros(rollouts.completion_ids.shape, dtype=torch.long)
        index[forest.rows, : forest.predictors.shape[1]] = forest.predictors
        return forest_states(model, forest), index.to(device)
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch_ids(rollouts, device)
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    with no_cudnn_attention(device):
        states = model.base_model(
            input_ids=ids,
            attention_mask=attention_mask_4d(model, mask, ids.shape[1]),
            position_ids=position_ids(mask),
            use_cache=False,
        ).last_hidden_state
    rows, width = completion_ids.shape
    start = prompt_ids.shape[1] - 1  # the state before each completion token predicts it
    index = torch.arange(rows, device=device)[:, None] * ids.shape[1] + start + torch.arange(width, device=device)
    return states.flatten(0, 1), index


def _compute_dtype(device_type: str, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's where it is on (as the model's own head would), else the
    weight's."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _spread(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-entry `values` (N,) laid out where `mask` (B, T) is set, 0 elsewhere (gradients flow back)."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=values.device).masked_scatter(mask, values)


def _chunk_logits(states, weight, bias, temperature: float) -> torch.Tensor:
    """float32 logits of `states` (n, H), divided by `temperature`, computed into one fresh tensor (the matmul's
    output is the only one a pass allocates: bias and temperature apply in place)."""
    logits = states @ weight.T
    if bias is not None:
        logits += bias
    logits = logits.float()
    return logits if temperature == 1.0 else logits.div_(temperature)


class _HeadLogprobs(torch.autograd.Function):
    """log π(token) and the entropy of π at N entries that read U distinct states, the head a chunk of states at a
    time; the backward pass recomputes each chunk's logits instead of keeping them."""

    @staticmethod
    def forward(ctx, states, weight, bias, slot, tokens, temperature, chunk, dtype):
        # states (U, H), weight (V, H), bias (V,) or None; slot (N,) the state each entry reads, tokens (N,)
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        lse = torch.empty(len(states), dtype=torch.float32, device=states.device)
        entropy = torch.empty_like(lse)
        picked = torch.empty(len(slot), dtype=torch.float32, device=states.device)
        scratch = torch.empty(min(chunk, len(states)), len(weight), dtype=torch.float32, device=states.device)
        with torch.autocast(states.device.type, enabled=False):
            for start in range(0, len(states), chunk):
                end = min(start + chunk, len(states))
                logits = _chunk_logits(states[start:end].to(dtype), w, b, temperature)
                lse[start:end] = torch.logsumexp(logits, -1)
                here = ((slot >= start) & (slot < end)).nonzero().squeeze(-1)
                picked[here] = logits[slot[here] - start, tokens[here]] - lse[slot[here]]
                probs = torch.sub(logits, lse[start:end, None], out=scratch[: end - start]).exp_()
                expected = torch.bmm(probs[:, None], logits[:, :, None])  # E_π[logit] without a product tensor
                entropy[start:end] = lse[start:end] - expected.flatten()
        ctx.save_for_backward(states, weight, bias, slot, tokens, lse)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        entropy = entropy[slot]
        ctx.mark_non_differentiable(entropy)
        return picked, entropy

    @staticmethod
    def backward(ctx, grad_picked, _grad_entropy):
        states, weight, bias, slot, tokens, lse = ctx.saved_tensors
        dtype, temperature = ctx.dtype, ctx.temperature
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        grad_states = torch.zeros_like(states) if ctx.needs_input_grad[0] else None
        grad_weight = None  # the first chunk's product, then each further chunk's added in place
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        # d picked_n / d logits_u = (onehot(token_n) - softmax_u) / T for the state u = slot_n it reads
        per_state = torch.zeros(len(states), dtype=torch.float32, device=states.device)
        per_state.index_add_(0, slot, grad_picked.float())
        with torch.autocast(states.device.type, enabled=False):
            for start in range(0, len(states), ctx.chunk):
                end = min(start + ctx.chunk, len(states))
                chunk_states = states[start:end].to(dtype)
                logits = _chunk_logits(chunk_states, w, b, temperature)  # in place from here: softmax, its gradient
                grad = logits.sub_(lse[start:end, None]).exp_().mul_(-per_state[start:end, None])
                here = ((slot >= start) & (slot < end)).nonzero().squeeze(-1)
                grad.index_put_((slot[here] - start, tokens[here]), grad_picked[here].float(), accumulate=True)
                grad = (grad if temperature == 1.0 else grad.div_(temperature)).to(dtype)
                if grad_states is not None:
                    grad_states[start:end] = (grad @ w).to(states.dtype)
                if grad_weight is None:
                    grad_weight = (grad.T @ chunk_states).float()
                elif dtype == torch.float32:
                    grad_weight.addmm_(grad.T, chunk_states)  # no (V, H) product tensor per chunk
                else:
                    grad_weight += (grad.T @ chunk_states).float()
                if grad_bias is not None:
                    grad_bias += grad.float().sum(0)
        if grad_weight is None:  # no state read
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None and ctx.needs_input_grad[2] else None
        return grad_states, grad_weight, grad_bias, None, None, None, None, None


def head_logprobs(
    states: torch.Tensor,
    head: torch.nn.Linear,
    index: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_elements: int = HEAD_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(token) on logits / `temperature` and the entropy of π (no gradient) for N entries: entry n is token
    `tokens[n]` predicted by state `states[index[n]]` (states (M, H), index and tokens (N,)). The head runs once
    per distinct state read, `chunk_elements` // vocabulary states at a time; both are (N,) float32."""
    slots, slot = torch.unique(index, return_inverse=True)
    chunk = max(1, chunk_elements // head.out_features)
    dtype = _compute_dtype(states.device.type, head.weight)
    return _HeadLogprobs.apply(states[slots], head.weight, head.bias, slot, tokens, temperature, chunk, dtype)


@torch.no_grad()
def head_topk(
    states: torch.Tensor,
    head: torch.nn.Linear,
    index: torch.Tensor,
    k: int,
    chunk_elements: int = HEAD_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A teacher's distribution at N entries (entry n read from state `states[index[n]]`) as its `k` most likely
    tokens (N, k), their log-probabilities (N, k) and the log of the mass left outside them (N,; log 1e-30 when
    none is), the head a chunk of states at a time (the form validation's KL reads)."""
    slots, slot = torch.unique(index, return_inverse=True)
    chunk = max(1, chunk_elements // head.out_features)
    dtype = _compute_dtype(states.device.type, head.weight)
    w, b = head.weight.to(dtype), None if head.bias is None else head.bias.to(dtype)
    ids, logprobs, tails = [], [], []
    with torch.autocast(states.device.type, enabled=False):
        for start in range(0, len(slots), chunk):
            full = torch.log_softmax(_chunk_logits(states[slots[start : start + chunk]].to(dtype), w, b, 1.0), -1)
            top = full.topk(min(k, full.shape[-1]), dim=-1)
            ids.append(top.indices)
            logprobs.append(top.values)
            # the tail's log-mass summed outside the top tokens (1 - their sum would round to noise in fp32)
            tails.append(torch.logsumexp(full.scatter(-1, top.indices, -torch.inf), -1).clamp(min=TAIL_FLOOR))
    return torch.cat(ids)[slot], torch.cat(logprobs)[slot], torch.cat(tails)[slot]


def _kd_chunk(states, weight, bias, tokens, top_ids, top_logprobs, tail):
    """log π_S(token) and KL(π_T ‖ π_S) over the teacher's top tokens and its tail lumped into one outcome, for a
    chunk of entries: (n,) and (n,)."""
    logits = _chunk_logits(states, weight, bias, 1.0)
    logprobs = torch.log_softmax(logits, -1)
    picked = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    student_top = logprobs.gather(-1, top_ids)
    outside = logprobs.scatter(-1, top_ids, torch.finfo(logprobs.dtype).min)  # a finite floor: no NaN gradient
    student_tail = torch.logsumexp(outside, -1).clamp(min=TAIL_FLOOR)  # as the teacher's: an empty tail adds 0
    kl = (top_logprobs.exp() * (top_logprobs - student_top)).sum(-1) + tail.exp() * (tail - student_tail)
    return picked, kl


def head_kd(
    states: torch.Tensor,
    head: torch.nn.Linear,
    index: torch.Tensor,
    tokens: torch.Tensor,
    teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    chunk_elements: int = HEAD_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For N entries (entry n: token `tokens[n]` predicted by state `states[index[n]]`), the student's log π(token)
    and the forward KL from the teacher's distribution (`teacher`: `head_topk`'s top ids, their log-probs and the
    tail's log-mass) to the student's over the same k + 1 outcomes (a lower bound of the exact KL, equal when the
    tail is empty), both (N,) with gradients. The head runs a chunk of entries at a time, each chunk's logits
    recomputed in the backward pass (activation checkpointing) rather than kept."""
    from torch.utils.checkpoint import checkpoint

    chunk = max(1, chunk_elements // head.out_features)
    dtype = _compute_dtype(states.device.type, head.weight)
    top_ids, top_logprobs, tail = teacher
    picked, kl = [], []
    for start in range(0, len(index), chunk):
        part = slice(start, start + chunk)
        with torch.autocast(states.device.type, enabled=False):
            p, d = checkpoint(
                _kd_chunk,
                states[index[part]].to(dtype),
                head.weight.to(dtype),
                None if head.bias is None else head.bias.to(dtype),
                tokens[part],
                top_ids[part],
                top_logprobs[part],
                tail[part],
                use_reentrant=False,
            )
        picked.append(p)
        kl.append(d)
    if not picked:  # no completion token: empty, still joined to the graph
        empty = torch.zeros(0, device=states.device) + states.sum() * 0.0
        return empty, empty
    return torch.cat(picked), torch.cat(kl)


def completion_logprobs(
    model: PreTrainedModel, rollouts: Rollouts, temperature: float = 1.0, packed: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities (B, T) of the completions under `model` on logits / `temperature`, and the
    entropy of each predicting distribution (B, T, no gradient), 0 past each row's end: the backbone once, the head
    only at completion positions (`splits_head` must hold)."""
    states, index = completion_states(model, rollouts, packed)
    mask = rollouts.completion_mask.bool().to(states.device)
    tokens = rollouts.completion_ids.to(states.device)[mask]
    picked, entropy = head_logprobs(states, model.get_output_embeddings(), index[mask], tokens, temperature)
    return _spread(mask, picked), _spread(mask, entropy)


__all__ = [
    "completion_kd",
    "completion_logprobs",
    "completion_states",
    "forest_head_logprobs",
    "forest_states",
    "head_kd",
    "head_logprobs",
    "head_topk",
    "splits_head",
    "teacher_targets",
]


def teacher_targets(
    teacher: PreTrainedModel, rollouts: Rollouts, top_k: int, packed: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-`top_k` distribution at every completion position of `rollouts`, in row-major order of
    `completion_mask` (`head_topk`'s ids, log-probabilities and tail), from one pass without gradients."""
    with torch.no_grad():
        states, index = completion_states(teacher, rollouts, packed)
        mask = rollouts.completion_mask.bool().to(states.device)
        return head_topk(states, teacher.get_output_embeddings(), index[mask], top_k)


def completion_kd(
    model: PreTrainedModel,
    teacher: PreTrainedModel | None,
    rollouts: Rollouts,
    top_k: int,
    packed: bool = True,
    target: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per completion token (B, T; 0 past each row's end): the student's log-probability of the token and the
    forward KL from the teacher's top-`top_k` distribution (plus its tail) at that position to the student's,
    teacher-forced on the same rows (`splits_head` must hold for both models, which share a vocabulary). `target`:
    the teacher's distributions already at hand (`teacher_targets`' form), so the teacher does not run."""
    if target is None:
        target = teacher_targets(teacher, rollouts, top_k, packed)
    states, index = completion_states(model, rollouts, packed)
    mask = rollouts.completion_mask.bool().to(states.device)
    tokens = rollouts.completion_ids.to(states.device)[mask]
    target = tuple(t.to(states.device) for t in target)
    picked, kl = head_kd(states, model.get_output_embeddings(), index[mask], tokens, target)
    return _spread(mask, picked), _spread(mask, kl)
