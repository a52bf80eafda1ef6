"""Comparing distillation methods from one shared warm start: the jobs (`jobs`) and the results
(`results`: statistics, tables, plots).

A comparison plans one job per (method, seed, lr) plus, for `rakd`, one per α and the teacher clamp switched off.
Every job starts from the same warm-started student (made once), runs the same RL budget (steps × prompts × G)
and evaluates on val every `eval_every` steps and on the test split at the end. `sft` (SeqKD continued on the
teacher's traces) gets the mean wall time of the `rakd` jobs instead of their step count: the compute-matched
baseline. The orchestration (Prefect tasks on a Dask cluster) lives in `flows/compare.py`; this module holds no
Prefect code.

Outputs under `<run>/compare/`: `results.json` (a row per job), `results.md` (mean ± std over seeds, each
method against `rakd` with a paired bootstrap confidence interval), `curves.png`.
"""

from rakd.compare.jobs import Job, job_distill_config, link_base, link_run, plan_jobs, run_job, shared_warmstart
from rakd.compare.results import (
    alpha_rows,
    load_rows,
    paired_bootstrap,
    plot_curves,
    summary_rows,
    variants_in_order,
    write_results,
)
from rakd.stage_config import CLAMP_OFF, CompareConfig

__all__ = [
    "CLAMP_OFF",
    "CompareConfig",
    "Job",
    "alpha_rows",
    "job_distill_config",
    "link_base",
    "link_run",
    "load_rows",
    "paired_bootstrap",
    "plan_jobs",
    "plot_curves",
    "run_job",
    "shared_warmstart",
    "summary_rows",
    "variants_in_order",
    "write_results",
]
