"""A kept comparison, read in one place: its job rows with their per-problem answers, its context as numbers, its
learning-rate sweep and its failed jobs.

A comparison's folder (`<run>/compare[/<regime>]/results/`, copied to `bench/results/compare-<regime>-<date>/`)
holds `results.json` (the context, a row per job, the sweep, the failed jobs) and the per-problem greedy answers
beside it (`per_problem.json`, and `per_problem_at_reference_{steps,seconds}.json` for the rows' other readings).
`read_comparison` joins them back into the rows `rakd.compare.results` and `rakd.compare.stats` read.

The context is numbers (`context_record` builds it; `context_lines` writes it for people). Comparisons kept by
rakd 0.6.0 and earlier stored it as text ("pass 5.7%", "(8.0x)"); `context_numbers` reads that text, here and
nowhere else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from rakd.flops import format_flops

READINGS = ("at_reference_steps", "at_reference_seconds")  # a row's other readings, each with its own answers
STEP0 = "step 0 (TRRD's teacher term on the warm start's own samples)"


class Reading(TypedDict, total=False):
    """A job read at another point than its budget: the reference's step count or its compute seconds."""

    steps: int
    seconds: float
    greedy_accuracy: float
    greedy_stderr: float
    greedy_correct: str  # rakd.schema.encode_answers
    val_greedy_accuracy: float | None


class JobRow(TypedDict, total=False):
    """One comparison job's result (`rakd.compare.run.run_job`), as `results.json` keeps it (its answers beside, in
    `per_problem*.json`; `results.json` keeps every key but `greedy_correct`). Rows kept by older versions lack the
    later keys (`label`, `at_reference_steps`, `at_reference_seconds`, `clip`, `worker`, `val_at_budget`,
    `steps_run`, `seconds_compute`, the FLOPs); readers use `.get` for those."""

    # the job (rakd.compare.jobs.Job) and its names
    method: str
    seed: int
    lr: float
    alpha: float
    teacher_clamp: float | None
    lr_in_variant: bool
    name: str
    variant: str
    label: str
    # the reading at its budget (test split) and where else it was read
    steps: int
    steps_run: int
    greedy_accuracy: float
    greedy_stderr: float
    greedy_correct: str
    val_at_budget: float | None
    at_reference_steps: Reading | None
    at_reference_seconds: Reading | None
    sampled_accuracy: float | None
    sampled_stderr: float | None
    pass_at_k: float | None
    by_difficulty: dict | None
    warmstart_greedy_accuracy: float
    # what it cost
    seconds: float
    seconds_compute: float
    seconds_sample: float
    seconds_teacher: float
    seconds_update: float
    flops_total: float
    flops: dict
    clip: dict
    started: float
    finished: float
    worker: int
    curve: list[dict]  # {step, seconds, flops, val} at each val check


@dataclass(frozen=True)
class KeptComparison:
    """A comparison read back: `rows` carry their `greedy_correct` (and their readings' own); `context` is numbers."""

    rows: list[JobRow]
    context: dict
    lr_sweep: list[dict]
    failed: list[dict]
    folder: Path


