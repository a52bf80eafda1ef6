"""One Prefect task per stage: each calls the library's stage function and returns a small JSON summary.

Tasks take the stage's config as a dict, the run directory and a cache key, and
pass paths, never tensors. Results are persisted as JSON so a cache hit (same
key) returns the summary without running the stage. Retries only for failures
that can be transient (I/O); a bad config, bad data, a failed check or an
injected fault fails at once with the library's message.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from rakd.train.common import progress_listener

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
        update_progress_artifact(self.id, 100.0 * done / max(1, total), description=f"{name}: step {done}/{total} {shown}")


def _stage_task(name: str):
    return task(name=name, persist_result=True, result_serializer="json", log_prints=True,
                cache_key_fn=lambda context, parameters: parameters["key"], retry_condition_fn=transient_only)


@_stage_task("prep")
def prep_task(cfg: dict, run_dir: str, key: str) -> dict:
    from rakd.data.prep import PrepConfig, format_card, run_prep

    started = time.perf_counter()
    result = run_prep(PrepConfig.model_validate(cfg), run_dir)
    print(format_card(result.card))
    return {"path": str(result.data_dir), "card": result.card, "seconds": time.perf_counter() - started}


@_stage_task("teacher")
def teacher_task(cfg: dict, run_dir: str, key: str, progress_key: str) -> dict:
    from rakd.evaluate import format_eval
    from rakd.teacher import TeacherConfig, run_teacher

    with progress_listener(_ProgressArtifact(progress_key, "teacher training")):
        result = run_teacher(TeacherConfig.model_validate(cfg), run_dir)
    print(format_eval("teacher", result.eval))
    return {"path": str(result.teacher_dir), "eval": result.eval, "seconds": result.seconds}


@_stage_task("distill")
def distill_task(cfg: dict, run_dir: str, key: str, progress_key: str) -> dict:
    from rakd.distill import DistillConfig, run_distill
    from rakd.io import read_jsonl

    with progress_listener(_ProgressArtifact(progress_key, "student warm start and RL distillation")):
        result = run_distill(DistillConfig.model_validate(cfg), run_dir)
    keep = ("step", "reward_mean", "val_greedy_accuracy", "val_sampled_accuracy")
    by_step = [{k: row[k] for k in keep if k in row} for row in read_jsonl(result.student_dir / "metrics.jsonl")
               if "val_greedy_accuracy" in row]
    return {"path": str(result.student_dir), "eval": result.eval, "eval_warmstart": result.eval_warmstart,
            "val_by_step": by_step, "seconds": result.seconds["total"]}


@_stage_task("export")
def export_task(cfg: dict, run_dir: str, key: str) -> dict:
    from export.cli import export_run
    from export.run import ExportConfig, format_parity

    result = export_run(ExportConfig.model_validate(cfg), Path(run_dir))
    print(format_parity(result.parity))
    return {"path": str(result.out_dir), "parity": result.parity, "seconds": result.seconds}


def _validate(cfg: dict, model: str, data: str, out: str) -> dict:
    from deploy.validate import ValidateConfig, format_table, validate

    started = time.perf_counter()
    result = validate(ValidateConfig.model_validate(cfg), model, data, out)
    print(format_table(result.report))
    return {"path": str(result.out_dir), "report": result.report, "seconds": time.perf_counter() - started}


@_stage_task("validate")
def validate_task(cfg: dict, model: str, data: str, out: str, key: str) -> dict:
    return _validate(cfg, model, data, out)


# The edge device's validation: never cached (the device and its timings are the point), one retry for I/O.
edge_validate_task = task(_validate, name="validate", cache_policy=NO_CACHE, log_prints=True, retries=1,
                          retry_delay_seconds=5, retry_condition_fn=transient_only)


@_stage_task("package")
def package_task(cfg: dict, run_dir: str, key: str) -> dict:
    from deploy.package import PackageConfig, build_package, verify_package

    started = time.perf_counter()
    result = build_package(PackageConfig.model_validate(cfg), run_dir, force=True)  # the pipeline's own last stage
    manifest = verify_package(result.out_dir)
    print(f"package {result.out_dir}: {[m.path for m in manifest.models]}, {len(manifest.files)} files verified")
    return {"path": str(result.out_dir), "models": [m.model_dump() for m in manifest.models],
            "files": len(manifest.files), "seconds": time.perf_counter() - started}
