"""The comparison's policy, apart from how its jobs run: the reference variant's jobs first (with a learning-rate
sweep, every lr on the first seed, the choice on val, then the other seeds at the chosen lr), every other variant
at the budget the reference jobs spent, extra seeds for variants that came out close, then the results.

`run_comparison` takes a `submit(job, budget) -> future` (a Prefect task on Dask in `flows/compare.py`; a call in
this process in `pipeline.compare`), so the same policy runs with or without Prefect.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from rakd.compare.diagnostic import warmstart_diagnostic
from rakd.compare.jobs import (
    Job,
    choose_lrs,
    extra_jobs,
    gather,
    matched_budget,
    plan_jobs,
    reference_variant,
    seed_jobs,
    sweep_jobs,
    sweeps_lr,
)
from rakd.compare.record import context_record, describe_step0
from rakd.compare.results import write_results
from rakd.compare.run import parameter_ratio
from rakd.layout import EVAL_WARMSTART, RunLayout
from rakd.stages.config import CompareConfig, DistillConfig


@dataclass
class Comparison:
    """What a comparison leaves: its rows (one per finished job), the lr sweep's rows, the failed jobs' rows, the
    summary tables and the folder of `results.json`, `results.md` and `curves.png`."""

    rows: list[dict]
    sweep: list[dict]
    failed: list[dict]
    tables: dict
    results: Path

    def as_json(self) -> dict:
        return {"results": str(self.results), "tables": self.tables, "rows": self.rows, "failed": self.failed}


def finished(result: dict) -> Future:
    """A future that already holds `result` (a job run in the caller's process)."""
    future: Future = Future()
    future.set_result(result)
    return future


def failed_future(error: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def run_comparison(
    distill: DistillConfig,
    compare: CompareConfig,
    layout: RunLayout,
    warmstart: Path,
    submit: Callable[[Job, dict | None], Future],
    *,
    title: str,
    slots: int | None = None,
    done: Callable | None = None,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Every job of `compare` from the warm start in `warmstart`, by the policy above; `submit(job, budget)` runs
    one (at most `slots` at a time, `done(future)` saying when one has finished), and its failure is that job's
    reported failure, never the comparison's. `title` names the run in the results' context."""
    folder = layout.comparison(compare.regime)
    jobs = plan_jobs(compare, distill)
    diagnostic = warmstart_diagnostic(distill, layout, warmstart, folder)
    log(f"step 0 of the warm start: {describe_step0(diagnostic)}")
    log(f"{len(jobs)} jobs from the warm start in {warmstart}")
    failed: list[dict] = []

    def run(chosen: list[Job], budget: dict | None = None) -> list[dict]:
        rows, lost = gather(chosen, lambda job: submit(job, budget), slots, done=done)
        for row in lost:
            log(f"job {row['name']} failed: {row['error']}")
        failed.extend(lost)
        return rows

    def run_choosing(chosen: list[Job], budget: dict | None) -> tuple[list[dict], list[dict]]:
        """(the rows of `chosen` at each variant's learning rate, the lr sweep's rows)."""
        first = run(sweep_jobs(compare, chosen), budget)
        if not sweeps_lr(compare):
            return first, []
        lrs = choose_lrs(first)
        log(f"learning rates chosen on val: {lrs}")
        kept = [row for row in first if row["lr"] == lrs[row["variant"]]]
        return kept + run(seed_jobs(compare, chosen, lrs), budget), first

    reference = reference_variant(jobs)
    rows, sweep = run_choosing([job for job in jobs if job.variant == reference], None)
    if not rows:
        raise RuntimeError(f"every job of the reference {reference} failed, so no other job has a budget: {failed}")
    budget = matched_budget(compare, rows)
    log(f"budget of every other job ({compare.budget}): {budget or 'the same steps'}")
    others, others_sweep = run_choosing([job for job in jobs if job.variant != reference], budget)
    rows, sweep = rows + others, sweep + others_sweep
    extra = extra_jobs(compare, jobs, rows)
    if extra:
        log(f"{len(extra)} jobs of extra seeds: variants within {compare.close_points} points of another")
        rows += run([job for job in extra if job.variant == reference], None)
        rows += run([job for job in extra if job.variant != reference], budget)
    steps = compare.steps or distill.rl.steps
    context = context_record(
        config=title + (f", regime {compare.regime}" if compare.regime else ""),
        jobs=len(rows),
        budget=compare.budget,
        budget_per_job=budget,
        reference=reference,
        reference_steps=steps,
        prompts_per_step=distill.rl.prompts_per_step,
        group_size=distill.rl.group_size,
        level=compare.interval_level,
        warmstart_greedy=rows[0]["warmstart_greedy_accuracy"],
        warmstart_flops=warmstart_flops(warmstart),
        parameters=parameter_ratio(layout.teacher, warmstart),
        step0=diagnostic,
        failed_jobs=len(failed),
    )
    tables = write_results(rows, folder, compare, reference, context, sweep, failed)
    return Comparison(rows, sweep, failed, tables, folder / "results")


def warmstart_flops(warmstart: Path) -> int:
    return json.loads((warmstart / EVAL_WARMSTART).read_text()).get("flops", {}).get("total", 0)
