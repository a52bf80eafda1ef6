"""The compute ledger: floating-point operations of every phase of training and evaluation, counted from the
models' sizes and the tokens each phase processed.

The count is the one Chinchilla uses (Hoffmann et al. 2022, appendix F): a forward pass costs 2·(N + H) per
token, where N is the number of non-embedding parameters and H those of the output head (the LM head's matmul,
d_model x vocabulary, counted whether or not it is tied to the token embedding, whose lookup costs nothing), plus
attention's own work, 2·d_attn per attended key for the query-key logits and 2·d_attn for the weighted sum of
values, in every layer; a training step costs three forward passes (the backward pass is two). A sequence of L
tokens, causal, so that the token at position p attends p keys, costs

    forward(L) = 2·(N + H)·L + 4·n_layers·d_attn·(1 + 2 + ... + L) = 2·(N + H)·L + 2·n_layers·d_attn·L·(L + 1)

and decoding it token by token with a KV cache costs the same. Rows count as a plain implementation computes
them, prompt and completion, with padding left out: the prefix forests and shared prefills that make our
passes cheaper are speed, not a different amount of work, so methods compare on the ledger whatever path ran.
The head matters for small students: the embedded default's head (64 x 512) is a quarter of its body, a pruned
SmolLM2's (576 x 49152) outweighs its body.

Phases (`Phase`, `PHASES`): the teacher's own training (`teacher_train`), its decoding of the warm start's traces,
rejected ones included (`teacher_generate`), its prefill over the rollouts that enter the loss
(`teacher_score`), the warm start's supervised steps (`student_sft`), the student's RL sampling, every dynamic
sampling draw included (`student_sample`), the RL update with π_old and reference passes
(`student_update`), and every evaluation: the warm start's stop checks, val and test (`eval`). Training FLOPs
(`TRAINING_PHASES`, `Ledger.training`: every phase but `eval`) are what a compute budget counts, in the trainers,
`rakd compare` and the summaries alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum


class Phase(StrEnum):
    """The one vocabulary of the ledger's phases (a metrics row carries phase p as `flops_<p>`)."""

    TEACHER_TRAIN = "teacher_train"
    TEACHER_GENERATE = "teacher_generate"
    TEACHER_SCORE = "teacher_score"
    STUDENT_SFT = "student_sft"
    STUDENT_SAMPLE = "student_sample"
    STUDENT_UPDATE = "student_update"
    EVAL = "eval"

    @property
    def row_key(self) -> str:
        return f"flops_{self.value}"


PHASES = tuple(phase.value for phase in Phase)
TRAINING_PHASES = tuple(phase for phase in PHASES if phase != Phase.EVAL)  # what a compute budget counts


@dataclass(frozen=True)
class Ledger:
    """FLOPs by phase: one step's (a metrics row), one job's or one stage's. Built from a row (`of_row`) or an
    eval.json ledger (`of`); added with `+`; `training` is the one definition of training FLOPs."""

    teacher_train: int = 0
    teacher_generate: int = 0
    teacher_score: int = 0
    student_sft: int = 0
    student_sample: int = 0
    student_update: int = 0
    eval: int = 0

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> Ledger:
        """From `{phase: count}` (a `total` is recomputed, not read; an unknown phase is an error)."""
        counts = {k: v for k, v in counts.items() if k != "total"}
        unknown = sorted(set(counts) - set(PHASES))
        if unknown:
            raise KeyError(f"unknown compute phase(s) {unknown}; phases: {list(PHASES)}")
        return cls(**{k: int(v) for k, v in counts.items()})

    @classmethod
    def of_row(cls, row: Mapping[str, object]) -> Ledger:
        """The step's own phases of a metrics row (its `flops_<phase>` keys; the running `flops_total` is not one)."""
        return cls(**{phase.value: int(row.get(phase.row_key, 0) or 0) for phase in Phase})

    @classmethod
    def of_rows(cls, rows: Iterable[Mapping[str, object]]) -> Ledger:
        return sum((cls.of_row(row) for row in rows), cls())

    def __add__(self, other: Ledger) -> Ledger:
        return Ledger(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def training(self) -> int:
        """Every phase but evaluation: what `rl.flops_budget` and `rakd compare`'s budget count."""
        return sum(getattr(self, phase) for phase in TRAINING_PHASES)

    @property
    def total(self) -> int:
        return self.training + self.eval

    def row(self) -> dict[str, int]:
        """The metrics-row keys of every phase that ran (`flops_<phase>`)."""
        return {phase.row_key: getattr(self, phase.value) for phase in Phase if getattr(self, phase.value)}

    def phases(self) -> dict[str, int]:
        """`{phase: count}` of every phase that ran, in phase order."""
        return {phase: getattr(self, phase) for phase in PHASES if getattr(self, phase)}


@dataclass(frozen=True)
class ModelDims:
    """What the count needs of a model: non-embedding parameters, the output head's, layers, and the width of its
    queries."""

    params: int
    layers: int
    attn_width: int
    head: int = 0

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
        output = model.get_output_embeddings()
        head = output.weight.numel() if output is not None else config.hidden_size * config.vocab_size
        return cls(params=params, layers=config.num_hidden_layers, attn_width=heads * head_dim, head=head)

    def forward(self, length: int) -> int:
        """FLOPs of one causal forward pass over `length` tokens (or decoding them with a KV cache), the output
        head included."""
        return 2 * (self.params + self.head) * length + 2 * self.layers * self.attn_width * length * (length + 1)


def sequences_flops(dims: ModelDims, lengths: Iterable[int], *, training: bool = False) -> int:
    """FLOPs of forward passes (x3 for `training`: forward and backward) over sequences of these lengths."""
    forward = sum(dims.forward(int(length)) for length in lengths)
    return 3 * forward if training else forward


def rollout_flops(dims: ModelDims, rollouts, *, training: bool = False) -> int:
    """FLOPs of one pass over every row of a `Rollouts` batch: its prompt and completion tokens, padding left
    out."""
    lengths = rollouts.prompt_mask.sum(-1) + rollouts.completion_mask.sum(-1)
    return sequences_flops(dims, lengths.tolist(), training=training)


def compute_seconds(row: Mapping[str, object]) -> float:
    """A metrics row's compute seconds, the time beside its FLOPs: sampling, teacher scoring and the update (its
    evaluation left out). What `rl.readout_seconds` and a comparison's curves count."""
    return sum(float(row.get(f"seconds_{part}", 0.0)) for part in ("sample", "teacher", "update"))


def add(ledger: Mapping[str, int], **counts: int) -> dict[str, int]:
    """A new ledger: `ledger` with `counts` added phase by phase (unknown phases are an error)."""
    Ledger.of(counts)  # checks the phases
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
