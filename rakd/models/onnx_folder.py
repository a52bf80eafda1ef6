"""An exported ONNX folder (optimum's layout: `model.onnx` with the KV cache as inputs and outputs, config.json and
the tokenizer files) run on ONNX Runtime and the `tokenizers` library alone, as a device runs it: no torch, no
transformers. A validation process of an ONNX artefact then holds what the device would (its peak memory is the
runtime's and the model's, not torch's), and it starts in a second instead of the ten that importing torch,
transformers and optimum takes on a small CPU.

`FolderTokenizer` does what transformers' fast tokenizer does for the calls rakd makes (`__call__` with or without
special tokens, `decode` skipping them, `apply_chat_template` with the folder's Jinja template); `OnnxCausalLM` is
one forward pass with a KV cache. Both are checked against transformers on the same folders (tests/test_export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rakd.prompt import render_chat
from rakd.schema import ModelLoadError

# transformers' `clean_up_tokenization` (applied by `decode` when tokenizer_config.json asks for it)
_CLEAN_UP = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from err


def _content(token) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's dict."""
    return token.get("content") if isinstance(token, dict) else token


class FolderTokenizer:
    """The tokenizer of a saved Hugging Face folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
    chat_template.jinja), read with `tokenizers` alone."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{folder}: no tokenizer.json (a fast tokenizer's file) in this folder")
        try:
            self.backend = Tokenizer.from_file(str(path))
        except Exception as err:  # noqa: BLE001 - the Rust side raises plain Exceptions
            raise ModelLoadError(f"{path}: the tokenizers library cannot read it: {err}") from err
        config = _read_json(folder / "tokenizer_config.json")
        special = {**_read_json(folder / "special_tokens_map.json"), **config}
        names = ("bos_token", "eos_token", "pad_token")
        self.bos_token, self.eos_token, self.pad_token = (_content(special.get(name)) for name in names)
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (
            self.backend.token_to_id(t) if t else None for t in (self.bos_token, self.eos_token, self.pad_token)
        )
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: transformers uses "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (folder / "chat_template.jinja").is_file():  # where transformers >= 4.54 saves it
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        self.chat_template: str | None = template or None
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False))

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up:
            for before, after in _CLEAN_UP:
                text = text.replace(before, after)
        return text

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False, tokenize: bool = False):
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        text = render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos=self.bos_token or "",
            eos=self.eos_token or "",
        )
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxCausalLM:
    """`model.onnx` of an optimum text-generation-with-past export in an ONNX Runtime CPU session: `forward(ids,
    cache)` -> (the logits of every new position as float32 (len(ids), vocab), the extended cache)."""

    def __init__(self, folder: str | Path, threads: int = 1):
        import onnxruntime

        folder = Path(folder)
        path = folder / "model.onnx"
        if not path.is_file():
            found = sorted(folder.glob("*.onnx"))
            if not found:
                raise ModelLoadError(f"{folder}: no .onnx model in this folder")
            path = found[0]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load this model: {err}") from err
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "input_ids" not in inputs:
            raise ModelLoadError(f"{path}: the model takes no input_ids (not a causal language model export)")
        self.inputs = set(inputs)
        self.past = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        self.outputs = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.outputs or any(_present(n) not in self.outputs for n in self.past):
            raise ModelLoadError(f"{path}: outputs {self.outputs[:4]}... lack logits or the present KV cache")
        config = _read_json(folder / "config.json")
        self.empty = []  # the cache before the first token: (1, kv heads, 0, head dim) per input
        for name in self.past:
            shape = inputs[name].shape
            heads = shape[1] if isinstance(shape[1], int) else config.get("num_key_value_heads")
            dim = shape[3] if isinstance(shape[3], int) else config.get("head_dim")
            if not (isinstance(heads, int) and isinstance(dim, int)):
                raise ModelLoadError(f"{path}: {name} has no fixed KV head count and head size, nor config.json")
            self.empty.append(np.zeros((1, heads, 0, dim), _NUMPY_TYPES.get(inputs[name].type, np.float32)))

    def forward(self, ids: list[int], cache: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        cache = cache if cache is not None else self.empty
        past = cache[0].shape[2] if cache else 0
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((1, past + len(ids)), dtype=np.int64)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(past, past + len(ids), dtype=np.int64)[None]
        if "use_cache_branch" in self.inputs:  # older merged decoders
            feeds["use_cache_branch"] = np.array([past > 0])
        feeds.update(zip(self.past, cache))
        wanted = ["logits", *(_present(n) for n in self.past)]
        logits, *present = self.session.run(wanted, feeds)
        return logits[0].astype(np.float32, copy=False), present


def _present(past_name: str) -> str:
    return "present." + past_name.removeprefix("past_key_values.")


def _layer_order(name: str) -> tuple[int, str]:
    _, layer, kind = name.split(".", 2)
    return int(layer) if layer.isdigit() else 0, kind
