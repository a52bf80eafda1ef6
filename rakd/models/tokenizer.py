"""A small byte-level BPE tokenizer trained on the train split.

Digits are always single tokens (arithmetic is learnable only then), and
pre-tokenisation is GPT-2 byte-level, so llama.cpp's `gpt-2` pre-tokenizer
reproduces our tokens exactly once the model is exported to GGUF.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rakd.models.config import TokenizerConfig
from rakd.prompt import completion_text, prompt_text

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def _corpus(records: Iterable[dict]) -> Iterable[str]:
    for record in records:
        yield prompt_text(record["question"]) + completion_text(record.get("solution", record["answer"]))


def build_bpe(records: Iterable[dict], cfg: TokenizerConfig) -> Tokenizer:
    """Train the raw `tokenizers` BPE model on prompts and solutions."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(records), trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def wrap_tokenizer(raw: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around `raw`, left-padding for batched generation."""
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(records: Iterable[dict], cfg: TokenizerConfig, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train on `records` and save a transformers tokenizer folder to `out_dir`."""
    tokenizer = wrap_tokenizer(build_bpe(records, cfg))
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
