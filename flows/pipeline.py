"""The Prefect flows: `rakd-pipeline` (every registry stage in order) and `rakd-validate` (one model or package
against a data file: what an edge device's worker runs).

Caching: each stage's cache key (`pipeline.cache.stage_keys`) is the fingerprint of its config, its input files,
its upstream stage's key and the run directory, and the marker beside its outputs (`<run>/.stage-keys/<stage>`)
says which key they were written under: that marker alone decides whether a stage runs (Prefect's result storage
holds nothing the pipeline needs). Re-running a finished pipeline with the same config runs nothing (every task
run `Cached`, its summary read back from the outputs); changing only `export` re-runs export, validate and
package; a pipeline that crashed in distill re-runs distill, which resumes from its last checkpoint. A stage
whose done-file has gone is re-run, and so is one whose folder holds another config's outputs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.stages import edge_validate_task, slug, stage_task
from pipeline.cache import outputs_current, stage_keys
from pipeline.config import PipelineConfig, dump_config, load_config
from pipeline.registry import STAGES, Stage
from pipeline.summary import summary_sections
from rakd.io import atomic_write_text
from rakd.tables import markdown_table


def pipeline_config(config: str | dict | None, overrides: list[str] | None = None, run_name: str | None = None):
    """The same pydantic config the CLI loads: a YAML path, a dict of sections, or None for the defaults."""
    return load_config(config, [*(overrides or []), *([f"run.name={run_name}"] if run_name else [])])


def _run_stage(stage: Stage, cfg: PipelineConfig, key: str, refresh: bool) -> tuple[str, dict]:
    """One task run per stage. Whether it runs is decided by the key marker beside the stage's outputs (the one
    cache truth, as for the CLI and `rakd compare`): current outputs are read back (state `Cached`), anything else
    runs the stage."""
    layout, orchestration = cfg.run.layout, cfg.orchestration
    done = outputs_current(layout, stage, key) and not refresh
    options = dict(
        name=stage.name,
        retries=orchestration.training_retries if stage.training else orchestration.retries,
        retry_delay_seconds=orchestration.retry_delay_s,
    )
    progress_key = f"{slug(cfg.run.name)}-{stage.name}-progress" if stage.training and not done else None
    state = stage_task.with_options(**options)(
        stage.name, cfg.model_dump(mode="json"), key=key, cached=done, progress_key=progress_key, return_state=True
    )
    return state.name, state.result()  # raises the stage's own exception when it failed


def final_report(cfg: PipelineConfig, results: dict, states: dict) -> str:
    lines = [f"# rakd pipeline: {cfg.run.name}", "", f"Run directory: `{cfg.run.dir.resolve()}`", ""]
    for title, rows in summary_sections(results, states):
        lines += [f"## {title}", "", markdown_table(rows), ""]
    lines += [f"Verify the package with `rakd verify-package {results['package']['path']}`.", ""]
    return "\n".join(lines)


@flow(name="rakd-pipeline", log_prints=True)
def rakd_pipeline(
    config: str | dict | None = "configs/tiny.yaml",
    overrides: list[str] | None = None,
    run_name: str | None = None,
    refresh: bool = False,
) -> dict:
    """Every stage on one config; returns each stage's summary and state (Completed, or Cached when skipped).

    `refresh=True` runs every stage even when its results are cached (the nightly deployment does)."""
    logger = get_run_logger()
    cfg = pipeline_config(config, overrides, run_name)
    cfg.run.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.run.layout.config, dump_config(cfg))
    keys, name = stage_keys(cfg), slug(cfg.run.name)
    results, states = {}, {}
    for stage in STAGES:
        logger.info(f"[{stage.name}] key {keys[stage.name][:12]}")
        states[stage.name], results[stage.name] = _run_stage(stage, cfg, keys[stage.name], refresh)
        create_table_artifact(
            stage.rows(results[stage.name]),
            key=f"{name}-{stage.name}",
            description=f"{stage.name} of run {cfg.run.name} ({states[stage.name].lower()})",
        )
    create_markdown_artifact(
        final_report(cfg, results, states),
        key=f"{name}-report",
        description=f"rakd pipeline {cfg.run.name}: final report",
    )
    return {"run_dir": str(cfg.run.dir), "keys": keys, "states": states, "results": results}


@flow(name="rakd-validate", log_prints=True)
def rakd_validate(
    model: str, data: str, out: str | None = None, validation: dict | None = None, require_pass: bool = False
) -> dict:
    """Validate a model file, ONNX folder or package against a data file (an edge device's job)."""
    from deploy.config import ValidateConfig
    from deploy.record import ValidationReport
    from deploy.report import validation_rows

    cfg = ValidateConfig.model_validate(validation or {})
    out = out or str(Path("runs") / f"validate-{Path(model).stem}")
    result = edge_validate_task(cfg.model_dump(mode="json"), model, data, out)
    report = ValidationReport.from_json(result["report"])
    create_table_artifact(
        validation_rows(report.artefacts),
        key=f"edge-validate-{slug(Path(model).stem)}",
        description=f"validation of {model} on {data}",
    )
    shipped = report.shippable()
    if require_pass and not shipped:
        raise RuntimeError(f"{model}: no artefact passed the gates: {report.failures()}")
    return {"report": str(Path(out) / "report.json"), "passed": [r.label for r in shipped]}
