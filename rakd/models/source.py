"""Where a model comes from: a checkpoint or a named preset built from scratch (teacher and student alike)."""

from __future__ import annotations

from pydantic import Field, model_validator

from rakd.schema import StageConfig


class ModelSource(StageConfig):
    """A checkpoint `path` (folder, hub id, .gguf) or a named `preset` built from scratch: exactly one."""

    path: str | None = None
    preset: str | None = None
    overrides: dict[str, int | float | bool | str] = Field(default_factory=dict)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.path is None) == (self.preset is None):
            raise ValueError("give exactly one of 'path' (a checkpoint) or 'preset' (build from scratch)")
        return self
