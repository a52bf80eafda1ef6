"""The ordered stage registry: the one list that the CLI, `rakd demo`, the Prefect flow, the cache keys, the
done-files and every summary table loop over.

A `Stage` names its config section, the stage it depends on, its run function `(section config, RunLayout) ->
summary` (a small JSON dict), its read function (the same summary read back from the outputs), the file it writes
last, and its table rows. Adding a stage is one module with its config and run function plus one entry in `STAGES`
(docs/design.md shows the diff).

This module, `rakd.summary` and `rakd.cli` are the composition root: the only modules that import every package.
Heavy imports (torch, llama.cpp, ONNX Runtime) stay inside the run functions, so listing the stages costs nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rakd
import rakd.data.cli as prep_cli
from deploy import cli as deploy_cli
from export import cli as export_cli
from rakd.config import PipelineConfig
from rakd.io import fingerprint, fingerprint_path, read_jsonl
from rakd.layout import RunLayout
from rakd.schema import StageConfig
from rakd.summary import (
    Summary,
    distill_rows,
    export_rows,
    package_rows,
    prep_rows,
    teacher_rows,
    validate_rows,
)


@dataclass(frozen=True)
class Stage:
    name: str
    section: str  # the PipelineConfig field holding this stage's config
    run: Callable[[Any, RunLayout], Summary]
    read: Callable[[Any, RunLayout], Summary]  # the summary of finished outputs, read back from them
    done_file: Callable[[RunLayout], Path]  # written last: without it the stage has not finished
    rows: Callable[[Summary], list[dict]]  # the stage's summary table
    help: str
    after: str | None = None  # the stage whose outputs this one reads (its key joins this one's)
    inputs: Callable[[Any], dict] = lambda cfg: {}  # user files whose bytes count in the cache key
    not_in_key: frozenset[str] = frozenset()  # config keys that never change the outputs
    training: bool = False  # long-running: progress artifact, training retries, resume from checkpoints
    add_arguments: Callable | None = None  # extra CLI arguments of `rakd <name>`
    command: Callable | None = None  # `rakd <name>` (args, config) -> exit code, when it is more than "run, print rows"

    @property
    def config_class(self) -> type[StageConfig]:
        return PipelineConfig.model_fields[self.section].annotation


# ---------------------------------------------------------------- run and read: (section config, layout) -> summary
# A stage's summary is read back from its outputs, so that the same summary comes from a run that just finished
# and from outputs that are current under their key (one cache truth: the key marker beside the outputs).


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_prep(cfg, layout: RunLayout) -> Summary:
    from rakd.data.prep import run_prep as prep

    prep(cfg, layout.root)
    return read_prep(cfg, layout)


def read_prep(cfg, layout: RunLayout) -> Summary:
    return {"path": str(layout.card.parent), "card": _json(layout.card)}


def run_teacher(cfg, layout: RunLayout) -> Summary:
    from rakd.teacher import run_teacher as teacher

    teacher(cfg, layout.root)
    return read_teacher(cfg, layout)


def read_teacher(cfg, layout: RunLayout) -> Summary:
    return {"path": str(layout.teacher), "eval": _json(layout.teacher / "eval.json")}


def run_distill(cfg, layout: RunLayout) -> Summary:
    from rakd.distill import run_distill as distill

    distill(cfg, layout.root)
    return read_distill(cfg, layout)


def read_distill(cfg, layout: RunLayout) -> Summary:
    keep = ("step", "reward_mean", "val_greedy_accuracy", "val_sampled_accuracy")
    metrics = layout.student / "metrics.jsonl"  # absent when rl.steps is 0 (the warm start alone)
    by_step = [
        {k: row[k] for k in keep if k in row}
        for row in (read_jsonl(metrics) if metrics.exists() else [])
        if "val_greedy_accuracy" in row
    ]
    return {
        "path": str(layout.student),
        "eval": _json(layout.student / "eval.json"),
        "eval_warmstart": _json(layout.student / "eval_warmstart.json"),
        "val_by_step": by_step,
    }


def run_export(cfg, layout: RunLayout) -> Summary:
    from export.parity import parity_questions
    from export.run import run_export as export

    questions = parity_questions(None, layout, cfg.parity_prompts)
    teacher = layout.teacher if cfg.teacher else None
    export(cfg, layout.student, layout.export, questions, teacher_dir=teacher)
    return read_export(cfg, layout)


def read_export(cfg, layout: RunLayout) -> Summary:
    return {"path": str(layout.export), "parity": _json(layout.parity)}


def run_validate(cfg, layout: RunLayout) -> Summary:
    from deploy.validate import validate

    validate(cfg, layout.root, layout.split("test"), layout.validate)
    return read_validate(cfg, layout)


def read_validate(cfg, layout: RunLayout) -> Summary:
    return {"path": str(layout.validate), "report": _json(layout.report)}


def run_package(cfg, layout: RunLayout) -> Summary:
    from deploy.package import build_package

    build_package(cfg, layout.root, force=True)  # the pipeline re-runs its own last stage
    return read_package(cfg, layout)


def read_package(cfg, layout: RunLayout) -> Summary:
    from deploy.manifest import verify_package

    manifest = verify_package(layout.manifest.parent)
    return {
        "path": str(layout.manifest.parent),
        "models": [m.model_dump() for m in manifest.models],
        "files": len(manifest.files),
    }


def _checkpoint(model) -> dict:
    return {"checkpoint": fingerprint_path(model.path) if model is not None and model.path else None}


STAGES: tuple[Stage, ...] = (
    Stage(
        "prep",
        "prep",
        run_prep,
        read_prep,
        lambda layout: layout.card,
        prep_rows,
        help="prepare tasks: generate or load, deduplicate, split, write the data card",
        inputs=lambda cfg: {"file": fingerprint_path(cfg.path) if cfg.path else None},
        add_arguments=prep_cli.add_arguments,
        command=prep_cli.command,
    ),
    Stage(
        "teacher",
        "teacher",
        run_teacher,
        read_teacher,
        lambda layout: layout.teacher / "eval.json",
        teacher_rows,
        help="train the from-scratch teacher on CoT traces (or load a checkpoint) and evaluate it",
        after="prep",
        inputs=lambda cfg: _checkpoint(cfg.model),
        training=True,
    ),
    Stage(
        "distill",
        "distill",
        run_distill,
        read_distill,
        lambda layout: layout.student / "eval.json",
        distill_rows,
        help="warm-start the student on teacher traces, then RL-aware distillation",
        after="teacher",
        inputs=lambda cfg: _checkpoint(cfg.student.model),
        training=True,
        not_in_key=frozenset({"fail_after_step"}),
    ),
    Stage(
        "export",
        "export",
        run_export,
        read_export,
        lambda layout: layout.parity,
        export_rows,
        help="export a HF model to ONNX and GGUF (+ quantised variants) and check parity with PyTorch",
        after="distill",
        add_arguments=export_cli.add_arguments,
        command=export_cli.command,
    ),
    Stage(
        "validate",
        "validation",
        run_validate,
        read_validate,
        lambda layout: layout.report,
        validate_rows,
        help="accuracy and latency of every artefact on llama.cpp / ONNX Runtime, against gates",
        after="export",
        add_arguments=deploy_cli.add_validate_arguments,
        command=deploy_cli.validate_command,
    ),
    Stage(
        "package",
        "package",
        run_package,
        read_package,
        lambda layout: layout.manifest,
        package_rows,
        help="bundle the best validated artefact with tokenizer, manifest (sha256) and model card",
        after="validate",
        add_arguments=deploy_cli.add_package_arguments,
        command=deploy_cli.package_command,
    ),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def run_stage(stage: Stage, cfg: PipelineConfig, key: str | None = None) -> Summary:
    """Run one stage of `cfg` in its run folder and mark its outputs with the stage's key (whoever runs it: the
    CLI, `rakd demo`, the flow, `rakd compare`); the summary gets the stage's wall time. Callers that hold the key
    pass it: computing it reads every input file (a checkpoint given by path) again."""
    key = key if key is not None else stage_keys(cfg)[stage.name]
    started = time.perf_counter()
    summary = stage.run(getattr(cfg, stage.section), cfg.run.layout)
    seconds = time.perf_counter() - started
    record_key(cfg.run.layout, stage, key, seconds)
    return {**summary, "seconds": seconds}


def stage_keys(cfg: PipelineConfig) -> dict[str, str]:
    """The cache key of every stage: its config, its input files, its upstream key, the run folder, the version."""
    base = {"run_dir": str(cfg.run.dir.resolve()), "version": rakd.__version__}
    keys: dict[str, str] = {}
    for stage in STAGES:
        section = getattr(cfg, stage.section)
        config = {k: v for k, v in section.model_dump(mode="json").items() if k not in stage.not_in_key}
        keys[stage.name] = fingerprint(
            {
                **base,
                "stage": stage.name,
                "cfg": config,
                **stage.inputs(section),
                "after": keys[stage.after] if stage.after else None,
            }
        )
    return keys


def _marker(layout: RunLayout, stage: Stage) -> dict:
    """What `record_key` wrote for the stage: its key and the wall seconds of the run that made its outputs."""
    path = layout.stage_key(stage.name)
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or an unreadable one: the outputs count as not current
        return {}
    return marker if isinstance(marker, dict) else {}


def outputs_current(layout: RunLayout, stage: Stage, key: str) -> bool:
    """The stage's outputs are on disk and were written under this key (not by another config in the same folder):
    the one thing that decides whether a stage runs, for the CLI, the flow and `rakd compare` alike."""
    return stage.done_file(layout).is_file() and _marker(layout, stage).get("key") == key


def record_key(layout: RunLayout, stage: Stage, key: str, seconds: float | None = None) -> None:
    """Mark the stage's outputs as written under `key` by a run of `seconds` (what `outputs_current` and
    `current_summary` read back)."""
    from rakd.io import atomic_write_json

    atomic_write_json(layout.stage_key(stage.name), {"key": key, "seconds": seconds})


def current_summary(stage: Stage, cfg: PipelineConfig) -> Summary:
    """The summary of a stage whose outputs are current, read back from them, with the seconds of the run that
    made them."""
    summary = stage.read(getattr(cfg, stage.section), cfg.run.layout)
    return {**summary, "seconds": _marker(cfg.run.layout, stage).get("seconds") or 0.0}


def run_missing(cfg: PipelineConfig, names: tuple[str, ...]) -> None:
    """Run the named stages, in order, only where their outputs are not current under their keys (what `rakd
    compare` needs of prep and the teacher)."""
    keys = stage_keys(cfg)
    for name in names:
        stage = BY_NAME[name]
        if not outputs_current(cfg.run.layout, stage, keys[name]):
            run_stage(stage, cfg, keys[name])
