"""The package an app team ships: the validated model file(s), tokenizer, manifest and model card.

`build_package` picks, among the artefacts that passed validation, the most
accurate one (the latency and size gates already ruled out the rest), with a
configurable preference for GGUF or ONNX. The folder is built beside its
target and renamed into place; `manifest.json` records sha256 and size of every
other file, and `verify_package` recomputes them. `load_package` verifies first.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from deploy.card import has_chat_template, model_card, ollama_modelfile
from deploy.config import PackageConfig, ShipBudget
from deploy.manifest import SCHEMA_VERSION, Manifest, PackageError, file_entries
from deploy.record import ArtefactRecord, ValidationReport
from deploy.report import pareto_front
from rakd.io import atomic_dir, atomic_write_json, atomic_write_text
from rakd.layout import RunLayout
from rakd.schema import Summary
from rakd.tables import pct

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


# ---------------------------------------------------------------- choosing and describing


def choose(report: ValidationReport, cfg: PackageConfig) -> tuple[list[ArtefactRecord], str | None]:
    """(the artefacts to ship, why): with `budget`, the one it picks and its sentence (`within_budget`); else the
    best accuracy among the student's that passed (ties: smaller file, then lower p95 latency), and None."""
    if cfg.budget is not None:
        pick, why = within_budget(report, cfg.budget)
        return [pick], why
    candidates = report.shippable()
    if not candidates:
        raise PackageError(f"no exported artefact passed validation, nothing to package ({report.failures()})")
    rank = lambda r: (-r.accuracy, r.size_mb, r.latency_ms_p95)  # noqa: E731
    if cfg.include == "best-per-format":
        return [
            min(group, key=rank) for fmt in ("gguf", "onnx") if (group := [r for r in candidates if r.format == fmt])
        ], None
    preferred = [r for r in candidates if r.format == cfg.prefer] or candidates
    return [min(preferred, key=rank)], None


def within_budget(report: ValidationReport, budget: ShipBudget) -> tuple[ArtefactRecord, str]:
    """(the artefact `budget` picks, why in one sentence): among every artefact that passed its gates and has a
    latency, the student's and the teacher's alike, those within the latency and size budgets; with
    `accuracy_loss`, the fastest (then smallest) of those at most that far below the teacher's best artefact, else
    the most accurate (ties: the student's, then the faster). A teacher's artefact is picked only where no
    student's does as well: the sentence says so, and what the best student's did."""
    passed = [r for r in report.artefacts if r.passed and not r.reference and r.latency_ms_p50 is not None]
    teacher = [r for r in passed if r.model == "teacher"]
    within = [
        r
        for r in passed
        if (budget.latency_ms_p50 is None or r.latency_ms_p50 <= budget.latency_ms_p50)
        and (budget.size_mb is None or (r.size_mb or 0.0) <= budget.size_mb)
    ]
    said = [f"p50 <= {budget.latency_ms_p50:g} ms" if budget.latency_ms_p50 else ""]
    said += [f"size <= {budget.size_mb:g} MB" if budget.size_mb else ""]
    if budget.accuracy_loss is not None:
        if not teacher:
            raise PackageError(
                "package.budget.accuracy_loss is measured against the teacher's artefacts, and none passed "
                "validation: export and validate them (export.teacher: true)"
            )
        best = max(teacher, key=lambda r: r.accuracy)
        floor = best.accuracy - budget.accuracy_loss
        within = [r for r in within if r.accuracy >= floor - 1e-9]
        said.append(f"accuracy >= {100 * floor:.1f}% ({100 * budget.accuracy_loss:g} points below {best.label})")
        rank = lambda r: (r.latency_ms_p50, r.size_mb or 0.0, r.model == "teacher")  # noqa: E731
    else:
        rank = lambda r: (-r.accuracy, r.model == "teacher", r.latency_ms_p50, r.size_mb or 0.0)  # noqa: E731
    constraint = ", ".join(x for x in said if x)
    if not within:
        raise PackageError(f"no validated artefact meets package.budget ({constraint}): {_points(passed)}")
    pick = min(within, key=rank)
    front = {r.label for r in pareto_front(report.artefacts)}
    where = "on" if pick.label in front else "off"
    why = f"{pick.label}: {_point(pick)}, {where} the accuracy-latency front; the budget: {constraint}"
    if pick.model == "teacher":
        best_student = max((r for r in passed if r.model != "teacher"), key=lambda r: r.accuracy, default=None)
        why += "; the teacher's own artefact, since no student artefact " + (
            f"does as well within it (the best student artefact: {best_student.label}, {_point(best_student)})"
            if best_student
            else "passed validation"
        )
    elif teacher:
        rival = min([r for r in within if r.model == "teacher"] or teacher, key=rank)
        why += f"; the teacher's {rival.label}: {_point(rival)}"
    return pick, why


def _point(r: ArtefactRecord) -> str:
    return f"{100 * r.accuracy:.1f}% at {r.latency_ms_p50:.0f} ms p50, {r.size_mb or 0.0:.0f} MB"


