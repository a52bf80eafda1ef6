"""Rollouts: sampling from a causal LM and scoring what was sampled (torch and transformers).

batch      Rollouts (a left-padded prompt batch and its right-padded completions): stack, trim, select rows
masks      the 4-D attention masks and the attention kernels every forward pass here runs under
samplers   `sample`: four seeded samplers with the same distribution (loop, graph, generate, static)
forests    prefix forests: each distinct prompt and completion prefix of a batch computed once
scoring    per-token log-probs of completions (`score_completions`) and the logits that predict them
"""

from rakd.rollout.batch import (
    Rollouts,
    batch_ids,
    completion_mask,
    concat_rollouts,
    encode_prompts,
    position_ids,
    select_rows,
    trimmed,
)
from rakd.rollout.forests import PrefixForest, forest_logprobs, packs_forests, prefix_forests
from rakd.rollout.masks import attention_mask_4d, no_cudnn_attention
from rakd.rollout.samplers import resolve_backend, sample
from rakd.rollout.scoring import (
    TorchScorer,
    completion_logits,
    forward_completion,
    score_completions,
    token_logprobs,
)

__all__ = [
    "PrefixForest",
    "Rollouts",
    "TorchScorer",
    "attention_mask_4d",
    "batch_ids",
    "completion_logits",
    "completion_mask",
    "concat_rollouts",
    "encode_prompts",
    "forest_logprobs",
    "forward_completion",
    "no_cudnn_attention",
    "packs_forests",
    "position_ids",
    "prefix_forests",
    "resolve_backend",
    "sample",
    "score_completions",
    "select_rows",
    "token_logprobs",
    "trimmed",
]
