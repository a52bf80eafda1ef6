"""The ordered stage registry: the one list that the CLI, `rakd demo`, the Prefect flow, the cache keys, the
done-files and every summary table loop over.

A `Stage` names its config section, the stage it depends on, its run function `(section config, RunLayout) ->
summary` (a small JSON dict), its read function (the same summary read back from the outputs), the file it writes
last, and its table rows. Adding a stage is one module with its config and run function plus one entry in `STAGES`
(docs/design.md shows the diff).

This module, `pipeline.summary` and `pipeline.cli` are the composition root: the only modules that import every package.
Heavy imports (torch, llama.cpp, ONNX Runtime) stay inside the run functions, so listing the stages costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline.prep_cli as prep_cli
from deploy import cli as deploy_cli
from export import cli as export_cli
from pipeline.config import PipelineConfig
from pipeline.summary import (
    Summary,
    distill_rows,
    export_rows,
    package_rows,
    prep_rows,
    teacher_rows,
    validate_rows,
)
from rakd.io import fingerprint_path, read_jsonl
from rakd.layout import EVAL, EVAL_WARMSTART, METRICS, RunLayout
from rakd.schema import StageConfig


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
    from rakd.stages.prep import run_prep as prep

    prep(cfg, layout.root)
    return read_prep(cfg, layout)


def read_prep(cfg, layout: RunLayout) -> Summary:
    return {"path": str(layout.card.parent), "card": _json(layout.card)}


def run_teacher(cfg, layout: RunLayout) -> Summary:
    from rakd.stages.teacher import run_teacher as teacher

    teacher(cfg, layout.root)
    return read_teacher(cfg, layout)


def read_teacher(cfg, layout: RunLayout) -> Summary:
    return {"path": str(layout.teacher), "eval": _json(layout.teacher / EVAL)}


def run_distill(cfg, layout: RunLayout) -> Summary:
    from rakd.stages.distill import run_distill as distill

    distill(cfg, layout.root)
    return read_distill(cfg, layout)


def read_distill(cfg, layout: RunLayout) -> Summary:
    keep = ("step", "reward_mean", "val_greedy_accuracy", "val_sampled_accuracy")
    metrics = layout.student / METRICS  # absent when rl.steps is 0 (the warm start alone)
    by_step = [
        {k: row[k] for k in keep if k in row}
        for row in (read_jsonl(metrics) if metrics.exists() else [])
        if "val_greedy_accuracy" in row
    ]
    return {
        "path": str(layout.student),
        "eval": _json(layout.student / EVAL),
        "eval_warmstart": _json(layout.student / EVAL_WARMSTART),
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
        lambda layout: layout.teacher / EVAL,
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
        lambda layout: layout.student / EVAL,
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
