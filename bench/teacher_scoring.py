"""Teacher scoring: one plain pass per prompt + completion against the prefix forest (#13).

    .venv/bin/python bench/teacher_scoring.py [--run runs/tiny] [--threads 1]

`score_completions` packs the rows of each distinct prompt into one sequence, the prompt followed by the trie
of their completions (`rakd.rollout.prefix_forests`), so each distinct prompt and completion prefix goes through
the teacher once. What that saves depends on how much a group's G samples share, so three batches are timed,
each the 40 rows of 5 informative groups (mixed rewards: the rows a `rakd` step scores) of G=8:

- `warm start`: samples of the demo's warm-started student (`<run>/compare/warmstart`, where `rakd compare`
  keeps it; skipped if absent), RL's starting point;
- `trained`: samples of the run's final student (it agrees with itself more);
- `long`: random tokens, 100-token prompts and completions of 50-100 tokens, nothing shared but the prompt
  (GSM8K under a chat template has prompts of that order): the forest's worst case.

Each is scored by the run's teacher both ways (`plain`: the scoring before prefix sharing, length-sorted chunks
with the shared padding trimmed, one `forward_completion` each) at 16, 32 and 64 rows a chunk, interleaved,
median of `--repeats`; the log-probs of the two are checked equal (1e-4). Writes
results.{json,md} and meta.json into bench/results/teacher_scoring-DATE/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from benchlib import cpu_model, results_dir, write_meta

from rakd.io import read_jsonl
from rakd.models.load import load_causal_lm
from rakd.rollout import (
    Rollouts,
    prefix_forests,
    sample,
    score_completions,
    select_rows,
)
from rakd.tables import markdown_table, text_table
from rakd.verify import reward

GROUP, GROUPS, SIZES = 8, 5, (16, 32, 64)


def plain_scores(model, rollouts: Rollouts, batch_size: int) -> torch.Tensor:
    """The scoring before prefix sharing (and still on accelerators): length-sorted, trimmed chunks, one pass over
    prompt + completion."""
    return score_completions(model, rollouts, batch_size, packed=False)


def informative_batch(student_dir: Path, run: Path, tokenizer) -> Rollouts:
    """The first `GROUPS` groups of G samples with mixed rewards, from 64 train prompts."""
    student, _ = load_causal_lm(student_dir)
    records = read_jsonl(run / "data" / "train.jsonl")[:64]
    questions = [r["question"] for r in records for _ in range(GROUP)]
    batch = sample(student.eval(), tokenizer, questions, max_new_tokens=64, seed=0, group_size=GROUP)
    mixed = []
    for g, record in enumerate(records):
        rows = range(g * GROUP, (g + 1) * GROUP)
        if len({reward(batch.texts[i], record["answer"]) for i in rows}) > 1:
            mixed.extend(rows)
    return select_rows(batch, torch.tensor(mixed[: GROUP * GROUPS]))


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
    parser.add_argument("--out", default=None, help="results folder (default: bench/results/teacher_scoring-DATE)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    teacher, tokenizer = load_causal_lm(run / "teacher")
    teacher.eval()
    batches = {}
    if (run / "compare" / "warmstart" / "config.json").exists():
        batches["warm start"] = informative_batch(run / "compare" / "warmstart", run, tokenizer)
    batches["trained"] = informative_batch(run / "student", run, tokenizer)
    batches["long"] = long_batch(teacher.config.vocab_size)
    rows = []
    for name, batch in batches.items():
        difference = (plain_scores(teacher, batch, 32) - score_completions(teacher, batch)).abs().max().item()
        assert difference < 1e-4, f"{name}: forest and plain scoring differ by {difference}"
        real = int(batch.prompt_mask.sum() + batch.completion_mask.sum())
        packed = sum(int(f.sizes.sum()) for f in prefix_forests(batch, 64))
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for size in SIZES:
                for way, score in (("plain", plain_scores), ("forest", score_completions)):
                    start = time.perf_counter()
                    score(teacher, batch, size)
                    times.setdefault((way, size), []).append(time.perf_counter() - start)
        for size in SIZES:
            plain, forest = (statistics.median(times[(way, size)]) for way in ("plain", "forest"))
            rows.append(
                {
                    "batch": name,
                    "rows": len(batch.texts),
                    "prompt_tokens": float(batch.prompt_mask.sum(-1).float().mean()),
                    "completion_tokens": float(batch.completion_mask.sum(-1).float().mean()),
                    "row_tokens": real,
                    "forest_tokens": packed,
                    "chunk_rows": size,
                    "plain_s": plain,
                    "forest_s": forest,
                    "speedup": plain / forest,
                    "max_abs_logprob_diff": difference,
                }
            )
    machine = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__}
    title = (
        f"{machine['cpu']}, {args.threads} thread(s), fp32, teacher of {args.run}, {GROUPS} informative groups x "
        f"G={GROUP}, median of {args.repeats}"
    )
    table = [
        {
            "batch": r["batch"],
            "prompt / completion tokens": f"{r['prompt_tokens']:.0f} / {r['completion_tokens']:.0f}",
            "tokens: rows / forest": f"{r['row_tokens']} / {r['forest_tokens']}",
            "chunk rows": r["chunk_rows"],
            "plain s": f"{r['plain_s']:.4f}",
            "forest s": f"{r['forest_s']:.4f}",
            "speed-up": f"{r['speedup']:.2f}x",
        }
        for r in rows
    ]
    print(title)
    print(text_table(table))
    folder = results_dir("teacher_scoring", args.out)
    out = folder / "results"
    write_meta(folder)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(f"{title}\n\n{markdown_table(table)}\n")


if __name__ == "__main__":
    main()
