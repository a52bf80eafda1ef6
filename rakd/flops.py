"""The compute ledger: floating-point operations of every phase of training and evaluation, counted from the
models' sizes and the tokens each phase processed.

The count is the one scaling-law papers use (Kaplan et al. 2020; Hoffmann et al. 2022): a forward pass costs
2·N per token, where N is the number of non-embedding parameters (the token embedding and the output head
are left out), plus attention's own work, 2·d_attn per attended key for the query-key logits and 2·d_attn for
the weighted sum of values, in every layer; a training step costs three forward passes (the backward pass is
two). A sequence of L tokens, causal, so that the token at position p attends p keys, costs

    forward(L) = 2·N·L + 4·n_layers·d_attn·(1 + 2 + ... + L) = 2·N·L + 2·n_layers·d_attn·L·(L + 1)

and decoding it token by token with a KV cache costs the same. Rows count as a plain implementation computes
them, prompt and completion, with padding left out: the prefix forests and shared prefills that make our
passes cheaper are speed, not a different amount of work, so methods compare on the ledger whatever path ran.

Phases (`PHASES`): the teacher's own training (`teacher_train`), its decoding of the warm start's traces,
rejected ones included (`teacher_generate`), its prefill over the rollouts that enter the loss
(`teacher_score`), the warm start's supervised steps (`student_sft`), the student's RL sampling, every dynamic
sampling draw included (`student_sample`), the RL update with π_old and reference passes
(`student_update`), and every evaluation: the warm start's stop checks, val and test (`eval`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PHASES = (
    "teacher_train",
    "teacher_generate",
    "teacher_score",
    "student_sft",
    "student_sample",
    "student_update",
    "eval",
)


@dataclass(frozen=True)
class ModelDims:
    """What the count needs of a model: non-embedding parameters, layers, and the width of its queries."""

    params: int
    layers: int
    attn_width: int

    @classmethod
    def of(cls, model) -> ModelDims:
        config = model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        embeddings = {
            id(p)
            for m in (model.get_input_embeddings(), model.get_output_embeddings())
            if m is not None
            for p in m.parameters()
        }
        params = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
        return cls(params=params, layers=config.num_hidden_layers, attn_width=heads * head_dim)

    def forward(self, length: int) -> int:
        """FLOPs of one causal forward pass over `length` tokens (or decoding them with a KV cache)."""
        return 2 * self.params * length + 2 * self.layers * self.attn_width * length * (length + 1)


def sequences_flops(dims: ModelDims, lengths: Iterable[int], *, training: bool = False) -> int:
    """FLOPs of forward passes (x3 for `training`: forward and backward) over sequences of these lengths."""
    forward = sum(dims.forward(int(length)) for length in lengths)
    return 3 * forward if training else forward


def rollout_flops(dims: ModelDims, rollouts, *, training: bool = False) -> int:
    """FLOPs of one pass over every row of a `Rollouts` batch: its prompt and completion tokens, padding left
    out."""
    lengths = rollouts.prompt_mask.sum(-1) + rollouts.completion_mask.sum(-1)
    return sequences_flops(dims, lengths.tolist(), training=training)


def add(ledger: Mapping[str, int], **counts: int) -> dict[str, int]:
    """A new ledger: `ledger` with `counts` added phase by phase (unknown phases are an error)."""
    unknown = sorted(set(counts) - set(PHASES))
    if unknown:
        raise KeyError(f"unknown compute phase(s) {unknown}; phases: {list(PHASES)}")
    merged = {phase: int(ledger.get(phase, 0)) for phase in PHASES if phase in ledger or phase in counts}
    for phase, count in counts.items():
        merged[phase] = merged.get(phase, 0) + int(count)
    return merged


def merge(*ledgers: Mapping[str, int]) -> dict[str, int]:
    """The phase-by-phase sum of ledgers (their `total`s are recomputed, not added)."""
    merged: dict[str, int] = {}
    for ledger in ledgers:
        merged = add(merged, **{k: v for k, v in ledger.items() if k != "total"})
    return merged


def with_total(ledger: Mapping[str, int]) -> dict[str, int]:
    """The ledger in phase order with its `total`, as eval.json and the summaries carry it."""
    phases = {phase: int(ledger[phase]) for phase in PHASES if phase in ledger}
    return {**phases, "total": sum(phases.values())}


def format_flops(count: float) -> str:
    """3.2e12 -> '3.20 TFLOP'."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f} FLOP"
