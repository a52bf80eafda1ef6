"""Runtimes a device uses, behind one greedy `generate` that also times it.

- `LlamaCppGenerator`: a `.gguf` file in llama.cpp (llama-cpp-python), CPU.
- `OnnxGenerator`: an optimum ONNX folder (model + config + tokenizer) in ONNX Runtime, CPU, without torch.
- `TorchGenerator`: a Hugging Face folder in PyTorch fp32: the reference the others are compared with.

Every runtime formats the prompt the same way: the model's chat template when it
has one, else `rakd.prompt.prompt_text` (how our models were taught), and
decodes greedily one problem at a time, as an app on a device would. Heavy imports
happen inside the constructors, so neither a llama.cpp nor an ONNX run loads torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rakd.models.gguf_file import gguf_metadata
from rakd.models.llamacpp import open_llama
from rakd.prompt import chat_messages, model_prompt, prompt_text
from rakd.schema import ModelLoadError


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    ttft_s: float | None  # prompt submitted -> first new token available (None: not timed, a batch)
    total_s: float | None  # prompt submitted -> last token (or EOS) produced
    prompt_ids: tuple[int, ...] = ()
    ids: tuple[int, ...] = ()  # the new tokens, the end-of-generation token left out
    end_token: int | None = None  # the end-of-generation token that stopped it; None: cut at max_new_tokens

    @property
    def sequence(self) -> list[int]:
        """Prompt, new tokens and the end token: what the token agreement scores (deploy.agreement)."""
        return [*self.prompt_ids, *self.ids, *([self.end_token] if self.end_token is not None else [])]

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens per second after the first one; None when there was nothing to decode."""
        if self.total_s is None:
            return None
        decode_s = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else None


class LlamaCppGenerator:
    format = "gguf"

    def __init__(self, path: Path, threads: int = 1, seed: int = 0):
        meta = gguf_metadata(path)  # a clear error for non-GGUF, corrupt or truncated files first
        try:
            self.llm = open_llama(path, threads=threads, n_ctx=0, seed=seed)
        except Exception as err:  # noqa: BLE001 - llama.cpp reports failures as ValueError/RuntimeError
            raise ModelLoadError(f"{path}: llama.cpp cannot load this GGUF: {err}") from err
        self.formatter = None  # the GGUF's chat template, compiled once
        if template := meta.get("tokenizer.chat_template"):
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            vocab = lambda token: self.llm.detokenize([token], special=True).decode("utf-8", "replace")  # noqa: E731
            self.formatter = Jinja2ChatFormatter(
                template, eos_token=vocab(self.llm.token_eos()), bos_token=vocab(self.llm.token_bos())
            )

    def prompt_ids(self, question: str) -> list[int]:
        if self.formatter:
            text = self.formatter(messages=chat_messages(question)).prompt
            return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return self.llm.tokenize(prompt_text(question).encode("utf-8"), add_bos=True, special=True)

    def generate(self, question: str, max_new_tokens: int) -> Generation:
        import llama_cpp

        ids = self.prompt_ids(question)
        self.llm.reset()  # no KV prefix reuse between problems: every prompt is timed cold
        started, first, out, end = time.perf_counter(), None, [], None
        for token in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            first = first or time.perf_counter()
            if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):  # EOS, EOT and the like
                end = int(token)
                break
            out.append(token)
            if len(out) >= max_new_tokens:
                break
        done = time.perf_counter()
        text = self.llm.detokenize(out).decode("utf-8", "replace")
        return Generation(text, len(out), (first or done) - started, done - started, tuple(ids), tuple(out), end)

    def close(self) -> None:
        self.llm.close()


class _Clock:
    """A transformers streamer that records when each generated token arrives (the first `put` is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class _HFGenerator:
    """Greedy `generate` of a transformers model in PyTorch (the prompt as the model's tokenizer writes it)."""

    model = tokenizer = None

    def prompt_ids(self, question: str) -> list[int]:
        text, special = model_prompt(self.tokenizer, question)  # as the model was trained and sampled
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def generate(self, question: str, max_new_tokens: int) -> Generation:
        import torch

        ids = torch.tensor([self.prompt_ids(question)])
        clock = _Clock()
        started = time.perf_counter()
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                streamer=clock,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        done = time.perf_counter()
        new = output[0, ids.shape[1] :].tolist()
        end = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id in new else None
        if end is not None:
            new = new[: new.index(end)]
        first = clock.times[1] if len(clock.times) > 1 else done
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(text, len(new), first - started, done - started, tuple(ids[0].tolist()), tuple(new), end)

    def close(self) -> None:
        pass


class OnnxGenerator(_HFGenerator):
    """An optimum ONNX folder on ONNX Runtime and the `tokenizers` library alone (rakd.models.onnx_folder), greedy
    with its KV cache: no torch in the process, as on a device."""

    format = "onnx"

    def __init__(self, folder: Path, threads: int = 1, seed: int = 0):
        from rakd.models.onnx_folder import FolderTokenizer, OnnxCausalLM

        if not any(folder.glob("*.onnx")):
            raise ModelLoadError(f"{folder}: no .onnx model in this folder")
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder}: ONNX folder without config.json (export it with optimum)")
        if not (folder / "tokenizer.json").is_file():
            raise ModelLoadError(f"{folder}: ONNX folder without a tokenizer (tokenizer.json)")
        self.model = OnnxCausalLM(folder, threads)
        self.tokenizer = FolderTokenizer(folder)

    def generate(self, question: str, max_new_tokens: int) -> Generation:
        ids = self.prompt_ids(question)
        eos = self.tokenizer.eos_token_id
        started, first, new, end = time.perf_counter(), None, [], None
        logits, cache = self.model.forward(ids)
        while len(new) < max_new_tokens:
            token = int(logits[-1].argmax())
            first = first or time.perf_counter()
            if token == eos:
                end = token
                break
            new.append(token)
            if len(new) < max_new_tokens:
                logits, cache = self.model.forward([token], cache)
        done = time.perf_counter()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(text, len(new), (first or done) - started, done - started, tuple(ids), tuple(new), end)


class TorchGenerator(_HFGenerator):
    format = "pytorch"

    def __init__(self, folder: Path, threads: int = 1, seed: int = 0):
        import torch

        from rakd.models.load import load_causal_lm

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.model, self.tokenizer = load_causal_lm(folder)


RUNTIMES = {"gguf": LlamaCppGenerator, "onnx": OnnxGenerator, "pytorch": TorchGenerator}


def open_runtime(fmt: str, path: Path, threads: int = 1, seed: int = 0):
    return RUNTIMES[fmt](Path(path), threads=threads, seed=seed)


def load_package(folder: str | Path, threads: int = 1, label: str | None = None):
    """A runtime (`generate(question, max_new_tokens)`) for a packaged model, after verifying the package."""
    from deploy.artefacts import package_artefact

    chosen = package_artefact(folder, label)
    return open_runtime(chosen.format, chosen.path, threads)