def read_comparison(folder: Path) -> KeptComparison:
    """The comparison kept in `folder` (its results.json and per-problem answers); rows in their stored order."""
    path = folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no results.json (not a comparison's results folder)")
    data = json.loads(path.read_text())
    answers = json.loads((folder / "per_problem.json").read_text())
    rows = []
    for row in data["runs"]:
        if row["name"] not in answers:
            raise ValueError(f"{folder / 'per_problem.json'}: no answers for the job {row['name']}")
        rows.append({**row, "greedy_correct": answers[row["name"]]})
    for key in READINGS:  # comparisons from before a reading lack its file
        kept = folder / f"per_problem_{key}.json"
        readings = json.loads(kept.read_text()) if kept.is_file() else {}
        for row in rows:
            if row.get(key):
                row[key] = {**row[key], "greedy_correct": readings[row["name"]]}
    context = context_numbers(data.get("context", {}))
    return KeptComparison(rows, context, data.get("lr_sweep", []), data.get("failed", []), folder)


def context_record(
    *,
    config: str,
    jobs: int,
    budget: str,
    budget_per_job: dict,
    reference: str,
    reference_steps: int,
    prompts_per_step: int,
    group_size: int,
    level: float | None,
    warmstart_greedy: float | None = None,
    warmstart_flops: float | None = None,
    parameters: dict | None = None,
    step0: dict | None = None,
    failed_jobs: int = 0,
    partial: str | None = None,
) -> dict:
    """A comparison's context as numbers: what ran (`config`, `jobs`, the budget and what each job got, the
    reference variant and its RL steps, the group shape), the interval's level, and, where known, the warm start's
    test greedy accuracy and training FLOPs, the teacher's and student's non-embedding parameters and their ratio,
    and the step-0 diagnostic (`rakd.compare.diagnostic.step0_diagnostic`'s numbers)."""
    from rakd.compare.stats import INTERVAL

    context = {
        "config": config,
        "jobs": jobs,
        "budget": budget,
        "budget_per_job": budget_per_job,
        "reference": reference,
        "reference_steps": reference_steps,
        "prompts_per_step": prompts_per_step,
        "group_size": group_size,
        "interval": {"level": level, "method": INTERVAL} if level is not None else None,
        "warmstart_greedy": warmstart_greedy,
        "warmstart_flops": warmstart_flops,
        "parameters": parameters,
        "step0": step0,
        "failed_jobs": failed_jobs,
    }
    if partial:
        context["partial"] = partial
    return context


def describe_budget(budget: dict, steps: int) -> str:
    """What each job's budget was, in words: '1.51 TFLOP of training', '120 s of RL', '50 RL steps'."""
    if "flops_budget" in budget:
        return f"{format_flops(budget['flops_budget'])} of training"
    if "time_budget_s" in budget:
        return f"{budget['time_budget_s']:.0f} s of RL"
    return f"{budget.get('steps', steps)} RL steps"


def describe_step0(d: dict) -> str:
    """The step-0 diagnostic in one line."""
    return (
        f"{d['prompts']} x {d['group_size']} own samples: pass {100 * d['pass_rate']:.1f}%, mixed groups "
        f"{100 * d['informative_groups']:.0f}%; log π − log π_T median {d['gap_median']:+.2f} "
        f"(5-95%: {d['gap_p5']:+.2f} .. {d['gap_p95']:+.2f}), clamped {100 * d['clamped']:.1f}%; TRRD's clip "
        f"removes the gradient of {100 * d['positive_no_gradient']:.1f}% of A > 0 tokens and "
        f"{100 * d['negative_no_gradient']:.1f}% of A < 0 tokens"
    )


def context_lines(context: dict) -> list[str]:
    """The context for people, one 'what: value' line each (results.md, regimes.md); what it lacks is left out."""
    c = context
    lines = [f"config: {c['config']}"] if c.get("config") else []
    if c.get("partial"):
        lines.append(f"PARTIAL: {c['partial']}")
    if c.get("warmstart_greedy") is not None:
        lines.append(f"warm start greedy: {100 * c['warmstart_greedy']:.1f}%")
    if c.get("warmstart_flops") is not None:
        lines.append(f"warm start FLOPs (shared, not in the budget): {format_flops(c['warmstart_flops'])}")
    if c.get("jobs") is not None:
        lines.append(f"jobs: {c['jobs']}")
    if c.get("budget"):
        lines.append(f"budget: {c['budget']}")
    if c.get("budget_per_job") is not None:
        lines.append(f"budget per job: {describe_budget(c['budget_per_job'], c['reference_steps'])}")
    if c.get("reference"):
        lines.append(f"reference: {c['reference']}, {c['reference_steps']} RL steps")
    if c.get("prompts_per_step"):
        lines.append(f"prompts x G: {c['prompts_per_step']} x {c['group_size']}")
    if c.get("parameters"):
        p = c["parameters"]
        lines.append(
            f"teacher:student non-embedding parameters: {p['teacher']:,} : {p['student']:,} ({p['ratio']:.1f}x)"
        )
    if c.get("step0"):
        lines.append(f"{STEP0}: {describe_step0(c['step0'])}")
    if c.get("failed_jobs"):
        lines.append(f"failed jobs: {c['failed_jobs']} (listed at the end; their variants are read without them)")
    if c.get("interval"):
        lines.append(f"interval: {c['interval']['level']:.0%}, {c['interval']['method']}")
    return lines


# rakd 0.6.0 and earlier: the context as text, read back into numbers here alone
_PERCENT = r"([-+]?\d+(?:\.\d+)?)%"
_STEP0_TEXT = re.compile(
    r"(?P<prompts>\d+) x (?P<group_size>\d+) own samples: pass "
    + _PERCENT.replace("(", "(?P<pass_rate>", 1)
    + r", mixed groups "
    + _PERCENT.replace("(", "(?P<informative_groups>", 1)
    + r"; log π − log π_T median (?P<gap_median>[-+]?\d+\.\d+) \(5-95%: (?P<gap_p5>[-+]?\d+\.\d+) \.\. "
    r"(?P<gap_p95>[-+]?\d+\.\d+)\), clamped "
    + _PERCENT.replace("(", "(?P<clamped>", 1)
    + r"; TRRD's clip removes the gradient of "
    + _PERCENT.replace("(", "(?P<positive_no_gradient>", 1)
    + r" of A > 0 tokens and "
    + _PERCENT.replace("(", "(?P<negative_no_gradient>", 1)
    + r" of A < 0 tokens"
)
_FLOP_UNITS = {"PFLOP": 1e15, "TFLOP": 1e12, "GFLOP": 1e9, "MFLOP": 1e6, "FLOP": 1.0}
_RATES = ("pass_rate", "informative_groups", "clamped", "positive_no_gradient", "negative_no_gradient")


def context_numbers(context: dict) -> dict:
    """A stored context as numbers: returned as it is when it already is (it has `prompts_per_step`), else read
    from rakd 0.6.0's text form. Percentages written with one decimal come back to that precision."""
    if "prompts_per_step" in context or not context:
        return context
    text = dict(context)

    def pop(key: str) -> str | None:
        return text.pop(key, None)

    prompts, group = (int(v) for v in pop("prompts x G").split(" x "))
    reference, steps = pop("reference").rsplit(", ", 1)
    budget_text, interval = pop("budget per job"), pop("interval")  # comparisons before 2026-12-03 lack the interval
    record = context_record(
        config=pop("config"),
        jobs=int(pop("jobs")),
        budget=pop("budget"),
        budget_per_job=_budget_numbers(budget_text) if budget_text else None,
        reference=reference,
        reference_steps=int(steps.split()[0]),
        prompts_per_step=prompts,
        group_size=group,
        level=float(interval.split("%")[0]) / 100 if interval else None,
    )
    if (greedy := pop("warm start greedy")) is not None:
        record["warmstart_greedy"] = float(greedy.rstrip("%")) / 100
    if (flops := pop("warm start FLOPs (shared, not in the budget)")) is not None:
        record["warmstart_flops"] = _flops(flops)
    if (params := pop("teacher:student non-embedding parameters")) is not None:
        teacher, student = (int(v.replace(",", "")) for v in params.split(" (")[0].split(" : "))
        record["parameters"] = {"teacher": teacher, "student": student, "ratio": teacher / student}
    if (step0 := pop(STEP0)) is not None:
        match = _STEP0_TEXT.fullmatch(step0)
        if not match:
            raise ValueError(f"a step-0 line not in rakd 0.6.0's form: {step0!r}")
        numbers = {k: float(v) for k, v in match.groupdict().items()}
        record["step0"] = {
            **{k: v / 100 if k in _RATES else v for k, v in numbers.items()},
            "prompts": int(numbers["prompts"]),
            "group_size": int(numbers["group_size"]),
        }
    if (failed := pop("failed jobs")) is not None:
        record["failed_jobs"] = int(failed.split()[0])
    if (partial := pop("PARTIAL")) is not None:
        record["partial"] = partial
    if text:
        raise ValueError(f"context entries rakd 0.6.0 did not write: {sorted(text)}")
    return record


def _budget_numbers(text: str) -> dict:
    if text.endswith(" of training"):
        return {"flops_budget": _flops(text.removesuffix(" of training"))}
    if text.endswith(" s of RL"):
        return {"time_budget_s": float(text.split()[0])}
    return {"steps": int(text.split()[0])}


def _flops(text: str) -> float:
    number, unit = text.split()
    return float(number) * _FLOP_UNITS[unit]
