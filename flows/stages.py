"""One Prefect task for every registry stage: it runs the stage's library function and returns its JSON summary.

The task takes the stage's name, its config as a dict and its cache key, and passes paths, never tensors. Whether
it runs is decided by the key marker beside the stage's outputs (flows.pipeline); a stage whose outputs are
current returns the summary read back from them as a `Cached` state.
Retries only for failures that can be transient (I/O); a bad config, bad data, a failed check or an injected
fault fails at once with the library's message.
"""

from __future__ import annotations

import re
import time

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from pipeline.cache import current_summary, run_stage
from pipeline.config import PipelineConfig
from pipeline.registry import BY_NAME
from rakd.progress import progress_listener

# Deterministic failures: OSError subclasses that retrying cannot fix.
_PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def transient_only(task_, task_run, state) -> bool:
    """Retry only I/O-style failures (disk, network, a runtime that could not start)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - no exception to inspect: do not retry
            return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError)) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def slug(text: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "run"


class _ProgressArtifact:
    """A progress artifact in the UI that follows the library's training progress (at most every `every_s`)."""

    def __init__(self, key: str, description: str, every_s: float = 2.0):
        self.id = create_progress_artifact(0.0, key=key, description=description)
        self.every_s, self.last = every_s, 0.0

    def __call__(self, name: str, done: int, total: int, metrics: dict) -> None:
        now = time.monotonic()
        if done != total and now - self.last < self.every_s:
            return
        self.last = now
        shown = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items())
        update_progress_artifact(
            self.id, 100.0 * done / max(1, total), description=f"{name}: step {done}/{total} {shown}"
        )


@task(name="stage", cache_policy=NO_CACHE, persist_result=False, log_prints=True, retry_condition_fn=transient_only)
def stage_task(stage: str, config: dict, key: str, cached: bool = False, progress_key: str | None = None):
    """Run registry stage `stage` on the pipeline config `config` (a dict) and return its summary; with `cached`
    (its outputs are current under `key`), read the summary back from them instead, as a `Cached` state."""
    from rakd.tables import text_table

    entry, cfg = BY_NAME[stage], PipelineConfig.model_validate(config)
    if cached:
        summary = current_summary(entry, cfg)
        print(text_table(entry.rows(summary)))
        return Completed(name="Cached", message=f"outputs current under key {key[:12]}", data=summary)
    if progress_key:
        with progress_listener(_ProgressArtifact(progress_key, f"{stage} training")):
            summary = run_stage(entry, cfg, key)
    else:
        summary = run_stage(entry, cfg, key)
    print(text_table(entry.rows(summary)))
    return summary


def _edge_validate(cfg: dict, model: str, data: str, out: str) -> dict:
    from deploy.config import ValidateConfig
    from deploy.report import validation_rows
    from deploy.validate import validate
    from rakd.tables import text_table

    started = time.perf_counter()
    result = validate(ValidateConfig.model_validate(cfg), model, data, out)
    print(text_table(validation_rows(result.report.artefacts)))
    return {"path": str(result.out_dir), "report": result.report.as_json(), "seconds": time.perf_counter() - started}


# The edge device's validation: never cached (the device and its timings are the point), one retry for I/O.
edge_validate_task = task(
    _edge_validate,
    name="validate",
    cache_policy=NO_CACHE,
    log_prints=True,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=transient_only,
)
