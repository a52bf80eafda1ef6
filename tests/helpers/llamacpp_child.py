"""Child-process bodies of tests/test_llamacpp.py, run by rakd.isolated in a fresh process (importable there:
nothing of pytest's)."""

import os
import sys

from rakd.models import llamacpp


def evaluate_gguf(spec: dict) -> dict:
    """Child-process body: load through open_llama and evaluate a few tokens (segfaulted on AMX before the fix)."""
    llm = llamacpp.open_llama(spec["path"], n_ctx=64, logits_all=True)
    ids = llm.tokenize(b"12*13-4+7=?\n", add_bos=True, special=True)
    llm.eval(ids)
    row = [float(x) for x in llm.scores[len(ids) - 1]]
    result = {"extra": llm.model_params.use_extra_bufts, "vocab": len(row), "finite": all(abs(x) < 1e30 for x in row)}
    llm.close()
    return result


def abort_now(spec: dict) -> dict:
    print("about to abort", file=sys.stderr, flush=True)
    os.abort()
