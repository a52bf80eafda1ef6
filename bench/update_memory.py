"""Peak memory of one RL-trainer update on a real vocabulary: the rows of a step through the forward and backward
passes in pieces whose logits fit `rakd.train.rl.LOGITS_PER_PASS`, against the whole minibatch at once.

    .venv/bin/python bench/update_memory.py [--student runs/smollm/compare/real/warmstart] [--method sft]
        [--rows 128] [--budget 268435456 ...]

`--student` is a model folder with the warm start's `traces.jsonl` (the real comparison's healed SmolLM2 student:
a 49,152-token vocabulary). Each budget runs in a process of its own, one optimiser step of `--method` on `--rows`
of those traces (what a comparison job's `sft` arm trains on at `prompts_per_step` x `group_size`), and reports the
process's peak resident memory and the step's seconds; `--precision auto` is a run's (bf16 autocast where the CPU has
bf16 units); `--budget 0` is the whole minibatch in one pass (beware: on
the real student that is more than 12 GB). Prints a table; writes results.json, results.md and meta.json into
bench/results/update_memory-DATE/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import results_dir, write_meta


def one(student: Path, method: str, rows: int, budget: int, precision: str) -> dict:
    """One update in this process; its peak RSS (GiB) and seconds."""
    import torch

    import rakd.train.rl as rl
    from rakd.io import read_jsonl
    from rakd.models.load import load_causal_lm
    from rakd.train.common import resolve_precision
    from rakd.train.config import LossParams, RLConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rl.LOGITS_PER_PASS = budget or 2**62
    model, tokenizer = load_causal_lm(student)
    traces = read_jsonl(student / "traces.jsonl")
    records = [{"question": t["question"], "answer": t["answer"]} for t in traces]
    precision = resolve_precision(precision, torch.device("cpu"))
    cfg = RLConfig(steps=1, prompts_per_step=rows, group_size=1, max_new_tokens=56, min_informative_groups=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with tempfile.TemporaryDirectory() as out:
        trainer = rl.RLTrainer(
            model, model, tokenizer, records, traces, method, LossParams(), cfg, Path(out), seed=0, precision=precision
        )
        started = time.perf_counter()
        metrics = trainer.step(0)
        seconds = time.perf_counter() - started
    return {
        "budget": budget,
        "vocab": model.config.vocab_size,
        "loss": metrics.get("loss"),
        "updates": metrics.get("updates"),
        "seconds": round(seconds, 1),
        "rss_before_gib": round(before, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "precision": precision,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="runs/smollm/compare/real/warmstart")
    parser.add_argument("--method", default="sft")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--budget", type=int, nargs="+", default=[2**28], help="LOGITS_PER_PASS; 0: whole")
    parser.add_argument("--precision", default="auto", help="fp32, bf16 or auto (as a run resolves it)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's single measurement
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.student), args.method, args.rows, args.budget[0], args.precision)))
        return
    rows = []
    for budget in args.budget:
        command = [sys.executable, __file__, "--one", "--student", args.student, "--method", args.method]
        command += ["--rows", str(args.rows), "--budget", str(budget), "--precision", args.precision]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            rows.append({"budget": budget, "error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    folder = results_dir("update_memory", args.out)
    write_meta(folder, student=args.student, method=args.method, rows=args.rows)
    (folder / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| logits per pass | peak RSS (GiB) | seconds | loss |", "|---|---|---|---|"]
    for row in rows:
        name = "whole minibatch" if not row["budget"] else f"{row['budget']:,}"
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:80]} | - | - |")
        else:
            lines.append(f"| {name} | {row['peak_rss_gib']} | {row['seconds']} | {row['loss']:.4f} |")
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
