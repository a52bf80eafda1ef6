"""The `orchestration` config section (no Prefect import: every `rakd` command loads it)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from rakd.schema import StageConfig


class OrchestrationConfig(StageConfig):
    result_storage: Path = Field(Path("runs/.prefect-results"), description="where task results and cache records live")
    retries: int = Field(2, ge=0, description="retries of I/O-style failures (never of bad config or data)")
    training_retries: int = Field(1, ge=0, description="teacher/distill retries; each resumes from the last checkpoint")
    retry_delay_s: list[int] = Field(default_factory=lambda: [10, 60], description="backoff between retries")
