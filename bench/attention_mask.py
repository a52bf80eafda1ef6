"""What building the attention mask ourselves buys: an RL step's sampling and scoring with the (B, 1, q, k) mask
passed to the model (`rakd.rollout.attention_mask_4d`, what the code does) against the 2-D padding mask that
transformers expands on every forward call (what it did before), in one run on the same model and prompts.

    .venv/bin/python bench/attention_mask.py --model runs/tiny/student [--teacher runs/tiny/teacher] [--threads 1]

Without --model a random student-tiny is used. Prints seconds per call (median of 3) and writes
results.json and meta.json into bench/results/attention_mask-DATE/.
"""

from __future__ import annotations

import argparse
import json

import torch
from benchlib import results_dir, timed, write_meta

import rakd.rollout.samplers as samplers
import rakd.rollout.scoring as scoring
from rakd.data.generator import GeneratorConfig, generate
from rakd.models.load import load_causal_lm
from rakd.models.tokenizer import TokenizerConfig, build_bpe, wrap_tokenizer
from rakd.models.zoo import build_model, preset_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--out", default=None, help="results folder (default: bench/results/attention_mask-DATE)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = generate(GeneratorConfig(n_items=args.prompts, seed=7))
    if args.model:
        model, tokenizer = load_causal_lm(args.model)
    else:
        tokenizer = wrap_tokenizer(build_bpe(generate(GeneratorConfig(n_items=2000, seed=7)), TokenizerConfig()))
        model = build_model(preset_config("student-tiny", tokenizer), seed=0)
    teacher = load_causal_lm(args.teacher)[0] if args.teacher else model
    questions = [r["question"] for r in records for _ in range(args.group)]
    built = samplers.attention_mask_4d
    result = {"threads": args.threads, "rollouts": len(questions)}
    for name, mask in (("2d mask (transformers builds it)", lambda model, m, q: m), ("4d mask (ours)", built)):
        samplers.attention_mask_4d = scoring.attention_mask_4d = mask
        torch.manual_seed(0)
        batch = samplers.sample(model, tokenizer, questions, max_new_tokens=48, batch_size=len(questions), seed=1)
        result[name] = {
            "sample_s": timed(
                lambda: samplers.sample(
                    model, tokenizer, questions, max_new_tokens=48, batch_size=len(questions), seed=1
                )
            ),
            "score_student_s": timed(lambda b=batch: scoring.score_completions(model, b)),
            "score_teacher_s": timed(lambda b=batch: scoring.score_completions(teacher, b)),
        }
        print(name, {k: round(v, 3) for k, v in result[name].items()}, flush=True)
    samplers.attention_mask_4d = scoring.attention_mask_4d = built
    folder = results_dir("attention_mask", args.out)
    write_meta(folder)
    (folder / "results.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
