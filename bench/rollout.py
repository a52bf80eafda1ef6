"""Rollout throughput: transformers' generate() against the hand-written KV-cache loop.

    .venv/bin/python bench/rollout.py [--model runs/tiny/teacher] [--threads 1]

Prints sampled tokens/s for a batch of mixed-length prompts and for one
sequence, per backend. Without --model a random teacher-tiny is used.
"""

from __future__ import annotations

import argparse
import time

import torch

from rakd.data.generator import GeneratorConfig, generate
from rakd.models.load import load_causal_lm
from rakd.models.tokenizer import TokenizerConfig, build_bpe, wrap_tokenizer
from rakd.models.zoo import build_model, preset_config
from rakd.rollout import sample


def load(model_path: str | None):
    records = generate(GeneratorConfig(n_items=2000, templates=["expression", "word"], seed=7))
    if model_path:
        model, tokenizer = load_causal_lm(model_path)
    else:
        tokenizer = wrap_tokenizer(build_bpe(records, TokenizerConfig()))
        model = build_model(preset_config("teacher-tiny", tokenizer), seed=0).eval()
    return model, tokenizer, [r["question"] for r in records]


def measure(model, tokenizer, questions, backend, repeats=3, max_new_tokens=48):
    best = 0.0
    for seed in range(repeats):
        start = time.perf_counter()
        out = sample(model, tokenizer, questions, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed, backend=backend)
        elapsed = time.perf_counter() - start
        best = max(best, int(out.completion_mask.sum()) / elapsed)
    return best, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, questions = load(args.model)
    print(f"threads={args.threads} model={args.model or 'random teacher-tiny'}")
    for label, batch in ((f"batch of {args.batch} mixed-length prompts", questions[: args.batch]), ("one sequence", questions[:1])):
        for backend in ("generate", "loop"):
            tok_s, secs = measure(model, tokenizer, batch, backend)
            print(f"{label:<36} {backend:<9} {tok_s:9.0f} tokens/s  (last run {secs:.2f}s)")


if __name__ == "__main__":
    main()
