"""The prep stage's config section: where the tasks come from and how they split (light: no tokenizers or
transformers import)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rakd.data.generator import GeneratorConfig
from rakd.models.config import TokenizerConfig
from rakd.schema import StageConfig


class PrepConfig(StageConfig):
    """Where the tasks come from and how they are split."""

    source: Literal["generator", "gsm8k", "jsonl"] = Field(
        "generator",
        description="generator: built-in arithmetic; gsm8k: `answer` ends in `#### N`; jsonl: question/answer "
        "(+ optional solution) per line",
    )
    path: Path | None = Field(None, description="task file for the gsm8k/jsonl sources")
    generator: GeneratorConfig = Field(
        default_factory=lambda: GeneratorConfig(n_items=21000, max_ops=5, operators=["+", "-"])
    )
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of the problems in val")
    test_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of the problems in test")
    split_salt: str = Field(
        "rakd", description="the split hashes each question with this salt: a problem stays in its split as data grows"
    )
    skip_invalid: bool = Field(False, description="drop malformed rows (counted in the data card) instead of failing")
    tokenizer: TokenizerConfig | None = Field(
        default_factory=TokenizerConfig,
        description="train a tokenizer on the train split (null: the models bring their own)",
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"task file not found: {path}")
        return path

    @model_validator(mode="after")
    def _check(self) -> PrepConfig:
        if self.source != "generator" and self.path is None:
            raise ValueError(f"source {self.source!r} needs 'path' (a JSONL task file)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave room for a train split")
        return self
