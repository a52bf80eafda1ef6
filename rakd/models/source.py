"""Where a model comes from: a checkpoint or a named preset built from scratch (teacher and student alike)."""

from __future__ import annotations

from pydantic import Field, model_validator

from rakd.schema import StageConfig


class ModelSource(StageConfig):
    """A checkpoint `path` (folder, hub id, .gguf) or a named `preset` built from scratch: exactly one."""

    path: str | None = Field(
        None, min_length=1, description="a Hugging Face folder or a .gguf file (dequantised to fp32)"
    )
    preset: str | None = Field(
        None, description="a named config built from scratch: teacher-tiny, student-tiny, test-micro"
    )
    overrides: dict[str, int | float | bool | str] = Field(
        default_factory=dict, description="preset only: LlamaConfig fields to change, e.g. {num_hidden_layers: 3}"
    )
    trust_remote_code: bool = Field(False, description="run a folder's own modelling code (off: safer)")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.path is None) == (self.preset is None):
            raise ValueError("give exactly one of 'path' (a checkpoint) or 'preset' (build from scratch)")
        return self
