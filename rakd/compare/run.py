"""Running the comparison's jobs: one job from the shared warm start (its row kept under its key, so a re-run skips
it), read out at its budget and at the reference's steps and seconds, and that warm start, made once per key."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from rakd.compare.jobs import Job, named
from rakd.compare.record import JobRow
from rakd.flops import Ledger, compute_seconds
from rakd.io import fingerprint
from rakd.keys import claim_work, marked, read_marker, write_marker
from rakd.layout import EVAL_WARMSTART, METRICS, RunLayout
from rakd.schema import GREEDY_READING, key_dump


def link_base(base: RunLayout, target: Path, fresh: bool = True) -> None:
    """A folder `target` that sees the base run's data, tokenizer and teacher (symlinks, no copies); emptied first
    when `fresh`, else what it holds stays (a killed warm start's traces and checkpoints, to resume from)."""
    if fresh:
        shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("data", "tokenizer", "teacher"):
        link = target / name
        if link.is_symlink():
            link.unlink()
        if (base.root / name).exists():
            os.symlink((base.root / name).resolve(), link)


def link_run(base: RunLayout, warmstart: Path, target: RunLayout) -> None:
    """A job's run folder: the base run's data, tokenizer and teacher (links) and a copy of the warm start."""
    link_base(base, target.root)
    shutil.copytree(warmstart, target.warmstart)


def _elapsed(rows: list[dict], step: int) -> float:
    return sum(compute_seconds(r) for r in rows if r["step"] <= step)


def _trained(rows: list[dict], step: int) -> int:
    """Training FLOPs of RL up to `step` (`Ledger.training`: what a FLOP budget counts)."""
    return Ledger.of_rows(r for r in rows if r["step"] <= step).training


# the trust region's metrics a job's row keeps (the mean over its RL steps up to the budget): how often the clip and
# TRRD's teacher clamp bound, the ratio, and for rakd_lower how often the teacher term lowered the ratio
CLIP_METRICS = ("clip_high_frac", "clip_low_frac", "ratio_mean", "ratio_max", "teacher_clamp_frac",
                "teacher_term_frac", "kl_student_teacher")  # fmt: skip
READING = (*GREEDY_READING, "val_greedy_accuracy")  # what a job's reading keeps (the readouts' keys)


def readouts(final: dict, steps: int, reference_steps: int | None) -> tuple[dict, dict | None]:
    """The job's test results (greedy accuracy, s.e., per problem, steps) at its budget and at the reference's step
    count: from the run's readouts (`rl.readout_steps`), else the final evaluation stands for both."""
    last = {"steps": steps, **{k: final.get(k) for k in READING}}
    by_reason = {r["at"]: r for r in final.get("readouts", [])}
    budget = {k: v for k, v in by_reason.get("budget", last).items() if k != "at"}
    at_steps = {k: v for k, v in by_reason.get("steps", last).items() if k != "at"}
    if reference_steps is None or at_steps["steps"] != reference_steps:
        at_steps = None  # a reference job, or a job the step cap stopped short
    return budget, at_steps


def seconds_readout(final: dict, rows: list[dict], reference_seconds: float | None) -> dict | None:
    """The job's test results at the reference's compute seconds (`rl.readout_seconds`): its readout, or the final
    evaluation when the run stopped at the step those seconds were reached; None for a reference job, or a job the
    step cap stopped short of them."""
    if reference_seconds is None:
        return None
    read = next((r for r in final.get("readouts", []) if r["at"] == "seconds"), None)
    if read is not None:
        return {k: v for k, v in read.items() if k != "at"}
    if _elapsed(rows, len(rows)) >= reference_seconds:
        return {"steps": len(rows), **{k: final.get(k) for k in READING}}
    return None


def clip_means(rows: list[dict]) -> dict[str, float]:
    """The mean of each of `CLIP_METRICS` over the RL metrics rows that have it (a method without a ratio: none)."""
    return {
        name: statistics.fmean(values)
        for name in CLIP_METRICS
        if (values := [r[name] for r in rows if r.get(name) is not None])
    }


def run_job(distill_cfg, job: Job, base: RunLayout, warmstart: Path, out: Path) -> JobRow:
    """One job from the shared warm start; returns its results row. The row is kept in `out/<job>.json` under a
    key (the job's distill config and the warm start's key), so a re-run of a killed comparison returns it
    without training; the job's run folder is removed after."""
    from rakd.io import read_jsonl
    from rakd.keys import mark_work
    from rakd.stages.distill import run_distill, warmstart_work_key

    key = fingerprint({"distill": key_dump(distill_cfg), "warmstart": warmstart_key(warmstart)})
    kept = out / f"{job.name}.json"
    if marked(kept, key):
        return named(read_marker(kept)["row"])
    layout = RunLayout(out / job.name)
    link_run(base, warmstart, layout)
    mark_work(layout.warmstart, warmstart_work_key(distill_cfg))  # the job's own warm start: claim_work keeps it
    started = time.time()
    result = run_distill(distill_cfg, layout.root, log=lambda *_: None)
    finished = time.time()
    rows = read_jsonl(layout.student / METRICS)
    final = result.eval
    budget, at_steps = readouts(final, len(rows), distill_cfg.rl.readout_steps)
    budget_rows = [r for r in rows if r["step"] <= budget["steps"]]
    final_is_budget = budget["steps"] == len(rows)  # sampled accuracy and pass@k come from the final evaluation
    row: JobRow = {
        **asdict(job),
        "name": job.name,
        "variant": job.variant,
        "label": job.label,
        "steps": budget["steps"],
        "steps_run": len(rows),
        "greedy_accuracy": budget["greedy_accuracy"],
        "greedy_stderr": budget["greedy_stderr"],
        "greedy_correct": budget["greedy_correct"],
        "val_at_budget": budget.get("val_greedy_accuracy"),  # what a learning-rate choice reads (never test)
        "at_reference_steps": at_steps,
        "at_reference_seconds": seconds_readout(final, rows, distill_cfg.rl.readout_seconds),
        "sampled_accuracy": final.get("sampled_accuracy") if final_is_budget else None,
        "sampled_stderr": final.get("sampled_stderr"),
        "pass_at_k": final.get("pass_at_k") if final_is_budget else None,
        "by_difficulty": final.get("by_difficulty") if final_is_budget else None,
        "warmstart_greedy_accuracy": result.eval_warmstart["greedy_accuracy"],
        "seconds": result.seconds["rl"],  # the whole RL run's wall time, readouts past the budget included
        "seconds_compute": _elapsed(rows, budget["steps"]),  # sampling, teacher and update up to the budget
        # the job's own training at its budget; the shared warm start is the context's
        "flops_total": _trained(rows, budget["steps"]),
        "flops": Ledger.of_rows(budget_rows).phases(),
        "clip": clip_means(budget_rows),
        "started": started,
        "finished": finished,
        "worker": os.getpid(),  # the process that ran it: on a cluster, jobs spread over the workers
        "curve": [
            {
                "step": r["step"],
                "seconds": _elapsed(rows, r["step"]),
                "flops": _trained(rows, r["step"]),
                "val": r["val_greedy_accuracy"],
            }
            for r in rows
            if "val_greedy_accuracy" in r
        ],
    }
    for part in ("sample", "teacher", "update"):
        row[f"seconds_{part}"] = sum(r.get(f"seconds_{part}", 0.0) for r in budget_rows)
    write_marker(kept, key, row=row)
    shutil.rmtree(layout.root, ignore_errors=True)
    return row


WARMSTART_KEY = ".key"  # in a comparison's shared warm start: the key it was made under


def warmstart_key(warmstart: Path) -> str | None:
    """The key a shared warm start was made under (`shared_warmstart`), or None for one without."""
    return read_marker(warmstart / WARMSTART_KEY).get("key")


def parameter_ratio(teacher: Path, student: Path) -> dict:
    """Non-embedding parameters of the teacher and the student (models built on the meta device: nothing loaded)
    and their ratio, for the comparison's context."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rakd.flops import ModelDims

    counts = {}
    for role, folder in (("teacher", teacher), ("student", student)):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        counts[role] = ModelDims.of(model).params
    return {**counts, "ratio": counts["teacher"] / counts["student"]}


def shared_warmstart(distill, layout: RunLayout, teacher_key: str, regime: str | None = None) -> Path:
    """The comparison's one warm start in `<run>/compare[/<regime>]/warmstart/`, made once per key (the teacher's
    stage key and the distill stage's own warm-start key: student, warm start, evaluation, seed, precision) and
    swapped into place only when complete; a killed one resumes where it stopped."""
    from rakd.stages.distill import warmstart_work_key
    from rakd.stages.warmstart import prepare_warmstart

    key = fingerprint({"teacher": teacher_key, "warmstart": warmstart_work_key(distill)})  # the distill stage's key
    target = layout.comparison_warmstart(regime)
    if (target / EVAL_WARMSTART).is_file() and marked(target / WARMSTART_KEY, key):
        return target
    work = layout.comparison_warmstart_work(regime)
    link_base(layout, work, fresh=False)  # a killed warm start resumes from its traces and SFT checkpoints,
    claim_work(RunLayout(work).student_work, key)  # unless they were another config's: those are set aside
    made = prepare_warmstart(
        distill.model_copy(update={"eval": distill.eval.model_copy(update={"per_problem": True})}), work
    )
    write_marker(made / WARMSTART_KEY, key)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(made, target)
    shutil.rmtree(work, ignore_errors=True)
    return target
