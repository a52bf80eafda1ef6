"""The ordered stage registry: the one list that the CLI, `rakd demo`, the Prefect flow, the cache keys, the
done-files and every summary table loop over.

A `Stage` names its config section, the stage it depends on, and the module that implements it. That module keeps
the stage contract: `run_stage(section config, RunLayout) -> summary` (a small JSON dict), `read_stage` (the same
summary read back from the outputs), `done_file(layout)` (the file it writes last) and `stage_rows(summary)` (its
summary table). Adding a stage is that module, its config section in `PipelineConfig`, and one entry in `STAGES`
(docs/design.md shows the diff); the registry holds no code of any stage.

The stage modules are imported when a stage runs or is read, so listing the stages (the CLI's help, the cache
keys) imports neither torch, llama.cpp nor ONNX Runtime.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline.prep_cli as prep_cli
from deploy import cli as deploy_cli
from export import cli as export_cli
from rakd.io import fingerprint_path
from rakd.layout import RunLayout
from rakd.schema import Summary


@dataclass(frozen=True)
class Stage:
    name: str
    section: str  # the PipelineConfig field holding this stage's config
    module: str  # the module that keeps the stage contract (run_stage, read_stage, done_file, stage_rows)
    help: str
    after: str | None = None  # the stage whose outputs this one reads (its key joins this one's)
    inputs: Callable[[Any], dict] = lambda cfg: {}  # user files whose bytes count in the cache key
    not_in_key: frozenset[str] = frozenset()  # config keys that never change the outputs
    training: bool = False  # long-running: progress artifact, training retries, resume from checkpoints
    own_section: bool = True  # its rows are a section of the run's summary (False: a run-wide section shows them)
    add_arguments: Callable | None = None  # extra CLI arguments of `rakd <name>`
    command: Callable | None = None  # `rakd <name>` (args, config) -> exit code, when it is more than "run, print rows"

    @property
    def implementation(self):
        return importlib.import_module(self.module)

    def run(self, cfg, layout: RunLayout) -> Summary:
        return self.implementation.run_stage(cfg, layout)

    def read(self, cfg, layout: RunLayout) -> Summary:
        """The summary of finished outputs, read back from them."""
        return self.implementation.read_stage(cfg, layout)

    def done_file(self, layout: RunLayout) -> Path:
        """Written last: without it the stage has not finished."""
        return self.implementation.done_file(layout)

    def rows(self, summary: Summary) -> list[dict]:
        return self.implementation.stage_rows(summary)


def _checkpoint(model) -> dict:
    return {"checkpoint": fingerprint_path(model.path) if model is not None and model.path else None}


STAGES: tuple[Stage, ...] = (
    Stage(
        "prep",
        "prep",
        "rakd.stages.prep",
        own_section=False,
        help="prepare tasks: generate or load, deduplicate, split, write the data card",
        inputs=lambda cfg: {"file": fingerprint_path(cfg.path) if cfg.path else None},
        add_arguments=prep_cli.add_arguments,
        command=prep_cli.command,
    ),
    Stage(
        "teacher",
        "teacher",
        "rakd.stages.teacher",
        own_section=False,
        help="train the from-scratch teacher on CoT traces (or load a checkpoint) and evaluate it",
        after="prep",
        inputs=lambda cfg: _checkpoint(cfg.model),
        training=True,
    ),
    Stage(
        "distill",
        "distill",
        "rakd.stages.distill",
        own_section=False,
        help="warm-start the student on teacher traces, then RL-aware distillation",
        after="teacher",
        inputs=lambda cfg: _checkpoint(cfg.student.model),
        training=True,
        not_in_key=frozenset({"fail_after_step"}),
    ),
    Stage(
        "export",
        "export",
        "export.run",
        help="export a HF model to ONNX and GGUF (+ quantised variants) and check parity with PyTorch",
        after="distill",
        add_arguments=export_cli.add_arguments,
        command=export_cli.command,
    ),
    Stage(
        "validate",
        "validation",
        "deploy.validate",
        help="accuracy and latency of every artefact on llama.cpp / ONNX Runtime, against gates",
        after="export",
        add_arguments=deploy_cli.add_validate_arguments,
        command=deploy_cli.validate_command,
    ),
    Stage(
        "package",
        "package",
        "deploy.package",
        help="bundle the best validated artefact with tokenizer, manifest (sha256) and model card",
        after="validate",
        add_arguments=deploy_cli.add_package_arguments,
        command=deploy_cli.package_command,
    ),
)
BY_NAME = {stage.name: stage for stage in STAGES}
