"""Rollout throughput per sampler: our KV-cache loop, our CUDA-graph decode (`graph`), transformers' generate()
with a dynamic and a static cache.

    .venv/bin/python bench/rollout.py [--model runs/tiny/student] [--threads 1]
    python bench/rollout.py --device cuda --student-of configs/gpu.yaml \
        --batch 512 --group-size 8 --max-new-tokens 160 --json bench/results/rollout-gpu.json

Prints sampled tokens/s per sampler for a batch of mixed-length prompts (with --group-size G: batch/G distinct
prompts, each G times, as an RL step draws them; `loop` and `graph` prefill each once) and, unless --no-single,
for one sequence. Each sampler runs --repeats times with seeds 0..; the best run's tokens/s is reported beside the
first run's seconds (on CUDA the first `static` run includes compiling, a `graph` run always includes its
capture). Without --model a random model of `--preset` is used (random weights rarely emit EOS, so most rows run
to the token limit: 71% of 512 x 160 tokens on the GPU config's student). On CUDA sampling runs under the
trainers' bf16 autocast, as in an RL step.

A sampler the imported `rakd` lacks, or one that fails, is reported as such and the rest still run: with
PYTHONPATH pointing at an older checkout this measures that code's samplers on the same prompts (an older
`sample` without `group_size` draws the repeated prompts as they come).
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
import traceback
from pathlib import Path

import torch
import yaml
from benchlib import machine

import rakd
from rakd.data.generator import GeneratorConfig, generate
from rakd.models.load import load_causal_lm
from rakd.models.tokenizer import TokenizerConfig, build_bpe, wrap_tokenizer
from rakd.models.zoo import build_model, count_parameters, preset_config
from rakd.rollout import sample
from rakd.train.common import autocast

BACKENDS = ("loop", "graph", "static", "generate")


def load(model_path: str | None, preset: str, overrides: dict):
    records = generate(GeneratorConfig(n_items=2000, templates=["expression", "word"], seed=7))
    if model_path:
        model, tokenizer = load_causal_lm(model_path)
    else:
        tokenizer = wrap_tokenizer(build_bpe(records, TokenizerConfig()))
        model = build_model(preset_config(preset, tokenizer, **overrides), seed=0).eval()
    return model, tokenizer, [r["question"] for r in records]


def measure(model, tokenizer, questions, backend, *, repeats, max_new_tokens, group_size) -> dict:
    device = next(model.parameters()).device
    grouped = group_size > 1 and "group_size" in inspect.signature(sample).parameters
    runs = []
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
                **({"group_size": group_size} if grouped else {}),
            )
        seconds = time.perf_counter() - start
        runs.append({"seconds": seconds, "tokens": int(out.completion_mask.sum())})
    best = max(runs, key=lambda r: r["tokens"] / r["seconds"])
    return {
        "tokens_per_s": best["tokens"] / best["seconds"],
        "best_seconds": best["seconds"],
        "first_seconds": runs[0]["seconds"],
        "tokens": best["tokens"],
        "shared_prefill": grouped,
    }


def plot(paths: list[Path], out: Path) -> None:
    """Tokens/s per sampler as horizontal bars, one bar per (result file, sampler) of the batch shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    for path in paths:
        result = json.loads(path.read_text())
        for entry in result["results"]:
            if "tokens_per_s" in entry and entry["shape"].startswith("batch"):
                code = "this code" if "/" in result["rakd"] else result["rakd"]
                model = "random model" if result["model"].startswith("random") else "trained model"
                bars.append((f"{entry['backend']}: {code}, {model} ({path.stem})", entry["tokens_per_s"]))
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(bars) + 1.4))
    for y, (_, value) in enumerate(reversed(bars)):
        ax.barh(y, value, color="tab:blue")
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [label for label, _ in reversed(bars)], fontsize=8)
    first = json.loads(paths[0].read_text())
    ax.set_xlabel("sampled tokens/s (best of the seeds)")
    ax.set_title(
        f"{first['machine']}: {first['batch']} rows ({first['group_size']} per prompt) x {first['max_new_tokens']} "
        "new tokens",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot-from", type=Path, nargs="+", default=None, help="draw saved --json results")
    parser.add_argument("--png", type=Path, default=None, help="with --plot-from: the picture's path")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--group-size", type=int, default=1, help="G samples per distinct prompt (RL's shape)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="teacher-tiny")
    parser.add_argument("--overrides", type=json.loads, default={}, help="JSON of LlamaConfig fields")
    parser.add_argument(
        "--student-of", type=Path, default=None, help="a pipeline config: a random model of its student's size"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated samplers to time")
    parser.add_argument("--no-single", action="store_true", help="skip the one-sequence measurement")
    parser.add_argument("--label", default=None, help="a name for this code in the JSON (default: rakd's path)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.plot_from:
        plot(args.plot_from, args.png or args.plot_from[0].with_suffix(".png"))
        return
    torch.set_num_threads(args.threads)
    if args.student_of:  # read as plain YAML: an older checkout's schema (timed through PYTHONPATH) may differ
        student = yaml.safe_load(args.student_of.read_text())["distill"]["student"]["model"]
        args.preset, args.overrides = student["preset"], student.get("overrides", {})
    model, tokenizer, questions = load(args.model, args.preset, args.overrides)
    model.to(args.device)
    if args.batch % args.group_size:
        parser.error(f"--batch {args.batch} is not a multiple of --group-size {args.group_size}")
    distinct = questions[: args.batch // args.group_size]
    batch = [q for q in distinct for _ in range(args.group_size)]
    result = {
        "machine": machine(args.device),
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "rakd": args.label or str(Path(rakd.__file__).parent),
        "model": args.model or f"random {args.preset} {args.overrides}",
        "parameters": count_parameters(model),
        "batch": args.batch,
        "group_size": args.group_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "results": [],
    }
    print(
        f"{result['machine']} device={args.device} threads={args.threads} rakd={result['rakd']} "
        f"model={result['model']} parameters={result['parameters']:,} max_new_tokens={args.max_new_tokens}"
    )
    shapes = [(f"batch of {args.batch} ({len(distinct)} prompts x {args.group_size})", batch, args.group_size)]
    if not args.no_single:
        shapes.append(("one sequence", questions[:1], 1))
    for label, rows, group in shapes:
        for backend in args.backends.split(","):
            entry = {"shape": label, "backend": backend}
            try:
                entry.update(
                    measure(
                        model,
                        tokenizer,
                        rows,
                        backend,
                        repeats=args.repeats,
                        max_new_tokens=args.max_new_tokens,
                        group_size=group,
                    )
                )
                print(
                    f"{label:<36} {backend:<9} {entry['tokens_per_s']:9.0f} tokens/s  "
                    f"(best run {entry['best_seconds']:.3f}s, first {entry['first_seconds']:.3f}s, "
                    f"{entry['tokens']} tokens)",
                    flush=True,
                )
            except (KeyError, RuntimeError, ValueError, TypeError, AssertionError) as error:  # reported, not fatal
                entry["error"] = f"{type(error).__name__}: {error}"
                print(f"{label:<36} {backend:<9} FAILED {entry['error'][:300]}", flush=True)
                traceback.print_exc(limit=4)
            result["results"].append(entry)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
