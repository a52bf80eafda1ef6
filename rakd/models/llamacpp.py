"""The one place a llama.cpp model (llama-cpp-python `Llama`) is opened: export parity and edge validation both
come through `open_llama`, so a load-time flag exists once.

Why a flag at all: where llama.cpp was compiled with its AMX kernels (a `-march=native` build on an Intel CPU with
AMX, i.e. Sapphire Rapids and later; `llama_print_system_info()` then says `AMX_INT8 = 1`), it moves quantised
weights into its AMX "extra" buffer type and segfaults in `ggml_backend_amx_mul_mat` on the first evaluation of any
quantised GGUF (upstream ggml-org/llama.cpp#20824, closed without a fix). Loading with `use_extra_bufts = False`
keeps the weights in plain CPU buffers and the same files evaluate. That field is part of llama.cpp's
`llama_model_params` but `Llama(...)` does not expose it, so `open_llama` sets it on the defaults llama-cpp-python
starts from. Stock llama.cpp's CLI and server take the same switch as `--no-repack` (`-nr`).

Nothing here imports torch: a GGUF validation process stays small.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

# RAKD_LLAMA_EXTRA_BUFFERS=1 forces llama.cpp's extra buffer types (AMX, repacking) on, =0 forces them off;
# unset: off exactly where the AMX kernels are compiled in.
ENV_EXTRA_BUFFERS = "RAKD_LLAMA_EXTRA_BUFFERS"


def system_info() -> str:
    """llama.cpp's one-line report of the kernels it was built with (`AVX2 = 1 | AMX_INT8 = 1 | ...`)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


def amx_compiled(info: str) -> bool:
    """True when the system-info line says the AMX INT8 kernels are in this build."""
    return re.search(r"\bAMX_INT8\s*=\s*1\b", info) is not None


def use_extra_buffers(info: str, env: str | None = None) -> tuple[bool, str]:
    """Whether to let llama.cpp use its extra buffer types, and why (recorded in reports)."""
    if env is not None and env.strip() in ("0", "1"):
        return env.strip() == "1", f"{ENV_EXTRA_BUFFERS}={env.strip()}"
    if amx_compiled(info):
        return False, "AMX_INT8 kernels compiled in: extra buffers off (llama.cpp AMX crash on quantised weights)"
    return True, "llama.cpp default"


def llama_settings() -> dict:
    """What `open_llama` will do on this machine, for parity.json and the validation report."""
    info = system_info()
    extra, why = use_extra_buffers(info, os.environ.get(ENV_EXTRA_BUFFERS))
    return {"system_info": info, "use_extra_bufts": extra, "reason": why}


@contextlib.contextmanager
def _model_param_defaults(**fields) -> Iterator[None]:
    """Make llama-cpp-python's `llama_model_default_params()` return `fields` set, while a `Llama` is built."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def patched():
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def open_llama(path: str | Path, *, threads: int = 1, **kwargs):
    """A `llama_cpp.Llama` for `path` on the CPU with `threads` threads, loaded with this machine's safe settings."""
    from llama_cpp import Llama

    extra = llama_settings()["use_extra_bufts"]
    with _model_param_defaults(use_extra_bufts=extra):
        llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, verbose=False, **kwargs)
    if llm.model_params.use_extra_bufts != extra:  # a llama-cpp-python that rebuilt its params some other way
        llm.close()
        raise RuntimeError(f"llama-cpp-python ignored use_extra_bufts={extra} while loading {path}")
    return llm


def open_llama_exact(path: str | Path, *, threads: int = 1, n_ctx: int = 0):
    """`open_llama` for reading logits: every position's logits kept and an F32 KV cache (exact comparisons with
    PyTorch on F32/F16 files). `n_ctx` 0: the model's own context."""
    return open_llama(path, threads=threads, n_ctx=n_ctx, logits_all=True, type_k=0, type_v=0)


def llama_logits(llm, ids: list[int]):
    """Logits (len(ids), vocab) as float32 numpy of a fresh evaluation of `ids` in an `open_llama_exact` model."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)
