"""The pipeline config: one typed section per stage, loaded from YAML with `key=value` overrides.

    run:            name, run folder root
    prep:           rakd.data.prep.PrepConfig
    teacher:        rakd.teacher.TeacherConfig
    distill:        rakd.distill.DistillConfig
    export:         export.config.ExportConfig
    validation:     deploy.config.ValidateConfig
    package:        deploy.config.PackageConfig
    orchestration:  flows.settings.OrchestrationConfig

The defaults are the embedded default run (`configs/tiny.yaml` spells them out; a test keeps the two equal).
This module is part of the composition root: it imports every package's config classes (light modules with
no torch, llama.cpp or Prefect import).

Errors name the file and the dotted key, e.g.
`configs/tiny.yaml: prep.generator.max_ops: Input should be a valid integer (got 'x')`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from deploy.config import PackageConfig, ValidateConfig
from export.config import ExportConfig
from flows.settings import OrchestrationConfig
from rakd.compare import CompareConfig
from rakd.data.prep import PrepConfig
from rakd.distill import DistillConfig
from rakd.layout import RunLayout
from rakd.schema import ConfigError, StageConfig
from rakd.teacher import TeacherConfig

__all__ = ["ConfigError", "PipelineConfig", "RunConfig", "dump_config", "load_config"]


class RunConfig(StageConfig):
    name: str = Field("tiny", pattern=r"^[A-Za-z0-9_.-]+$")
    root: Path = Path("runs")

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.dir)


class PipelineConfig(StageConfig):
    run: RunConfig = Field(default_factory=RunConfig)
    prep: PrepConfig = Field(default_factory=PrepConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    validation: ValidateConfig = Field(default_factory=ValidateConfig)
    package: PackageConfig = Field(default_factory=PackageConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as a YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {text!r}: expected key=value with a dotted key, e.g. prep.generator.n_items=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value does not parse as YAML: {err}") from None
    return key.strip().split("."), value


def apply_override(data: dict, keys: list[str], value: Any, text: str) -> None:
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
        node = child
    node[keys[-1]] = value


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, found {type(data).__name__}")
    return data


def _describe(err: ValidationError, origin: str, overridden: set[str]) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"])
        source = "--set" if key in overridden else origin
        got = (
            f" (got {item['input']!r:.60})" if item["type"] != "missing" and not isinstance(item["input"], dict) else ""
        )
        lines.append(f"{source}: {key}: {item['msg']}{got}")
    return "\n".join(lines)


def load_config(source: str | Path | dict | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The pipeline config from YAML file `source`, a dict of sections, or None (built-in defaults), plus overrides."""
    if isinstance(source, dict):
        origin, data = "<config dict>", copy.deepcopy(source)
    else:
        origin = str(source) if source is not None else "<defaults>"
        data = read_yaml(Path(source)) if source is not None else {}
    overridden = set()
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value, text)
        overridden.add(".".join(keys))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, origin, overridden)) from None


def dump_config(cfg: PipelineConfig) -> str:
    """YAML of a config, loadable again by `load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
