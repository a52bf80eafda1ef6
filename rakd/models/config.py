"""The from-scratch tokenizer's config section (light: no tokenizers or transformers import)."""

from __future__ import annotations

from pydantic import Field

from rakd.schema import StageConfig


class TokenizerConfig(StageConfig):
    """Knobs of the from-scratch tokenizer."""

    vocab_size: int = Field(512, ge=260, description="upper bound; a small corpus may give fewer")
    min_frequency: int = Field(2, ge=1, description="a merge must occur this often in the train split")
