"""The pipeline config: one typed section per stage, loaded from YAML with `key=value` overrides.

    run:            name, run folder root
    prep:           rakd.data.config.PrepConfig
    teacher:        rakd.stages.config.TeacherConfig
    distill:        rakd.stages.config.DistillConfig
    export:         export.config.ExportConfig
    validation:     deploy.config.ValidateConfig
    package:        deploy.config.PackageConfig
    orchestration:  OrchestrationConfig (below: how the Prefect flows retry and store results)
    compare:        rakd.stages.config.CompareConfig

The defaults are the embedded default run (`configs/tiny.yaml` spells them out; a test keeps the two equal).
This module is part of the composition root: it imports every package's config classes, light modules with no
torch, transformers, llama.cpp or Prefect import (a test checks `sys.modules`).

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
from rakd.data.config import PrepConfig
from rakd.layout import RunLayout
from rakd.schema import ConfigError, StageConfig
from rakd.stages.config import CompareConfig, DistillConfig, TeacherConfig

__all__ = ["ConfigError", "OrchestrationConfig", "PipelineConfig", "RunConfig", "dump_config", "load_config"]


class OrchestrationConfig(StageConfig):
    """How the Prefect flows retry (read by `flows`; no Prefect import here)."""

    retries: int = Field(2, ge=0, description="retries of I/O-style failures (never of bad config or data)")
    training_retries: int = Field(1, ge=0, description="teacher/distill retries; each resumes from the last checkpoint")
    retry_delay_s: list[int] = Field(default_factory=lambda: [10, 60], description="backoff between retries")


class RunConfig(StageConfig):
    """Where the run lives: `root/name/` holds every stage's output."""

    name: str = Field("tiny", pattern=r"^[A-Za-z0-9_.-]+$", description="the run folder's name")
    root: Path = Field(Path("runs"), description="the folder that holds run folders")

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


def merged(base: dict, top: dict) -> dict:
    """`top` over `base`: mappings merged key by key, all else (scalars, lists, null) taken from `top`."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file's sections, with its `base:` (another config file, relative to this one's folder) read first
    and this file's keys over it: a regime is its base and the few keys it changes."""
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the path of another config file, found {type(base).__name__}")
    source = (path.parent / base).resolve()
    if source in (*_seen, path.resolve()):
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve(), source))
        raise ConfigError(f"{path}: base: the configs include each other ({chain})")
    if not source.is_file():
        raise ConfigError(f"{path}: base: {base}: config file not found (looked for {source})")
    return merged(read_config(source, (*_seen, path.resolve())), data)


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
        data = read_config(Path(source)) if source is not None else {}
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


REFERENCE_BEGIN, REFERENCE_END = "<!-- config reference: begin -->", "<!-- config reference: end -->"


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")
    return text.replace("Literal", "one of ").replace("|", "or")


def _section_of(annotation: Any) -> type[StageConfig] | None:
    """The config class a field holds (also through `X | None`), else None."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, StageConfig):
            return candidate
    return None


def _reference_rows(model: type[StageConfig], defaults: dict | None, prefix: str) -> list[str]:
    """Rows of `model`'s fields; `defaults` is the section's default as JSON (None: a section that is off)."""
    rows = []
    for name, field in model.model_fields.items():
        key, value = f"{prefix}{name}", (defaults or {}).get(name)
        section = _section_of(field.annotation)
        if section is not None:
            note = " (null: off)" if value is None and field.annotation is not section else ""
            rows.append(f"| **`{key}`** | section{note} | | {(field.description or section.__doc__ or '').strip()} |")
            rows += _reference_rows(section, value, f"{key}.")
            continue
        shown = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | `{shown}` | {description} |")
    return rows


def config_reference() -> str:
    """Markdown: every config key of the pipeline with its type, its default (the embedded default run's) and its
    description, generated from the pydantic fields (docs/usage.md holds it; a test keeps it current)."""
    rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
    return "\n".join(rows + _reference_rows(PipelineConfig, PipelineConfig().model_dump(mode="json"), "")) + "\n"


def write_reference(path: Path) -> None:
    """Replace the generated block between the reference markers in `path`."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(REFERENCE_BEGIN) + len(REFERENCE_BEGIN), text.index(REFERENCE_END)
    path.write_text(text[:start] + "\n" + config_reference() + text[end:], encoding="utf-8")


if __name__ == "__main__":  # python -m pipeline.config docs/usage.md: regenerate its configuration reference
    import sys

    write_reference(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/usage.md"))
