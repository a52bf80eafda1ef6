"""The warm start's teacher traces, sampled in rounds: the curriculum's questions first, and, while the student
misses its target, more of the harder ones (`warmstart.recover`).

A round is sampled once and kept in the stage's work folder (`traces.pending.jsonl`, each trace with its
`round`; `traces.rounds.json`, each round's first SFT step, its counts and the FLOPs of decoding it), so a
crashed warm start resumes on the traces it had, and a step's batch depends only on the step and the rounds
begun by then.

A round's traces are also kept beside the teacher (`trace-cache/<key>.json` in the run folder that holds the
teacher, which a size sweep's points link to): the key is everything the sampled traces depend on (the teacher's
weights, the prompts, temperature, token limit, samples per prompt, seed, precision, device and rakd's version),
so students of several sizes from one teacher sample them once. A round read from the cache is charged the FLOPs
its sampling cost, as the ledger counts the work a student needed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import rakd
from rakd.flops import ModelDims, rollout_flops
from rakd.io import atomic_write_json, atomic_write_text, fingerprint, fingerprint_path, read_jsonl, to_jsonl
from rakd.rollout import sample
from rakd.train.common import autocast, step_seed
from rakd.verify import reward


def has_difficulty(records: list[dict]) -> bool:
    """Whether a split carries a difficulty (`ops`, as the built-in generator writes it); GSM8K and most JSONL
    files do not, and then neither the curriculum nor the warm start's target filters by it."""
    return any(record.get("ops") is not None for record in records)


def warmstart_prompts(records: list[dict], cfg, seed: int, harder_fraction: float | None = None) -> list[dict]:
    """The questions the warm start's traces answer: the first `n_prompts`, filtered by `max_difficulty` (plus a
    seeded `harder_fraction` of the harder ones; a larger fraction keeps a superset of a smaller one's)."""
    records = records[: cfg.n_prompts]
    if cfg.max_difficulty is None or not has_difficulty(records):
        return records  # no curriculum asked for, or none possible: the source has no difficulty
    fraction = cfg.harder_fraction if harder_fraction is None else harder_fraction
    rng = random.Random(step_seed(seed, 0, salt=31))
    kept = []
    for line, record in enumerate(records, 1):
        if record.get("ops") is None:
            raise ValueError(
                f"distill.warmstart.max_difficulty needs each train record's difficulty (`ops`, as the built-in "
                f"generator writes it); train.jsonl line {line} has none"
            )
        if record["ops"] <= cfg.max_difficulty or rng.random() < fraction:
            kept.append(record)
    return kept


def teacher_traces(
    teacher, tokenizer, records: list[dict], cfg, seed: int, precision: str = "fp32"
) -> tuple[list[dict], int]:
    """Sampled teacher solutions of `records` (the warm start's prompts) that the verifier accepts, one per distinct
    (question, completion), and the FLOPs of decoding every sample, rejected ones included."""
    if not records:
        return [], 0
    questions = [r["question"] for r in records for _ in range(cfg.samples_per_prompt)]
    answers = [r["answer"] for r in records for _ in range(cfg.samples_per_prompt)]
    with autocast(next(teacher.parameters()).device, precision):
        rollouts = sample(
            teacher,
            tokenizer,
            questions,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            seed=seed,
            progress="teacher traces",
        )
    seen, traces = set(), []
    for question, answer, text in zip(questions, answers, rollouts.texts):
        if reward(text, answer) == 1.0 and (question, text) not in seen:
            seen.add((question, text))
            traces.append({"question": question, "answer": answer, "completion": text})
    return traces, rollout_flops(ModelDims.of(teacher), rollouts)


