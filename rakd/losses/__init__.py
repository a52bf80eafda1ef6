"""The loss registry: every distillation method as a pure function over per-token tensors.

`LOSSES[name]` is a `LossSpec` whose `inputs` say which tensors the method
needs and whose `hparams` are its keyword-only hyper-parameters (less those the
method `fixes`: rakd_lower is TRRD's function with `teacher_lowers_only`). From the
inputs, by construction, each spec declares the teacher signal it needs
(`teacher`: none, the sampled tokens' log-probs, or whole logits) and the rows
it trains on (`trains_on`: the groups with mixed rewards when it reads an
advantage, the verified rows of new teacher traces, else every row); the
trainer both runs and charges its passes from those two. Trainers call
`spec(tensors, hparams)` and never branch on the method name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from rakd.losses.advantages import group_advantages
from rakd.losses.common import aggregate, masked_mean
from rakd.losses.distill import fkl_loss, gkd_loss, sft_loss
from rakd.losses.policy import grpo_kl_loss, grpo_loss, k3_kl, opd_loss, trrd_loss

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
TeacherSignal = Literal["none", "logprobs", "logits"]
RowSource = Literal["informative", "verified", "all"]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: LossFn
    on_policy: bool  # trained on the student's own samples (else on teacher traces)
    fresh_traces: bool = False  # off-policy on new teacher traces each step (else on the warm start's traces)
    fixes: Mapping[str, object] = field(default_factory=dict, hash=False)  # keyword arguments the method sets

    @property
    def inputs(self) -> tuple[str, ...]:
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)

    @property
    def hparams(self) -> tuple[str, ...]:
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in self.fixes)

    @property
    def defaults(self) -> dict[str, object]:
        """The loss function's own default of each hyper-parameter that has one: the one place a method's
        defaults are written (`LossParams` fields left at None take these)."""
        params, hparams = inspect.signature(self.fn).parameters.values(), self.hparams
        return {p.name: p.default for p in params if p.name in hparams and p.default is not p.empty}

    def resolve(self, params: Mapping[str, object]) -> dict[str, object]:
        """`params` (e.g. `LossParams.model_dump()`) with each None replaced by this loss's own default, and
        dropped where the loss has none."""
        defaults = self.defaults
        resolved = {key: value for key, value in params.items() if value is not None}
        resolved.update({key: defaults[key] for key, value in params.items() if value is None and key in defaults})
        return resolved

    @property
    def teacher(self) -> TeacherSignal:
        """What the loss reads of the teacher: its whole distribution at every position (`logits`, a forward pass
        in every epoch), the log-probs of the sampled tokens (`logprobs`, one scoring pass), or nothing."""
        if "teacher_logits" in self.inputs:
            return "logits"
        return "logprobs" if "teacher_logprobs" in self.inputs else "none"

    @property
    def trains_on(self) -> RowSource:
        """The rows that enter the loss: groups with mixed rewards when the loss reads an advantage (an all-equal
        group's is zero), the verified rows of new teacher traces, else every row."""
        if self.fresh_traces:
            return "verified"
        return "informative" if "advantages" in self.inputs else "all"

    def __call__(self, tensors: Mapping[str, torch.Tensor], hparams: Mapping[str, object]):
        missing = [name for name in self.inputs if name not in tensors]
        if missing:
            raise KeyError(f"loss {self.name!r} needs tensors {missing}")
        kwargs = {key: hparams[key] for key in self.hparams if key in hparams}
        return self.fn(*(tensors[name] for name in self.inputs), **kwargs, **self.fixes)


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("sft", sft_loss, on_policy=False),
        LossSpec("seqkd_fresh", sft_loss, on_policy=False, fresh_traces=True),
        LossSpec("fkl", fkl_loss, on_policy=False),
        LossSpec("gkd", gkd_loss, on_policy=True),
        LossSpec("opd", opd_loss, on_policy=True),
        LossSpec("grpo", grpo_loss, on_policy=True),
        LossSpec("grpo_kl", grpo_kl_loss, on_policy=True),
        LossSpec("rakd", trrd_loss, on_policy=True, fixes={"teacher_lowers_only": False}),
        LossSpec("rakd_lower", trrd_loss, on_policy=True, fixes={"teacher_lowers_only": True}),
    )
}

__all__ = [
    "LOSSES",
    "LossSpec",
    "aggregate",
    "fkl_loss",
    "gkd_loss",
    "group_advantages",
    "grpo_kl_loss",
    "grpo_loss",
    "k3_kl",
    "masked_mean",
    "opd_loss",
    "sft_loss",
    "trrd_loss",
]
