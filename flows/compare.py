"""The Prefect flow `rakd-compare`: one shared warm start, then one task per (method, seed, α, lr) fanned out on a
Dask cluster through prefect-dask (a local cluster by default, one single-threaded worker per core; an existing
cluster by address). The jobs, one job and the results are library code in `rakd.compare`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.stages import slug
from pipeline.cache import run_missing, stage_keys
from pipeline.config import PipelineConfig, load_config
from rakd.compare import (
    CompareConfig,
    Job,
    choose_lrs,
    extra_jobs,
    gather,
    job_distill_config,
    matched_budget,
    parameter_ratio,
    plan_jobs,
    plan_problem,
    reference_variant,
    run_job,
    seed_jobs,
    shared_warmstart,
    sweep_jobs,
    sweeps_lr,
    write_results,
)
from rakd.compare.diagnostic import describe, warmstart_diagnostic
from rakd.flops import format_flops
from rakd.layout import EVAL_WARMSTART, RunLayout
from rakd.schema import ConfigError


@task(name="compare-job", cache_policy=NO_CACHE, log_prints=True)
def job_task(config: dict, job: dict, base: str, warmstart: str, out: str, budget: dict | None = None) -> dict:
    """One job of the comparison on a Dask worker (one torch thread: the workers share the machine's cores)."""
    import torch

    import rakd.stages.distill  # noqa: F401 - torch, transformers and the trainers load here, before the job's clock starts

    torch.set_num_threads(1)
    cfg = PipelineConfig.model_validate(config)
    entry = Job(**job)
    distill = job_distill_config(cfg.distill, cfg.compare, entry, budget)
    return run_job(distill, entry, RunLayout(base), Path(warmstart), Path(out))


def local_workers(compare: CompareConfig) -> int:
    """The workers of the local cluster: `compare.workers`, else one per CPU core."""
    return compare.workers or os.cpu_count() or 1


@contextlib.contextmanager
def dask_address(compare: CompareConfig) -> Iterator[str]:
    """The scheduler to run on: `compare.dask_address`, else a local cluster (one single-threaded worker process
    per core) whose workers have all started before any job is submitted, so that jobs really run side by side."""
    if compare.dask_address:
        yield compare.dask_address
        return
    import dask
    from dask.distributed import Client, LocalCluster

    workers = local_workers(compare)
    # A job that kills its worker (memory, a native crash) would kill the next one the same way: no retries, the
    # job is reported failed at once. The flow hands out one job per worker at a time (`gather`), so a worker's
    # death fails no other job.
    no_retries = dask.config.set({"distributed.scheduler.allowed-failures": 0})
    options = {"threads_per_worker": 1, "processes": True, "dashboard_address": None}
    with no_retries, LocalCluster(n_workers=workers, **options) as cluster:
        with Client(cluster) as client:
            client.wait_for_workers(workers, timeout=300)
        yield cluster.scheduler_address


def compare_flow(config: str | dict | None, overrides: list[str] | None = None) -> dict:
    """Load the config, then run `rakd-compare` on a Dask task runner built from its `compare` section."""
    from prefect_dask import DaskTaskRunner

    cfg = load_config(config, overrides or [])
    problem = plan_problem(cfg.compare, cfg.distill)
    if problem:
        raise ConfigError(f"{config}: {problem}" if isinstance(config, str | Path) else problem)
    with dask_address(cfg.compare) as address:
        runner = DaskTaskRunner(address=address)
        return rakd_compare.with_options(task_runner=runner)(config=cfg.model_dump(mode="json"))


@flow(name="rakd-compare", log_prints=True)
def rakd_compare(config: dict) -> dict:
    """prep, teacher, one warm start, then every job of `compare` from it; results, table and plot artifacts."""
    logger = get_run_logger()
    cfg = PipelineConfig.model_validate(config)
    layout = cfg.run.layout
    run_missing(cfg, ("prep", "teacher"))
    folder = layout.comparison(cfg.compare.regime)
    warmstart = shared_warmstart(cfg.distill, layout, stage_keys(cfg)["teacher"], cfg.compare.regime)
    jobs = plan_jobs(cfg.compare, cfg.distill)
    diagnostic = warmstart_diagnostic(cfg.distill, layout, warmstart, folder)
    logger.info(f"step 0 of the warm start: {describe(diagnostic)}")
    logger.info(f"{len(jobs)} jobs from the warm start in {warmstart}")
    out = folder / "jobs"
    failed: list[dict] = []

    slots = None if cfg.compare.dask_address else local_workers(cfg.compare)  # a job per worker at a time

    def run(chosen: list[Job], budget: dict | None = None) -> list[dict]:
        def submit(job: Job):
            return job_task.submit(config, job.__dict__, str(layout.root), str(warmstart), str(out), budget)

        rows, lost = gather(chosen, submit, slots, done=lambda future: future.wrapped_future.done())
        for row in lost:
            logger.error(f"job {row['name']} failed: {row['error']}")
        failed.extend(lost)
        return rows

    def run_choosing(chosen: list[Job], budget: dict | None) -> tuple[list[dict], list[dict]]:
        """(the rows of `chosen` at each variant's learning rate, the lr sweep's rows): with an lr sweep, every lr
        on the first seed, the choice on val, then the other seeds at the chosen lr."""
        first = run(sweep_jobs(cfg.compare, chosen), budget)
        if not sweeps_lr(cfg.compare):
            return first, []
        lrs = choose_lrs(first)
        logger.info(f"learning rates chosen on val: {lrs}")
        kept = [row for row in first if row["lr"] == lrs[row["variant"]]]
        return kept + run(seed_jobs(cfg.compare, chosen, lrs), budget), first

    reference = reference_variant(jobs)
    rows, sweep = run_choosing([job for job in jobs if job.variant == reference], None)
    if not rows:
        raise RuntimeError(f"every job of the reference {reference} failed, so no other job has a budget: {failed}")
    budget = matched_budget(cfg.compare, rows)
    logger.info(f"budget of every other job ({cfg.compare.budget}): {budget or 'the same steps'}")
    others, others_sweep = run_choosing([job for job in jobs if job.variant != reference], budget)
    rows, sweep = rows + others, sweep + others_sweep
    extra = extra_jobs(cfg.compare, jobs, rows)
    if extra:
        logger.info(f"{len(extra)} jobs of extra seeds: variants within {cfg.compare.close_points} points of another")
        rows += run([job for job in extra if job.variant == reference], None)
        rows += run([job for job in extra if job.variant != reference], budget)
    params = parameter_ratio(layout.teacher, warmstart)
    context = {
        "config": cfg.run.name + (f", regime {cfg.compare.regime}" if cfg.compare.regime else ""),
        "warm start greedy": f"{100 * rows[0]['warmstart_greedy_accuracy']:.1f}%",
        "warm start FLOPs (shared, not in the budget)": format_flops(_warmstart_flops(warmstart)),
        "jobs": len(rows),
        "budget": cfg.compare.budget,
        "budget per job": _describe_budget(budget, cfg.compare.steps or cfg.distill.rl.steps),
        "reference": f"{reference}, {cfg.compare.steps or cfg.distill.rl.steps} RL steps",
        "prompts x G": f"{cfg.distill.rl.prompts_per_step} x {cfg.distill.rl.group_size}",
        "teacher:student non-embedding parameters": f"{params['teacher']:,} : {params['student']:,} "
        f"({params['ratio']:.1f}x)",
        "step 0 (TRRD's teacher term on the warm start's own samples)": describe(diagnostic),
    }
    if failed:
        context["failed jobs"] = f"{len(failed)} (listed at the end; their variants are read without them)"
    tables = write_results(rows, folder, cfg.compare, reference, context, sweep, failed)
    name = slug(f"{cfg.run.name}-{cfg.compare.regime}" if cfg.compare.regime else cfg.run.name)
    create_table_artifact(tables["methods"], key=f"{name}-compare", description="methods compared (test split)")
    create_markdown_artifact((folder / "results" / "results.md").read_text(), key=f"{name}-compare-report")
    _image_artifact(folder / "results" / "curves.png", f"{name}-compare-curves")
    return {"results": str(folder / "results"), "tables": tables, "rows": rows, "failed": failed}


def _warmstart_flops(warmstart: Path) -> int:
    return json.loads((warmstart / EVAL_WARMSTART).read_text()).get("flops", {}).get("total", 0)


def _describe_budget(budget: dict, steps: int) -> str:
    if "flops_budget" in budget:
        return f"{format_flops(budget['flops_budget'])} of training"
    if "time_budget_s" in budget:
        return f"{budget['time_budget_s']:.0f} s of RL"
    return f"{steps} RL steps"


def _image_artifact(path: Path, key: str) -> None:
    """Prefect image artifacts take a URL; a local file is shown through its file:// URL."""
    try:
        create_image_artifact(image_url=path.resolve().as_uri(), key=key, description="val accuracy curves")
    except Exception as err:  # noqa: BLE001 - an artifact must never fail the comparison
        get_run_logger().warning(f"no image artifact for {path}: {err}")
