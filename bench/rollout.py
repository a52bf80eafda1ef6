"""Rollout throughput: transformers' generate() (dynamic and static cache) against the hand-written KV-cache loop.

    .venv/bin/python bench/rollout.py [--model runs/tiny/teacher] [--threads 1]
    python bench/rollout.py --device cuda --preset student-tiny \
        --overrides '{"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                      "intermediate_size": 1024, "max_position_embeddings": 512}' --batch 512 --max-new-tokens 160

Prints sampled tokens/s for a batch of mixed-length prompts and for one
sequence, per backend. Without --model a random model of `--preset` is used
(random weights rarely emit EOS, so every row runs to the token limit). On
CUDA sampling runs under the trainers' bf16 autocast, as in an RL step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rakd.data.generator import GeneratorConfig, generate
from rakd.models.load import load_causal_lm
from rakd.models.tokenizer import TokenizerConfig, build_bpe, wrap_tokenizer
from rakd.models.zoo import build_model, count_parameters, preset_config
from rakd.rollout import sample
from rakd.train.common import autocast


def load(model_path: str | None, preset: str, overrides: dict):
    records = generate(GeneratorConfig(n_items=2000, templates=["expression", "word"], seed=7))
    if model_path:
        model, tokenizer = load_causal_lm(model_path)
    else:
        tokenizer = wrap_tokenizer(build_bpe(records, TokenizerConfig()))
        model = build_model(preset_config(preset, tokenizer, **overrides), seed=0).eval()
    return model, tokenizer, [r["question"] for r in records]


def measure(model, tokenizer, questions, backend, repeats=3, max_new_tokens=48):
    best = 0.0
    device = next(model.parameters()).device
    for seed in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device):
            out = sample(
                model,
                tokenizer,
                questions,
                max_new_tokens=max_new_tokens,
                temperature=1.0,
                seed=seed,
                backend=backend,
                batch_size=len(questions),
            )
        elapsed = time.perf_counter() - start
        best = max(best, int(out.completion_mask.sum()) / elapsed)
    return best, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="teacher-tiny")
    parser.add_argument("--overrides", type=json.loads, default={}, help="JSON of LlamaConfig fields")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, questions = load(args.model, args.preset, args.overrides)
    model.to(args.device)
    print(
        f"device={args.device} threads={args.threads} model={args.model or f'random {args.preset} {args.overrides}'} "
        f"parameters={count_parameters(model):,} max_new_tokens={args.max_new_tokens}"
    )
    for label, batch in (
        (f"batch of {args.batch} mixed-length prompts", questions[: args.batch]),
        ("one sequence", questions[:1]),
    ):
        for backend in ("generate", "loop", "static"):
            tok_s, secs = measure(model, tokenizer, batch, backend, max_new_tokens=args.max_new_tokens)
            print(f"{label:<36} {backend:<9} {tok_s:9.0f} tokens/s  (last run {secs:.2f}s)")


if __name__ == "__main__":
    main()