def read_cached(path: Path) -> tuple[list[dict], int] | None:
    """A cached round's (traces, FLOPs of sampling them); None when it is not there or cannot be read."""
    try:
        entry = json.loads(path.read_text())
        return list(entry["traces"]), int(entry["teacher_generate"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached(path: Path, traces: list[dict], flops: int, prompts: int) -> None:
    """Keep a round's traces and the FLOPs of sampling them where `read_cached` finds them."""
    atomic_write_json(path, {"traces": traces, "teacher_generate": flops, "prompts": prompts})


class TraceRounds:
    """The rounds of traces in a work folder: `add(step)` samples the next round (rank 0), `pairs_at(step)` the
    (question, completion) pairs SFT trains on at a step, `boundary_after(step)` where the next round would
    begin (None: no more rounds)."""

    def __init__(self, work: Path, cfg, seed: int, precision: str = "fp32", teacher_dir: Path | None = None):
        self.work, self.cfg, self.seed, self.precision = Path(work), cfg, seed, precision
        self.pending, self.index = self.work / "traces.pending.jsonl", self.work / "traces.rounds.json"
        self.teacher_dir = Path(teacher_dir).resolve() if teacher_dir is not None else None  # None: no cache
        self._teacher_print = None

    def rounds(self) -> list[dict]:
        return json.loads(self.index.read_text()) if self.index.exists() else []

    def traces(self) -> list[dict]:
        done = len(self.rounds())
        return [t for t in read_jsonl(self.pending) if t.get("round", 0) < done] if self.pending.exists() else []

    def pairs_at(self, step: int) -> list[tuple[str, str]]:
        begun = {r["round"] for r in self.rounds() if r["step"] <= step}
        return [(t["question"], t["completion"]) for t in self.traces() if t.get("round", 0) in begun]

    def fraction(self, round_: int) -> float:
        recover = self.cfg.recover
        return min(1.0, self.cfg.harder_fraction + (round_ * recover.add_fraction if recover else 0.0))

    def boundary_after(self, step: int) -> int | None:
        """The SFT step after `step` at which the pairs change: a recorded round's first step (a resumed run), or
        where the next round would begin if the target is still missed then; None: no more rounds."""
        rounds, recover = self.rounds(), self.cfg.recover
        later = [r["step"] for r in rounds if r["step"] > step]
        if later:
            return min(later)
        if recover is None or self.cfg.stop is None or not rounds or len(rounds) > recover.rounds:
            return None
        if self.fraction(len(rounds) - 1) >= 1:  # every harder question is traced already
            return None
        return max(step + 1, rounds[-1]["step"] + recover.after)

    def begins_at(self, step: int) -> bool:
        return any(r["step"] == step for r in self.rounds())

    def add(self, train: list[dict], teacher, tokenizer, step: int, log) -> dict:
        """Sample round `len(rounds)`: the prompts its larger harder fraction adds, from step `step` on."""
        rounds = self.rounds()
        index = len(rounds)
        prompts, seed = self.round_prompts(train, index), self.round_seed(index)
        cached = self.cache_path(prompts, seed, next(teacher.parameters()).device)
        if cached is not None and (hit := read_cached(cached)) is not None:
            traces, flops = hit
            log(f"[warmstart] traces of round {index} from {cached} (sampled once by an earlier run of this teacher)")
        else:
            traces, flops = teacher_traces(teacher, tokenizer, prompts, self.cfg, seed, self.precision)
            if cached is not None:
                write_cached(cached, traces, flops, len(prompts))
        kept = [t for t in self.traces() if t.get("round", 0) < index]
        entry = {
            "round": index,
            "step": step,
            "prompts": len(prompts),
            "traces": len(traces),
            "teacher_generate": flops,
        }
        self.work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.pending, to_jsonl(kept + [{**t, "round": index} for t in traces]))
        atomic_write_text(self.index, json.dumps(rounds + [entry], indent=1) + "\n")  # the round counts once here
        what = (
            "" if index == 0 else f" (round {index}: harder fraction {self.fraction(index):.2f}, from SFT step {step})"
        )
        log(f"[warmstart] {len(traces)} verified teacher traces from {len(prompts)} prompts{what}")
        return entry

    def round_prompts(self, train: list[dict], index: int) -> list[dict]:
        """The prompts round `index` traces: those its harder fraction adds to the rounds before it."""
        prompts = warmstart_prompts(train, self.cfg, self.seed, self.fraction(index))
        if index:
            before = {r["question"] for r in warmstart_prompts(train, self.cfg, self.seed, self.fraction(index - 1))}
            prompts = [r for r in prompts if r["question"] not in before]
        return prompts

    def round_seed(self, index: int) -> int:
        return self.seed if index == 0 else step_seed(self.seed, index, salt=37)

    def keep_cached(self, train: list[dict], device) -> None:
        """Every recorded round kept beside the teacher where it is not yet (rounds a run sampled before the cache
        existed), so later students of this teacher read them back."""
        for entry in self.rounds() if self.teacher_dir is not None else []:
            index = entry["round"]
            prompts = self.round_prompts(train, index)
            path = self.cache_path(prompts, self.round_seed(index), device)
            if not path.exists():
                own = [t for t in self.traces() if t.get("round", 0) == index]  # 0.6.0's traces have no round
                own = [{k: v for k, v in t.items() if k != "round"} for t in own]
                write_cached(path, own, entry["teacher_generate"], len(prompts))

    def cache_path(self, prompts: list[dict], seed: int, device) -> Path | None:
        """Where a round of these prompts' traces is kept beside the teacher (None: no teacher folder given)."""
        if self.teacher_dir is None:
            return None
        if self._teacher_print is None:
            self._teacher_print = fingerprint_path(self.teacher_dir)  # every file of the tuned teacher, read once
        key = fingerprint(
            {
                "teacher": self._teacher_print,
                "prompts": [(r["question"], r["answer"]) for r in prompts],
                "temperature": self.cfg.temperature,
                "max_new_tokens": self.cfg.max_new_tokens,
                "samples_per_prompt": self.cfg.samples_per_prompt,
                "seed": seed,
                "precision": self.precision,
                "device": getattr(device, "type", str(device)),
                "version": rakd.__version__,
            }
        )
        return self.teacher_dir.parent / "trace-cache" / f"{key}.json"

    def teacher_generate_flops(self) -> int:
        return sum(r.get("teacher_generate", 0) for r in self.rounds())

    def finish(self, final: Path) -> None:
        """Move the traces to their final name and drop the round index (its numbers are in the evaluation)."""
        self.pending.replace(final)
        self.index.unlink(missing_ok=True)
