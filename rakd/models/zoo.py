"""Named tiny Llama configs for the embedded default, and a seeded builder.

Hidden and MLP widths are multiples of 32 so llama.cpp's Q8_0/Q4_0 quantise
every weight (K-quants would need 256; the exporter checks and falls back).
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from rakd.models.attention import install as install_attention

PRESETS: dict[str, dict] = {
    # ~1M parameters with a 512-token vocabulary.
    "teacher-tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=512,
    ),
    # ~8x smaller than teacher-tiny.
    "student-tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=256,
    ),
    # For unit tests: as small as a Llama gets while keeping 32-multiples.
    "test-micro": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
    ),
}

_COMMON = dict(
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
)


def preset_config(name: str, tokenizer: PreTrainedTokenizerBase, **overrides) -> LlamaConfig:
    """LlamaConfig for preset `name`, sized to `tokenizer`, with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    fields = {**_COMMON, **PRESETS[name], **overrides}
    unknown = sorted(k for k in overrides if not hasattr(LlamaConfig(), k))
    if unknown:
        raise KeyError(f"model preset {name!r}: unknown LlamaConfig field(s) {unknown}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )


def build_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model; the same seed gives the same weights."""
    install_attention()  # GQA attention reads its keys and values in place on the CPU (rakd.models.attention)
    devices = []  # fork only the CPU generator: building never touches CUDA RNG state
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