def _points(records: list[ArtefactRecord]) -> str:
    return "; ".join(f"{r.label} {_point(r)}" for r in sorted(records, key=lambda r: r.latency_ms_p50)) or "none"


def describe_model(folder: Path) -> dict | None:
    """Architecture and parameter count of a Hugging Face folder, read from config and safetensors headers."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    from safetensors import safe_open

    config = json.loads(config_path.read_text())
    params = 0
    for weights in sorted(folder.glob("*.safetensors")):
        with safe_open(weights, framework="numpy") as handle:
            for name in handle.keys():
                count = 1
                for dim in handle.get_slice(name).get_shape():
                    count *= dim
                params += count
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
    )
    return {
        "architecture": (config.get("architectures") or ["?"])[0],
        "parameters": params,
        **{k: config[k] for k in keys if k in config},
    }


# ---------------------------------------------------------------- building


@dataclass(frozen=True)
class PackageResult:
    out_dir: Path
    manifest: dict


def build_package(
    cfg: PackageConfig,
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    force: bool = False,
    report: ValidationReport | None = None,
) -> PackageResult:
    """`<run>/package/` from `<run>/validate/report.json`; refuses to replace a package unless `force`. `report`:
    choose from this report instead (a size sweep's, of every point; `run_dir` is then the run whose student, or
    teacher, made the artefact it picks: its tokenizer, template and card)."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    out_dir = Path(out_dir) if out_dir else layout.package
    report_path = layout.report
    if report is None and not report_path.is_file():
        raise PackageError(f"{report_path}: no validation report; run `rakd validate {run_dir}` first")
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir}: a package is already there; pass --force to replace it")
    if report is None:
        report = ValidationReport.from_json(json.loads(report_path.read_text()))
    chosen, why = choose(report, cfg)
    config_path = layout.config
    configs = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    with atomic_dir(out_dir) as staging:
        models = []
        for record in chosen:
            source = Path(record.path)
            if not source.exists():
                raise PackageError(f"{source}: validated artefact {record.label} is gone")
            if source.is_dir():
                shutil.copytree(source, staging / source.name)
            else:
                shutil.copyfile(source, staging / source.name)
            models.append(
                {
                    "label": record.label,
                    "format": record.format,
                    "path": source.name,
                    "model": record.model,
                    "metrics": record.summary(),
                }
            )
        shipped = layout.teacher if chosen[0].model == "teacher" else layout.student  # its tokenizer and template
        tokenizer_source = shipped
        copied = [name for name in TOKENIZER_FILES if (tokenizer_source / name).is_file()]
        for name in copied:
            (staging / "tokenizer").mkdir(exist_ok=True)
            shutil.copyfile(tokenizer_source / name, staging / "tokenizer" / name)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": cfg.name or run_dir.name,
            "version": cfg.version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source_run": str(run_dir.resolve()),
            "configs": configs,
            "teacher": describe_model(layout.teacher),
            "student": describe_model(layout.student),
            "models": models,
            "chosen": why,
            "validation": {
                key: getattr(report, key) for key in ("data", "machine", "threads", "gates", "reference", "created_at")
            }
            | {"artefacts": [r.summary() for r in report.artefacts]},
        }
        gguf_model = next((m for m in models if m["format"] == "gguf"), None)
        if gguf_model:
            atomic_write_text(staging / "Modelfile", ollama_modelfile(gguf_model["path"], staging / gguf_model["path"]))
        example = next((r.samples[0]["question"] for r in chosen if r.samples), None)
        atomic_write_text(staging / "README.md", model_card(manifest, example, has_chat_template(shipped)))
        manifest["files"] = file_entries(staging)
        Manifest.model_validate(manifest)
        atomic_write_json(staging / "manifest.json", manifest)
    return PackageResult(out_dir, manifest)


# ---------------------------------------------------------------- the stage contract (pipeline.registry)
# (section config, RunLayout) -> summary, a small JSON dict read back from the outputs, so that a run that just
# finished and outputs current under their key give the same summary; the stage's own summary rows.


def done_file(layout: RunLayout) -> Path:
    return layout.manifest


def run_stage(cfg: PackageConfig, layout: RunLayout) -> Summary:
    build_package(cfg, layout.root, force=True)  # the pipeline re-runs its own last stage
    return read_stage(cfg, layout)


def read_stage(cfg: PackageConfig, layout: RunLayout) -> Summary:
    from deploy.manifest import verify_package

    manifest = verify_package(layout.manifest.parent)
    return {
        "path": str(layout.manifest.parent),
        "models": [m.model_dump() for m in manifest.models],
        "files": len(manifest.files),
        "chosen": manifest.chosen,
    }


def stage_rows(summary: Summary) -> list[dict]:
    return [
        {
            "file": m["path"],
            "artefact": m["label"],
            "format": m["format"],
            "accuracy": pct(m["metrics"]["accuracy"]),
            "verified": f"{summary['files']} files, sha256",
            **({"why": summary["chosen"]} if summary.get("chosen") else {}),
        }
        for m in summary["models"]
    ]
