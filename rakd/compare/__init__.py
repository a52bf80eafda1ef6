"""Comparing distillation methods from one shared warm start at an equal budget: the plan (`jobs`), the policy
that runs it (`policy`), one job and the shared warm start (`run`), and the results (`record`: a kept comparison
read back, its context as numbers; `stats`, `results`: statistics, tables, plots; `evidence`: the
which-method-when rule's evidence from a kept comparison).

A comparison plans one job per (method, seed, lr) plus, for `rakd`, one per α (and with the teacher clamp switched
off). Every job starts from the same warm-started student (made once) and evaluates on val every `eval_every` steps
and on the test split at the end. The reference jobs (the default `rakd`) run `compare.steps` RL steps; every
other job gets as much as they spent (`compare.budget`: their steps, wall seconds, or training FLOPs from the
compute ledger, teacher generation included). Two SFT arms: `seqkd_fresh` buys new teacher traces with its budget
and trains on them; `sft` (labelled `sft_continue`) continues on the warm start's traces, which cost it nothing.
A finished job's row is kept, so a killed comparison re-run skips it. How the jobs run is the caller's: one at a
time in the calling process (`pipeline.compare`, `rakd compare --plain`) or as Prefect tasks on a Dask cluster
(`flows/compare.py`); this package holds no Prefect code.

Outputs under `<run>/compare/results/`: `results.json` (a row per job, with its FLOPs by phase), `results.md`
(methods ranked by mean greedy accuracy, each against the reference with a Welch-t interval, at the equal budget
and at the reference's step count),
`curves.png` (val accuracy against step, training FLOPs with the Pareto front, and wall seconds).
"""

from rakd.compare.jobs import (
    Job,
    choose_lrs,
    close_variants,
    extra_jobs,
    gather,
    job_distill_config,
    matched_budget,
    named,
    plan_jobs,
    plan_problem,
    reference_variant,
    seed_jobs,
    sweep_jobs,
    sweeps_lr,
)
from rakd.compare.results import (
    alpha_rows,
    labels,
    plot_curves,
    summary_rows,
    variants_in_order,
    write_results,
)
from rakd.compare.run import (
    link_base,
    link_run,
    parameter_ratio,
    run_job,
    shared_warmstart,
)
from rakd.compare.stats import INTERVAL, Interval, difference_interval
from rakd.stages.config import CompareConfig

__all__ = [
    "CompareConfig",
    "INTERVAL",
    "Interval",
    "Job",
    "alpha_rows",
    "choose_lrs",
    "close_variants",
    "extra_jobs",
    "gather",
    "difference_interval",
    "job_distill_config",
    "labels",
    "link_base",
    "link_run",
    "matched_budget",
    "named",
    "parameter_ratio",
    "plan_jobs",
    "plan_problem",
    "plot_curves",
    "reference_variant",
    "run_job",
    "seed_jobs",
    "sweep_jobs",
    "sweeps_lr",
    "shared_warmstart",
    "summary_rows",
    "variants_in_order",
    "write_results",
]
