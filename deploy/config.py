"""The `validation` and `package` config sections (no heavy imports: every `rakd` command loads them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rakd.schema import StageConfig


class Gates(StageConfig):
    min_accuracy: float = Field(0.3, ge=0, le=1)
    max_accuracy_drop: float | None = Field(0.05, ge=0, description="absolute drop vs the fp32 reference")
    max_latency_ms_p95: float | None = Field(500, gt=0, description="one problem, greedy, on `threads` threads")
    max_size_mb: float | None = Field(50, gt=0)


class ValidateConfig(StageConfig):
    n_problems: int = Field(300, ge=1, description="first N problems of the data file")
    max_new_tokens: int = Field(64, ge=1)
    threads: int = Field(1, ge=1, description="runtime threads, as on the device")
    warmup: int = Field(1, ge=0, description="untimed problems first (loads caches, JIT)")
    seed: int = 0
    isolate: bool = Field(True, description="one spawned process per artefact (own peak RSS, crash isolation)")
    gates: Gates = Field(default_factory=Gates)
    progress_every: int = Field(50, ge=1)


class PackageConfig(StageConfig):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="default: the run name")
    version: str = "0.1.0"
    prefer: Literal["gguf", "onnx", "any"] = Field("gguf", description="format to ship when both passed")
    include: Literal["best", "best-per-format"] = "best"
