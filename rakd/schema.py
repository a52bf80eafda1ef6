"""The base every stage config derives from: frozen, strict, typed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# Names that travel between the floors (losses, rollout, train): here, so that no lower floor imports a config.
Aggregation = Literal["seq_mean", "token_mean"]
Backend = Literal["auto", "generate", "loop", "static", "graph"]
# auto: bf16 autocast on CUDA and on CPUs with bf16 units (AVX512_BF16 or AMX), fp32 elsewhere (rakd.train.common)
Precision = Literal["auto", "fp32", "bf16"]


class StageConfig(BaseModel):
    """A stage's configuration: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageError(RuntimeError):
    """A stage that ran but failed a check (parity, gates, ...): the message names the artefact and the numbers."""


class ConfigError(ValueError):
    """A config that cannot be used: names the file (or override) and the key."""


class DataError(ValueError):
    """A task file or split that cannot be used, with the place (file:line, field) that says why."""


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded, naming the path and the reason."""
