"""Every position's logits of a token sequence, from any runtime an artefact runs in: what export parity and the
validation's token agreement (KL divergence) compare. One interface, `tokenize(text, special)`, `logits(ids)` ->
(len(ids), vocab) float32 numpy, `close()`; heavy imports stay in the constructors, so a process that reads one
runtime loads only that one (a GGUF never loads torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rakd.models.llamacpp import llama_logits, open_llama, open_llama_exact


class LlamaCppLogits:
    """A GGUF file in llama.cpp. `exact`: an F32 KV cache (parity with PyTorch on F32/F16 files); else the KV cache
    a device runs with (llama.cpp's default, F16), so its drift counts."""

    def __init__(self, path: Path, threads: int = 1, exact: bool = True, n_ctx: int = 0):  # 0: the model's own
        if exact:
            self.llm = open_llama_exact(path, threads=threads, n_ctx=n_ctx)
        else:
            self.llm = open_llama(path, threads=threads, n_ctx=n_ctx, logits_all=True)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        # a chat template writes its own BOS (as `deploy.runtimes` prompts it); the special tokens in it parse
        return self.llm.tokenize(text.encode("utf-8"), add_bos=special, special=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        return llama_logits(self.llm, ids)

    def close(self) -> None:
        self.llm.close()


class _HFLogits:
    """A model and its tokenizer: a transformers model in PyTorch here (`OnnxLogits` runs its own)."""

    model = tokenizer = None

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        tensor = torch.tensor([ids])
        with torch.no_grad():
            return self.model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).logits[0].float().numpy()

    def close(self) -> None:
        pass


class OnnxLogits(_HFLogits):
    """An optimum ONNX folder (model.onnx + config + tokenizer) in ONNX Runtime on CPU, without torch
    (rakd.models.onnx_folder)."""

    def __init__(self, folder: Path, threads: int = 1, exact: bool = True):
        from rakd.models.onnx_folder import FolderTokenizer, OnnxCausalLM

        self.model = OnnxCausalLM(folder, threads)
        self.tokenizer = FolderTokenizer(folder)

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.model.forward(ids)[0]


class TorchLogits(_HFLogits):
    """A Hugging Face folder in PyTorch fp32."""

    def __init__(self, folder: Path, threads: int = 1, exact: bool = True):
        import torch

        from rakd.models.load import load_causal_lm

        torch.set_num_threads(threads)
        self.model, self.tokenizer = load_causal_lm(folder)


LOGITS_RUNTIMES = {"gguf": LlamaCppLogits, "onnx": OnnxLogits, "pytorch": TorchLogits}


def open_logits(fmt: str, path: str | Path, threads: int = 1, exact: bool = True):
    """The logits runtime of an artefact of format `fmt` (gguf, onnx, pytorch)."""
    return LOGITS_RUNTIMES[fmt](Path(path), threads=threads, exact=exact)
