"""The base every stage config derives from: frozen, strict, typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# Names that travel between the floors (losses, rollout, train): here, so that no lower floor imports a config.
Aggregation = Literal["seq_mean", "token_mean"]
Backend = Literal["auto", "generate", "loop", "static", "graph"]
# auto: bf16 autocast on CUDA and on CPUs with AMX, fp32 elsewhere (rakd.train.common)
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class LossDefaults:
    """Each loss hyper-parameter's default, written once: the loss functions' keyword defaults (rakd.losses) and
    the config's `distill.loss` fields (rakd.train.config.LossParams) both read it. A method's aggregation default
    differs by method and is its loss function's own."""

    alpha: float = 0.5  # rakd: weight of the old policy in the anchor
    teacher_clamp: float | None = 1.0  # rakd: clamp c on the teacher log-ratio (None: unclamped)
    eps_low: float = 0.2  # clip range of the ratio, below 1
    eps_high: float = 0.28  # and above (DAPO's clip-higher)
    kl_coef: float = 0.1  # grpo_kl: weight of KL(student || teacher)
    beta: float = 0.5  # gkd: JSD mixture weight
    kd_temperature: float = 1.0  # fkl, gkd: softmax temperature of the vocabulary KL


LOSS_DEFAULTS = LossDefaults()

# What a readout of a student keeps of its evaluation (rakd.evaluate): the distill stage's readouts and every
# reading of a comparison job.
# What a stage returns and reads back from its outputs (pipeline.registry): a small JSON dict.
Summary = dict[str, Any]

GREEDY_READING = ("greedy_accuracy", "greedy_stderr", "greedy_correct")


def encode_answers(correct: tuple[bool, ...] | list[bool]) -> str:
    """Per-problem answers as stored: one character a problem, "1" right and "0" wrong ("0110")."""
    return "".join("1" if c else "0" for c in correct)


def decode_answers(stored: str) -> tuple[bool, ...]:
    """The answers `encode_answers` stored; anything but 0 and 1 is an error naming the character."""
    bad = set(stored) - {"0", "1"}
    if bad:
        raise ValueError(f"per-problem answers hold {sorted(bad)}: only 0 and 1 are answers")
    return tuple(c == "1" for c in stored)


class StageConfig(BaseModel):
    """A stage's configuration: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# A field's `json_schema_extra` for an option added to a config that runs were already made under: while it is at
# its default it stays out of every key (`key_dump`), so those runs' cached outputs and checkpoints stay current.
KEYED_WHEN_SET = {"keyed_when_set": True}


def key_dump(config: BaseModel) -> dict:
    """`config.model_dump(mode="json")`, what every key is a fingerprint of, less the fields marked `KEYED_WHEN_SET`
    that hold their default, at any depth."""
    dump = config.model_dump(mode="json")
    _drop_defaults(config, dump)
    return dump


def _drop_defaults(config: BaseModel, dump: dict) -> None:
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("keyed_when_set"):
            if value == info.get_default(call_default_factory=True):
                dump.pop(name, None)
        elif isinstance(value, BaseModel) and isinstance(dump.get(name), dict):
            _drop_defaults(value, dump[name])


class StageError(RuntimeError):
    """A stage that ran but failed a check (parity, gates, ...): the message names the artefact and the numbers."""


class ConfigError(ValueError):
    """A config that cannot be used: names the file (or override) and the key."""


class DataError(ValueError):
    """A task file or split that cannot be used, with the place (file:line, field) that says why."""


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded, naming the path and the reason."""
