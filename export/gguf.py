"""GGUF export of llama- and qwen2-architecture causal LMs, written with the `gguf` package.

Tensor names come from gguf's llama name map; Q and K projections are permuted
into llama.cpp's rotary layout (transformers' GGUF loader undoes it, so a round
trip gives back identical weights); the tokenizer is embedded as a byte-level
BPE with llama.cpp's pre-tokenizer name read off its split regex (`gpt-2`, as
ours splits, `qwen2` or `llama-bpe`; any other regex is an error naming it).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rakd.io import publish_mode
from rakd.models.load import ModelLoadError


class UnsupportedModelError(ModelLoadError):
    """A model this exporter cannot write (names the architecture or the setting)."""


ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}


def check_supported(config) -> None:
    if config.model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF export: not supported yet: {config.model_type} (supported: {', '.join(ARCHITECTURES)})"
        )
    unsupported = {"rope_scaling": getattr(config, "rope_scaling", None)}
    if config.model_type == "llama":
        unsupported |= {
            "attention_bias": getattr(config, "attention_bias", False) or None,
            "mlp_bias": getattr(config, "mlp_bias", False) or None,
        }
    else:  # qwen2: q/k/v biases are part of the architecture; sliding-window attention is not written
        unsupported["use_sliding_window"] = getattr(config, "use_sliding_window", False) or None
    found = {k: v for k, v in unsupported.items() if v}
    if found:
        raise UnsupportedModelError(f"GGUF export: {config.model_type} setting(s) not supported yet: {found}")


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split rotary layout -> llama.cpp's interleaved one, per head (as llama.cpp's converter)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor_type(name: str, array: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    # Norms and other 1-D tensors stay F32, as llama.cpp expects.
    if dtype == "f16" and array.ndim == 2:
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    return array.astype(np.float32), gguf.GGMLQuantizationType.F32


def gguf_tensors(model: PreTrainedModel):
    """(gguf name, float32 array) for every weight, Q/K permuted."""
    config = model.config
    names = gguf.get_tensor_name_map(ARCHITECTURES[config.model_type], config.num_hidden_layers)
    permute = config.model_type == "llama"  # llama.cpp's qwen2 uses HF's (NeoX) rotary layout as it is
    state = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when `output` is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UnsupportedModelError(f"GGUF export: no llama.cpp name for tensor {hf_name}")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if permute and hf_name.endswith("q_proj.weight"):
            array = permute_rotary(array, config.num_attention_heads)
        elif permute and hf_name.endswith("k_proj.weight"):
            array = permute_rotary(array, config.num_key_value_heads)
        yield target, array


def _vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their gguf types, and BPE merges from the fast tokenizer's JSON."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise UnsupportedModelError(f"GGUF export: tokenizer model {spec['model']['type']} not supported yet")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, types, merges


# llama.cpp's names for the pre-tokenizer regexes of known BPE families (convert_hf_to_gguf.py's table, by regex)
_WORD_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST_SPLIT = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_PRE_TOKENIZERS = {
    _WORD_SPLIT + r"\p{N}" + _REST_SPLIT: "qwen2",
    _WORD_SPLIT + r"\p{N}{1,3}" + _REST_SPLIT: "llama-bpe",
}


def pre_tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for the tokenizer: `gpt-2` for GPT-2 byte-level splitting (ours, with
    digits split one by one), or a known family's regex; anything else is an error that names it."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = spec.get("pretokenizers", [spec])
    splits = [p["pattern"].get("Regex") for p in parts if p.get("type") == "Split" and "pattern" in p]
    if not splits and all(p.get("type") in ("ByteLevel", "Digits") for p in parts):
        return "gpt-2"
    for regex in splits:
        if regex in _PRE_TOKENIZERS:
            return _PRE_TOKENIZERS[regex]
    raise UnsupportedModelError(f"GGUF export: pre-tokenizer not supported yet: {json.dumps(spec)[:300]}")


def _write_metadata(writer: gguf.GGUFWriter, model: PreTrainedModel, tokenizer, dtype: str, name: str) -> None:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    if head_dim * c.num_attention_heads != c.hidden_size:  # heads pruned by width: llama.cpp's default is n_embd/n_head
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(float(getattr(c, "rope_theta", 10000.0)))
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = _vocab(tokenizer, c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for role in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(token_id)
    writer.add_add_bos_token(tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)  # llama.cpp and Ollama format chats with it


def export_gguf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_path: str | Path, dtype: str = "f16"
) -> Path:
    """Write `model` + tokenizer as one GGUF file (`dtype` f16 or f32), atomically."""
    if dtype not in ("f16", "f32"):
        raise ValueError(f"GGUF export dtype must be 'f16' or 'f32', got {dtype!r}")
    check_supported(model.config)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[ARCHITECTURES[model.config.model_type]])
        _write_metadata(writer, model, tokenizer, dtype, out_path.stem)
        for name, array in gguf_tensors(model):
            data, kind = _tensor_type(name, array, dtype)
            writer.add_tensor(name, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        publish_mode(tmp)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path
