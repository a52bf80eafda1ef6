"""The ordered stage registry: the one list that the CLI, `rakd demo`, the Prefect flow, the cache keys, the
done-files and every summary table loop over.

A `Stage` names its config section, the stage it depends on, its run function `(section config, RunLayout) ->
summary` (a small JSON dict: what a Prefect task persists), the file it writes last, and its table rows. Adding a
stage is one module with its config and run function plus one entry in `STAGES` (docs/design.md shows the diff).

This module and `rakd.cli` are the composition root: the only modules that import every package. Heavy imports
(torch, llama.cpp, ONNX Runtime) stay inside the run functions, so listing the stages costs nothing.
"""

from __future__ import annotations

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
from rakd.tables import pct

Summary = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    name: str
    section: str  # the PipelineConfig field holding this stage's config
    run: Callable[[Any, RunLayout], Summary]
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


# ---------------------------------------------------------------- run functions (section config, layout) -> summary


def run_prep(cfg, layout: RunLayout) -> Summary:
    from rakd.data.prep import run_prep as prep

    result = prep(cfg, layout.root)
    return {"path": str(result.data_dir), "card": result.card}


def run_teacher(cfg, layout: RunLayout) -> Summary:
    from rakd.teacher import run_teacher as teacher

    result = teacher(cfg, layout.root)
    return {"path": str(result.teacher_dir), "eval": result.eval}


def run_distill(cfg, layout: RunLayout) -> Summary:
    from rakd.distill import run_distill as distill

    result = distill(cfg, layout.root)
    keep = ("step", "reward_mean", "val_greedy_accuracy", "val_sampled_accuracy")
    metrics = result.student_dir / "metrics.jsonl"  # absent when rl.steps is 0 (the warm start alone)
    by_step = [
        {k: row[k] for k in keep if k in row}
        for row in (read_jsonl(metrics) if metrics.exists() else [])
        if "val_greedy_accuracy" in row
    ]
    return {
        "path": str(result.student_dir),
        "eval": result.eval,
        "eval_warmstart": result.eval_warmstart,
        "val_by_step": by_step,
    }


def run_export(cfg, layout: RunLayout) -> Summary:
    from export.run import run_export as export

    questions = export_cli.parity_questions(None, layout, cfg.parity_prompts)
    teacher = layout.teacher if cfg.teacher else None
    result = export(cfg, layout.student, layout.export, questions, teacher_dir=teacher)
    return {"path": str(layout.export), "parity": result.parity}


def run_validate(cfg, layout: RunLayout) -> Summary:
    from deploy.validate import validate

    return {
        "path": str(layout.validate),
        "report": validate(cfg, layout.root, layout.split("test"), layout.validate).report,
    }


def run_package(cfg, layout: RunLayout) -> Summary:
    from deploy.manifest import verify_package
    from deploy.package import build_package

    result = build_package(cfg, layout.root, force=True)  # the pipeline re-runs its own last stage
    manifest = verify_package(result.out_dir)
    return {
        "path": str(result.out_dir),
        "models": [m.model_dump() for m in manifest.models],
        "files": len(manifest.files),
    }


# ---------------------------------------------------------------- summary rows


def prep_rows(summary: Summary) -> list[dict]:
    from rakd.data.prep import card_rows

    return card_rows(summary["card"])


def teacher_rows(summary: Summary) -> list[dict]:
    from rakd.evaluate import eval_row

    before = summary["eval"].get("before")
    return ([eval_row("teacher (before tuning)", before)] if before else []) + [eval_row("teacher", summary["eval"])]


def distill_rows(summary: Summary) -> list[dict]:
    from rakd.evaluate import eval_row

    rows = [eval_row("warm start (test)", summary["eval_warmstart"])]
    rows += [
        {
            "model": f"RL step {r['step']} (val)",
            "greedy": pct(r.get("val_greedy_accuracy")),
            "sampled": pct(r.get("val_sampled_accuracy")),
        }
        for r in summary["val_by_step"]
    ]
    return rows + [eval_row(f"{summary['eval'].get('method', 'distilled')} (test)", summary["eval"])]


def export_rows(summary: Summary) -> list[dict]:
    from export.run import parity_rows

    return parity_rows(summary["parity"])


def validate_rows(summary: Summary) -> list[dict]:
    from deploy.report import validation_rows

    return validation_rows(summary["report"]["artefacts"])


def package_rows(summary: Summary) -> list[dict]:
    return [
        {
            "file": m["path"],
            "artefact": m["label"],
            "format": m["format"],
            "accuracy": pct(m["metrics"]["accuracy"]),
            "verified": f"{summary['files']} files, sha256",
        }
        for m in summary["models"]
    ]


def _checkpoint(model) -> dict:
    return {"checkpoint": fingerprint_path(model.path) if model is not None and model.path else None}


