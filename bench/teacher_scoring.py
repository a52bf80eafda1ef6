"""Teacher scoring: one plain pass per prompt + completion against the shared-prompt prefill (#13).

    .venv/bin/python bench/teacher_scoring.py [--run runs/tiny] [--threads 1]

`score_completions` prefills each distinct prompt of a chunk once and runs the G completions of its group on a
copy of that KV cache (`forward_completion_shared`). What that saves depends on how long the prompt is next to
the completions, so two batches are timed, both G=8, 5 groups (the 40 rows of a step's informative groups):

- `demo`: the trained student's samples on 16 train prompts of a finished run (the embedded default: prompts of
  about 11 tokens, completions of about 30), rows of the first five groups;
- `long`: random tokens, 100-token prompts and completions of 50-100 tokens (GSM8K under a chat template has
  prompts of that order).

Each is scored by the run's teacher both ways (`plain`: the length-sorted chunks before this change, one
`forward_completion` each) at chunk sizes 8, 16 and 32, interleaved, median of `--repeats`; the log-probs of the
two are checked equal (1e-4). Writes bench/results/teacher_scoring.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from deploy.validate import cpu_model
from rakd.io import read_jsonl
from rakd.models.load import load_causal_lm
from rakd.rollout import (
    Rollouts,
    forward_completion,
    sample,
    score_completions,
    select_rows,
    token_logprobs,
    trimmed,
)
from rakd.tables import markdown_table, text_table

RESULTS = Path(__file__).parent / "results"
GROUP, GROUPS = 8, 5


def plain_scores(model, rollouts: Rollouts, batch_size: int) -> torch.Tensor:
    """The scoring before the shared prefill: length-sorted, trimmed chunks, one pass over prompt + completion."""
    scores = torch.zeros(rollouts.completion_ids.shape)
    lengths = rollouts.prompt_mask.sum(-1) + rollouts.completion_mask.sum(-1)
    with torch.no_grad():
        for rows in torch.argsort(lengths, stable=True).split(batch_size):
            chunk = trimmed(select_rows(rollouts, rows))
            logits = forward_completion(
                model, chunk.prompt_ids, chunk.prompt_mask, chunk.completion_ids, chunk.completion_mask
            )
            width = chunk.completion_ids.shape[1]
            scores[rows, :width] = token_logprobs(logits, chunk.completion_ids) * chunk.completion_mask
    return scores


def demo_batch(run: Path, tokenizer) -> Rollouts:
    student, _ = load_causal_lm(run / "student")
    records = read_jsonl(run / "data" / "train.jsonl")[:16]
    questions = [r["question"] for r in records for _ in range(GROUP)]
    batch = sample(student.eval(), tokenizer, questions, max_new_tokens=64, seed=0, group_size=GROUP)
    return select_rows(batch, torch.arange(GROUP * GROUPS))


def long_batch(vocab: int) -> Rollouts:
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, vocab, (GROUPS, 100), generator=g).repeat_interleave(GROUP, 0)
    completions = torch.randint(10, vocab, (GROUPS * GROUP, 100), generator=g)
    ends = torch.randint(50, 101, (GROUPS * GROUP,), generator=g)
    mask = (torch.arange(100)[None] < ends[:, None]).long()
    return Rollouts(prompts, torch.ones_like(prompts), completions, mask, [""] * len(prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/tiny", help="a finished run: its teacher/ scores, its student/ samples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(RESULTS / "teacher_scoring"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    teacher, tokenizer = load_causal_lm(run / "teacher")
    teacher.eval()
    batches = {"demo": demo_batch(run, tokenizer), "long": long_batch(teacher.config.vocab_size)}
    rows = []
    for name, batch in batches.items():
        difference = (plain_scores(teacher, batch, 32) - score_completions(teacher, batch)).abs().max().item()
        assert difference < 1e-4, f"{name}: shared and plain scoring differ by {difference}"
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for size in (8, 16, 32):
                for way, score in (("plain", plain_scores), ("shared", score_completions)):
                    start = time.perf_counter()
                    score(teacher, batch, size)
                    times.setdefault((way, size), []).append(time.perf_counter() - start)
        for size in (8, 16, 32):
            plain, shared = (statistics.median(times[(way, size)]) for way in ("plain", "shared"))
            rows.append(
                {
                    "batch": name,
                    "prompt_tokens": float(batch.prompt_mask.sum(-1).float().mean()),
                    "completion_tokens": float(batch.completion_mask.sum(-1).float().mean()),
                    "chunk_rows": size,
                    "plain_s": plain,
                    "shared_s": shared,
                    "speedup": plain / shared,
                    "max_abs_logprob_diff": difference,
                }
            )
    machine = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__}
    title = (
        f"{machine['cpu']}, {args.threads} thread(s), fp32, teacher of {args.run}, {GROUPS} groups x G={GROUP}, "
        f"median of {args.repeats}"
    )
    table = [
        {
            "batch": r["batch"],
            "prompt / completion tokens": f"{r['prompt_tokens']:.0f} / {r['completion_tokens']:.0f}",
            "chunk rows": r["chunk_rows"],
            "plain s": f"{r['plain_s']:.4f}",
            "shared prefill s": f"{r['shared_s']:.4f}",
            "speed-up": f"{r['speedup']:.2f}x",
        }
        for r in rows
    ]
    print(title)
    print(text_table(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(f"{title}\n\n{markdown_table(table)}\n")


if __name__ == "__main__":
    main()
