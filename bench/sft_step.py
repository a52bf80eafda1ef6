"""One SFT step (forward, backward, AdamW) of a model folder on 16 verified word-problem solutions through its chat
template, timed with whichever rakd is on PYTHONPATH, so that an older checkout's step can be timed on the same
rows, model and machine (as `bench/rollout.py` does for the samplers).

    .venv/bin/python bench/sft_step.py --save-student /tmp/student15        # SmolLM2-135M's 15 evenly kept layers
    PYTHONPATH=<older checkout> .venv/bin/python bench/sft_step.py --model /tmp/student15 --json old.json
    .venv/bin/python bench/sft_step.py --model /tmp/student15 --json ours.json [--precision bf16]

Prints (and writes with --json) every step's seconds and the best after the first; the same rows in every
version (the generator's seed 11, the batch of step 0), so the ratio of the best times is the ratio of tokens/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def save_student(folder: str, layers: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import load

    from rakd.models.load import save_model

    model, tokenizer = load(layers)
    save_model(model, tokenizer, folder)
    print(f"{layers}-layer student written to {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model folder")
    parser.add_argument("--save-student", metavar="FOLDER", help="write SmolLM2-135M's --layers student here")
    parser.add_argument("--layers", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: the trainers' autocast")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.save_student:
        return save_student(args.save_student, args.layers)
    import rakd
    from rakd.data.generator import GeneratorConfig, generate
    from rakd.models.load import load_causal_lm
    from rakd.train.config import OptimConfig, SFTConfig
    from rakd.train.sft import SFTTrainer

    torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model)
    items = generate(GeneratorConfig(n_items=16, min_ops=1, max_ops=4, templates=["word"], seed=11))
    pairs = [(item["question"], item["solution"]) for item in items]
    cfg = SFTConfig(steps=args.steps + 1, batch_size=16, optim=OptimConfig(lr=1e-6, warmup_steps=0))
    seconds = []
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(model, tokenizer, pairs, cfg, Path(out), seed=0, name="bench", precision=args.precision)
        for _ in range(args.steps):
            started = time.perf_counter()
            trainer.step(0)
            seconds.append(time.perf_counter() - started)
    result = {"rakd": str(Path(rakd.__file__).parent), "model": args.model, "threads": args.threads,
              "precision": args.precision, "seconds": seconds, "best": min(seconds[1:])}  # fmt: skip
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
