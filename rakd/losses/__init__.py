"""The loss registry: every distillation method as a pure function over per-token tensors.

`LOSSES[name]` is a `LossSpec` whose `inputs` say which tensors the method
needs (so a trainer fetches teacher log-probs or logits only when asked) and
whose `hparams` are its keyword-only hyper-parameters. Trainers call
`spec(tensors, hparams)` and never branch on the method name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from rakd.losses.advantages import group_advantages
from rakd.losses.common import aggregate, masked_mean
from rakd.losses.distill import fkl_loss, gkd_loss, sft_loss
from rakd.losses.policy import grpo_kl_loss, grpo_loss, k3_kl, opd_loss, trrd_loss

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: LossFn
    on_policy: bool  # trained on the student's own samples (else on teacher traces)
    fresh_traces: bool = False  # off-policy on new teacher traces each step (else on the warm start's traces)

    @property
    def inputs(self) -> tuple[str, ...]:
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)

    @property
    def hparams(self) -> tuple[str, ...]:
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)

    @property
    def defaults(self) -> dict[str, object]:
        """The loss function's own default of each hyper-parameter that has one: the one place a method's
        defaults are written (`LossParams` fields left at None take these)."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}

    def resolve(self, params: Mapping[str, object]) -> dict[str, object]:
        """`params` (e.g. `LossParams.model_dump()`) with each None replaced by this loss's own default, and
        dropped where the loss has none."""
        defaults = self.defaults
        resolved = {key: value for key, value in params.items() if value is not None}
        resolved.update({key: defaults[key] for key, value in params.items() if value is None and key in defaults})
        return resolved

    @property
    def needs_teacher(self) -> bool:
        return any(name.startswith("teacher_") for name in self.inputs)

    @property
    def needs_logits(self) -> bool:
        return "student_logits" in self.inputs

    def __call__(self, tensors: Mapping[str, torch.Tensor], hparams: Mapping[str, object]):
        missing = [name for name in self.inputs if name not in tensors]
        if missing:
            raise KeyError(f"loss {self.name!r} needs tensors {missing}")
        kwargs = {key: hparams[key] for key in self.hparams if key in hparams}
        return self.fn(*(tensors[name] for name in self.inputs), **kwargs)


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
        LossSpec("rakd", trrd_loss, on_policy=True),
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
