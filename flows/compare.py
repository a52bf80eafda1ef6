"""The Prefect flow `rakd-compare`: one shared warm start, then one task per (method, seed, α, lr) fanned out on a
Dask cluster through prefect-dask (a local cluster by default, one single-threaded worker per core; an existing
cluster by address). The policy (which jobs, in which order, at which budget) is `rakd.compare.policy`; the inputs
and one job are `pipeline.compare`'s, the same as the plain path without Prefect (`rakd compare --plain`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.stages import slug
from pipeline.compare import checked_config, comparison_inputs, run_one
from pipeline.config import PipelineConfig
from rakd.compare import CompareConfig, Job
from rakd.compare.policy import run_comparison


@task(name="compare-job", cache_policy=NO_CACHE, log_prints=True)
def job_task(config: dict, job: dict, warmstart: str, budget: dict | None = None) -> dict:
    """One job of the comparison on a Dask worker (one torch thread: the workers share the machine's cores)."""
    import torch

    import rakd.stages.distill  # noqa: F401 - torch, transformers and the trainers load here, before the job's clock starts

    torch.set_num_threads(1)
    return run_one(PipelineConfig.model_validate(config), Job(**job), budget, Path(warmstart))


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

    cfg = checked_config(config, overrides)
    with dask_address(cfg.compare) as address:
        runner = DaskTaskRunner(address=address)
        return rakd_compare.with_options(task_runner=runner)(config=cfg.model_dump(mode="json"))


@flow(name="rakd-compare", log_prints=True)
def rakd_compare(config: dict) -> dict:
    """prep, teacher, one warm start, then every job of `compare` from it; results, table and plot artifacts."""
    logger = get_run_logger()
    cfg = PipelineConfig.model_validate(config)
    warmstart = comparison_inputs(cfg)

    def submit(job: Job, budget: dict | None):
        return job_task.submit(config, job.__dict__, str(warmstart), budget)

    outcome = run_comparison(
        cfg.distill,
        cfg.compare,
        cfg.run.layout,
        warmstart,
        submit,
        title=cfg.run.name,
        slots=None if cfg.compare.dask_address else local_workers(cfg.compare),  # a job per worker at a time
        done=lambda future: future.wrapped_future.done(),
        log=logger.info,
    )
    name = slug(f"{cfg.run.name}-{cfg.compare.regime}" if cfg.compare.regime else cfg.run.name)
    create_table_artifact(outcome.tables["methods"], key=f"{name}-compare", description="methods compared (test split)")
    create_markdown_artifact((outcome.results / "results.md").read_text(), key=f"{name}-compare-report")
    _image_artifact(outcome.results / "curves.png", f"{name}-compare-curves")
    return outcome.as_json()


def _image_artifact(path: Path, key: str) -> None:
    """Prefect image artifacts take a URL; a local file is shown through its file:// URL."""
    try:
        create_image_artifact(image_url=path.resolve().as_uri(), key=key, description="val accuracy curves")
    except Exception as err:  # noqa: BLE001 - an artifact must never fail the comparison
        get_run_logger().warning(f"no image artifact for {path}: {err}")