STAGES: tuple[Stage, ...] = (
    Stage(
        "prep",
        "prep",
        run_prep,
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
        lambda layout: layout.manifest,
        package_rows,
        help="bundle the best validated artefact with tokenizer, manifest (sha256) and model card",
        after="validate",
        add_arguments=deploy_cli.add_package_arguments,
        command=deploy_cli.package_command,
    ),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def run_stage(stage: Stage, cfg: PipelineConfig) -> Summary:
    """Run one stage of `cfg` in its run folder; the summary gets the stage's wall time."""
    started = time.perf_counter()
    summary = stage.run(getattr(cfg, stage.section), cfg.run.layout)
    return {**summary, "seconds": time.perf_counter() - started}


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


def outputs_current(layout: RunLayout, stage: Stage, key: str) -> bool:
    """The stage's outputs are on disk and were written under this key (not by another config in the same folder)."""
    marker = layout.stage_key(stage.name)
    return stage.done_file(layout).is_file() and marker.is_file() and marker.read_text().strip() == key


def record_key(layout: RunLayout, stage: Stage, key: str) -> None:
    """Mark the stage's outputs as written under `key` (what `outputs_current` reads back)."""
    from rakd.io import atomic_write_text

    atomic_write_text(layout.stage_key(stage.name), key + "\n")


def run_missing(cfg: PipelineConfig, names: tuple[str, ...]) -> None:
    """Run the named stages, in order, only where their outputs are not current under their keys; each key is
    recorded once its stage is done (what `rakd compare` needs of prep and the teacher)."""
    keys = stage_keys(cfg)
    for name in names:
        stage = BY_NAME[name]
        if not outputs_current(cfg.run.layout, stage, keys[name]):
            run_stage(stage, cfg)
            record_key(cfg.run.layout, stage, keys[name])


# ---------------------------------------------------------------- the whole run's summary


def accuracy_rows(results: dict[str, Summary]) -> list[dict]:
    """Teacher, warm-started student and distilled student on the test split, and the distillation gain."""
    from rakd.evaluate import eval_row

    rows = []
    if "teacher" in results:
        rows += teacher_rows(results["teacher"])
    if "distill" in results:
        warm, final = results["distill"]["eval_warmstart"], results["distill"]["eval"]
        rows += [eval_row("student (warm start)", warm), eval_row(f"student ({final.get('method', '?')})", final)]
        gain = final["greedy_accuracy"] - warm["greedy_accuracy"]
        stderr = (final["greedy_stderr"] ** 2 + warm["greedy_stderr"] ** 2) ** 0.5
        ratio = f" ({gain / stderr:+.1f} s.e.)" if stderr > 0 else ""
        rows.append(
            {"model": "gain (distilled - warm start)", "greedy": f"{100 * gain:+.1f} ± {100 * stderr:.1f}{ratio}"}
        )
    return rows


def warmstart_rows(results: dict[str, Summary]) -> list[dict]:
    """Whether the warm start reached its target, where, and what the stage did about it (empty without one)."""
    target = results.get("distill", {}).get("eval_warmstart", {}).get("target")
    if not target:
        return []
    warm = results["distill"]["eval_warmstart"]
    return [
        {
            "target": pct(target["val_accuracy"], 0),
            "reached": target["reached"],
            "at SFT step": target["step"],
            "best check": pct(target["best"]),
            "SFT steps": warm.get("sft_steps"),
            "trace rounds": target.get("rounds", 1),
            "what happened": target["summary"],
        }
    ]


def flops_rows(results: dict[str, Summary]) -> list[dict]:
    """The compute ledger of every stage that keeps one, phase by phase (rakd.flops)."""
    from rakd.flops import format_flops

    rows = []
    for name in ("teacher", "distill"):
        ledger = results.get(name, {}).get("eval", {}).get("flops") or {}
        rows += [
            {"stage": name, "phase": phase, "FLOPs": f"{count:.3e}", "≈": format_flops(count)}
            for phase, count in ledger.items()
        ]
    return rows


def stage_time_rows(results: dict[str, Summary], states: dict[str, str] | None = None) -> list[dict]:
    rows = []
    for name, summary in results.items():
        row = {"stage": name, "seconds": f"{summary.get('seconds', 0):.0f}"}
        if states:
            row["state"] = states[name]
        rows.append(row)
    return rows


def summary_sections(results: dict[str, Summary], states: dict[str, str] | None = None) -> list[tuple[str, list[dict]]]:
    """(title, rows) of everything a finished run reports, in order: rendered as text or markdown."""
    sections = [
        (
            "stages" + (" (a cached stage shows the time of the run that made it)" if states else ""),
            stage_time_rows(results, states),
        ),
        ("accuracy (test split)", accuracy_rows(results)),
    ]
    for title, rows in (("warm start", warmstart_rows(results)), ("compute (FLOPs)", flops_rows(results))):
        if rows:
            sections.append((title, rows))
    return sections + [
        (name, BY_NAME[name].rows(results[name])) for name in ("export", "validate", "package") if name in results
    ]
