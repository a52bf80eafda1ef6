"""Load and save causal LMs: local HF folders, hub ids, and `.gguf` files.

Weights load from safetensors only (pickled `.bin` checkpoints are refused), and
`trust_remote_code` stays off unless the caller turns it on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rakd.io import atomic_dir
from rakd.models.attention import install as install_attention
from rakd.models.gguf_file import gguf_metadata
from rakd.schema import ModelLoadError

__all__ = ["ModelLoadError", "gguf_metadata", "load_causal_lm", "save_model"]


def load_causal_lm(
    source: str | Path, *, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a folder, a `.gguf` file, or a hub id. A tokenizer without a pad token (many
    pretrained ones) pads with its EOS: batches carry masks, so a pad is never read as a token."""
    install_attention()  # GQA attention reads its keys and values in place on the CPU (rakd.models.attention)
    path = Path(source)
    if str(source).endswith(".gguf"):
        model, tokenizer = _load_gguf(path, dtype)
    elif path.exists():
        model, tokenizer = _load_folder(path, trust_remote_code, dtype)
    elif str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
        raise ModelLoadError(f"{source}: no such model folder or file")
    else:
        model, tokenizer = _load_hub(str(source), trust_remote_code, dtype)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model, tokenizer


def _check_causal(config, where: str) -> None:
    if not any(arch.endswith("ForCausalLM") for arch in (config.architectures or [])):
        found = config.architectures or config.model_type
        raise ModelLoadError(f"{where}: not a causal language model (architectures: {found})")


def _load_folder(path: Path, trust_remote_code: bool, dtype: torch.dtype):
    if not path.is_dir():
        raise ModelLoadError(f"{path}: expected a model folder or a .gguf file")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json, not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        why = f"only pickled weights {pickled} (refused: load safetensors only)" if pickled else "no weights"
        raise ModelLoadError(f"{path}: {why}")
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    _check_causal(config, str(path))
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - report which folder lacks a tokenizer
        raise ModelLoadError(f"{path}: model loads but its tokenizer does not: {err}") from err
    return model.eval(), tokenizer


def _load_hub(repo_id: str, trust_remote_code: bool, dtype: torch.dtype):
    try:
        config = AutoConfig.from_pretrained(repo_id, trust_remote_code=trust_remote_code)
        _check_causal(config, repo_id)
        model = AutoModelForCausalLM.from_pretrained(
            repo_id, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"{repo_id}: not a local path, and loading it from the hub failed: {err}") from err
    return model.eval(), tokenizer


# Where transformers 4.57 binds `load_gguf_checkpoint` by name at import (the model's own load imports it at call
# time and reads the weights: not memoised).
_GGUF_METADATA_READERS = (
    "transformers.configuration_utils",
    "transformers.tokenization_utils_fast",
    "transformers.models.auto.tokenization_auto",
)


@contextlib.contextmanager
def _gguf_read_once():
    """Within the block, gguf-py's `GGUFReader` is made once per file, its tensor-name map once per architecture
    and depth, and transformers' parse of a file's metadata (`load_gguf_checkpoint` without tensors: every field,
    SmolLM2's 49k-token vocabulary and merges entry by entry in Python, about 2 s) once per file, each caller given
    its own copy: transformers 4.57 reads a GGUF's header four times in one load (the config twice, the tokenizer,
    the weights; 3 s a read), parses its metadata three times besides the weights' own, and builds the name map once
    per module (397 times, 6-8 s). Only attributes transformers looks up at call time are swapped, for the block;
    were it to bind them otherwise, the load would only be as slow as before."""
    import copy
    import importlib

    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def read_once(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader(path, *args, **kwargs)
        return readers[key]

    modules = [importlib.import_module(name) for name in _GGUF_METADATA_READERS]
    parses = [module.load_gguf_checkpoint for module in modules]
    parsed: dict = {}

    def parse_once(path, return_tensors: bool = False, **kwargs):
        if return_tensors or kwargs:
            return parses[0](path, return_tensors=return_tensors, **kwargs)
        if str(path) not in parsed:
            parsed[str(path)] = parses[0](path, return_tensors=False)
        return copy.deepcopy(parsed[str(path)])

    gguf.GGUFReader, gguf.get_tensor_name_map = read_once, functools.lru_cache(maxsize=None)(name_map)
    for module in modules:
        module.load_gguf_checkpoint = parse_once
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
        for module, parse in zip(modules, parses):
            module.load_gguf_checkpoint = parse


def _load_gguf(path: Path, dtype: torch.dtype):
    meta = gguf_metadata(path)
    try:
        with _gguf_read_once():
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"{path}: transformers cannot load this GGUF: {err}") from err
    _fix_gguf_special_tokens(tokenizer, meta)
    return model.eval(), tokenizer


def _fix_gguf_special_tokens(tokenizer: PreTrainedTokenizerBase, meta: dict) -> None:
    """transformers 4.57 builds a GGUF tokenizer with a wrong eos; take ids from the file."""
    for role in ("bos", "eos", "pad"):
        token_id = meta.get(f"tokenizer.ggml.{role}_token_id")
        if token_id is not None and token_id < len(tokenizer):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    extra: dict | None = None,
    copy_files: dict[str, Path] | None = None,
) -> Path:
    """Save model (safetensors), tokenizer, JSON `extra` files and `copy_files` (files or folders, hard-linked where
    the filesystem allows) to `out_dir`, atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for name, payload in (extra or {}).items():
            (staging / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        for name, source in (copy_files or {}).items():
            if Path(source).is_dir():
                shutil.copytree(source, staging / name, copy_function=_link_or_copy)
            else:
                _link_or_copy(source, staging / name)
    return out_dir


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, target)
