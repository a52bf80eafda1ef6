"""The base every stage config derives from: frozen, strict, typed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


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
