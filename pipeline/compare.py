"""The comparison of rakd.compare from a pipeline config: its inputs made (prep, the teacher, the one shared warm
start), then the policy (`rakd.compare.policy.run_comparison`). `compare_plain` runs every job as a plain call in
this process, one after another, without Prefect or Dask (`rakd compare --plain`); the Prefect flow
`rakd-compare` (flows/compare.py) runs the same policy with its jobs fanned out on a Dask cluster.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cache import run_missing, stage_keys
from pipeline.config import PipelineConfig, load_config
from rakd.compare import job_distill_config, plan_problem, run_job, shared_warmstart
from rakd.compare.jobs import Job
from rakd.compare.policy import Comparison, failed_future, finished, run_comparison
from rakd.schema import ConfigError


def checked_config(config: str | Path | dict | None, overrides: list[str] | None = None) -> PipelineConfig:
    """The config, refused (ConfigError naming the file) when its comparison cannot run, before anything runs."""
    cfg = load_config(config, overrides or [])
    problem = plan_problem(cfg.compare, cfg.distill)
    if problem:
        raise ConfigError(f"{config}: {problem}" if isinstance(config, str | Path) else problem)
    return cfg


def comparison_inputs(cfg: PipelineConfig) -> Path:
    """prep and the teacher (each run only when its outputs are not current), then the shared warm start: its
    folder."""
    run_missing(cfg, ("prep", "teacher"))
    return shared_warmstart(cfg.distill, cfg.run.layout, stage_keys(cfg)["teacher"], cfg.compare.regime)


def run_one(cfg: PipelineConfig, job: Job, budget: dict | None, warmstart: Path) -> dict:
    """One job of the comparison in this process: its distill config (the job's method, seed, lr, budget) run
    from the shared warm start; its row."""
    layout = cfg.run.layout
    distill = job_distill_config(cfg.distill, cfg.compare, job, budget)
    return run_job(distill, job, layout, warmstart, layout.comparison(cfg.compare.regime) / "jobs")


def compare_plain(config: str | Path | dict | None, overrides: list[str] | None = None) -> Comparison:
    """The whole comparison as plain calls in this process (each job with `distill.threads` torch threads)."""
    cfg = checked_config(config, overrides)
    warmstart = comparison_inputs(cfg)

    def submit(job: Job, budget: dict | None):
        try:
            return finished(run_one(cfg, job, budget, warmstart))
        except Exception as error:  # noqa: BLE001 - one job's failure is that job's reported failure
            return failed_future(error)

    return run_comparison(cfg.distill, cfg.compare, cfg.run.layout, warmstart, submit, title=cfg.run.name)
