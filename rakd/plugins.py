"""Stages outside the core library (export, deploy) plug into the CLI and the config here.

`rakd/` never imports `export/` or `deploy/` (DESIGN.md section 9); those
packages declare entry points in pyproject.toml instead:

    [project.entry-points."rakd.stages"]
    export = "export.cli:STAGE"

A `Stage` names its CLI command, its config section and class (None: the
command has no section), and its step in `rakd demo` (None: not a demo step).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from rakd.schema import StageConfig


@dataclass(frozen=True)
class Stage:
    name: str
    config_class: type[StageConfig] | None
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    command: Callable[[argparse.Namespace, object], int]  # (args, pipeline config) -> exit code
    demo: Callable[[object, Path], str] | None = None  # (pipeline config, run dir) -> summary text
    order: int = 100
    section: str | None = None  # config section name when it differs from the command (pydantic reserves some)

    @property
    def config_key(self) -> str:
        return self.section or self.name


@cache
def plugin_stages() -> tuple[Stage, ...]:
    stages = [ep.load() for ep in entry_points(group="rakd.stages")]
    return tuple(sorted(stages, key=lambda stage: (stage.order, stage.name)))
