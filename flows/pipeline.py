"""The Prefect flows: `rakd-pipeline` (prep -> teacher -> distill -> export -> validate -> package) and
`rakd-validate` (one model or package against a data file: what an edge device's worker runs).

Caching: each stage's cache key is the fingerprint of its config, the
fingerprints of its inputs (an upstream stage's key, or the sha256 of a user
file or checkpoint) and the run directory. Re-running a finished pipeline with
the same config runs nothing; changing only `export` re-runs export, validate
and package; a pipeline that crashed in distill re-runs distill, which resumes
from its last checkpoint. A stage whose output folder has gone is re-run even
when its key is cached, and so is one whose folder holds another config's outputs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import rakd
from flows.stages import (distill_task, edge_validate_task, export_task, package_task, prep_task, slug, teacher_task,
                          validate_task)
from rakd.config import dump_config, load_config
from rakd.io import atomic_write_text, fingerprint, fingerprint_path

# The file each stage writes last: without it (or with another key's outputs there) the stage is re-run
# even on a cache hit; `<run>/.stage-keys/<stage>` records the key the outputs on disk belong to.
DONE_FILES = {"prep": "data/card.json", "teacher": "teacher/eval.json", "distill": "student/eval.json",
              "export": "export/parity.json", "validate": "validate/report.json", "package": "package/manifest.json"}
# Config keys that never change a stage's output (fault injection for resume tests).
NOT_IN_KEY = {"distill": {"fail_after_step"}}


def pipeline_config(config: str | dict | None, overrides: list[str] | None = None, run_name: str | None = None):
    """The same pydantic config the CLI loads: a YAML path, a dict of sections, or None for the defaults."""
    return load_config(config, [*(overrides or []), *([f"run.name={run_name}"] if run_name else [])])


def stage_keys(cfg, run_dir: Path) -> dict[str, str]:
    """The cache key of every stage: its config, its inputs' fingerprints, the run directory, the code version."""
    def section(name: str) -> dict:
        data = getattr(cfg, name).model_dump(mode="json")
        return {k: v for k, v in data.items() if k not in NOT_IN_KEY.get(name, set())}

    def source(model) -> str | None:  # a checkpoint given by path is an input: its bytes count
        return fingerprint_path(model.path) if model.path else None

    base = {"run_dir": str(run_dir.resolve()), "version": rakd.__version__}
    keys = {"prep": fingerprint({**base, "stage": "prep", "cfg": section("prep"),
                                 "file": fingerprint_path(cfg.prep.path) if cfg.prep.path else None})}
    keys["teacher"] = fingerprint({**base, "stage": "teacher", "cfg": section("teacher"), "after": keys["prep"],
                                   "checkpoint": source(cfg.teacher.model)})
    keys["distill"] = fingerprint({**base, "stage": "distill", "cfg": section("distill"), "after": keys["teacher"],
                                   "checkpoint": source(cfg.distill.student.model)})
    for stage, before, name in (("export", "distill", "export"), ("validate", "export", "validation"),
                                ("package", "validate", "package")):
        keys[stage] = fingerprint({**base, "stage": stage, "cfg": section(name), "after": keys[before]})
    return keys


def _marker(run_dir: Path, stage: str) -> Path:
    return run_dir / ".stage-keys" / stage


def outputs_current(run_dir: Path, stage: str, key: str) -> bool:
    """The stage's outputs are on disk and were written under this key (not by another config in the same run dir)."""
    marker = _marker(run_dir, stage)
    return (run_dir / DONE_FILES[stage]).is_file() and marker.is_file() and marker.read_text().strip() == key


def _run_stage(stage_task, stage: str, run_dir: Path, storage: Path, orchestration, *args, key: str,
               refresh: bool = False, **kwargs):
    done = outputs_current(run_dir, stage, key) and not refresh
    training = stage in ("teacher", "distill")
    options = dict(result_storage=storage, refresh_cache=not done,
                   retries=orchestration.training_retries if training else orchestration.retries,
                   retry_delay_seconds=orchestration.retry_delay_s)
    state = stage_task.with_options(**options)(*args, key=key, return_state=True, **kwargs)
    result = state.result()  # raises the stage's own exception when it failed
    atomic_write_text(_marker(run_dir, stage), key + "\n")
    return state.name, result


# ---------------------------------------------------------------- artifacts


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def stage_table(stage: str, result: dict) -> list[dict]:
    """The headline rows a stage shows in the Prefect UI."""
    if stage == "prep":
        card = result["card"]
        return [{"split": s, "problems": n} for s, n in card["counts"].items()] + [
            {"split": "duplicates removed", "problems": card["duplicates_removed"]},
            {"split": "invalid skipped", "problems": card["invalid_skipped"]}]
    if stage == "teacher":
        e = result["eval"]
        return [{"model": "teacher", "parameters": e.get("parameters"), "greedy": _pct(e["greedy_accuracy"]),
                 "sampled": _pct(e.get("sampled_accuracy")), "n": e["n"]}]
    if stage == "distill":
        rows = [{"point": "warm start (test)", "greedy": _pct(result["eval_warmstart"]["greedy_accuracy"]),
                 "sampled": _pct(result["eval_warmstart"].get("sampled_accuracy"))}]
        rows += [{"point": f"RL step {r['step']} (val)", "greedy": _pct(r.get("val_greedy_accuracy")),
                  "sampled": _pct(r.get("val_sampled_accuracy"))} for r in result["val_by_step"]]
        rows.append({"point": f"final {result['eval'].get('method', '')} (test)", "greedy": _pct(result["eval"]["greedy_accuracy"]),
                     "sampled": _pct(result["eval"].get("sampled_accuracy"))})
        return rows
    if stage == "export":
        return [{"artefact": r["artefact"], "size_mb": round(r["size_bytes"] / 1e6, 3),
                 "max_abs_dlogit": float(f"{r['logits_max_abs_diff']:.3g}"), "top1_agreement": round(r["top1_agreement"], 4),
                 "passed": r["passed"]} for r in result["parity"]["artefacts"]]
    if stage == "validate":
        return [{"artefact": r["label"], "format": r["format"], "accuracy": _pct(r["accuracy"]),
                 "ttft_ms_p50": r["ttft_ms_p50"] and round(r["ttft_ms_p50"], 2),
                 "decode_tok_s_p50": r["decode_tok_s_p50"] and round(r["decode_tok_s_p50"]),
                 "latency_ms_p95": r["latency_ms_p95"] and round(r["latency_ms_p95"], 1),
                 "peak_rss_mb": r["peak_rss_mb"] and round(r["peak_rss_mb"]), "size_mb": round(r["size_mb"], 3),
                 "passed": r["passed"], "failed_gates": "; ".join(r["failed_gates"])} for r in result["report"]["artefacts"]]
    return [{"model": m["path"], "label": m["label"], "format": m["format"], "accuracy": _pct(m["metrics"]["accuracy"])}
            for m in result["models"]]


def final_report(cfg, results: dict, states: dict) -> str:
    lines = [f"# rakd pipeline: {cfg.run.name}", "", f"Run directory: `{cfg.run.dir.resolve()}`", "",
             "| stage | state | seconds |", "|---|---|---|"]
    lines += [f"| {s} | {states[s]} | {results[s].get('seconds', 0):.0f} |" for s in results]
    teacher, distill = results["teacher"]["eval"], results["distill"]
    lines += ["", "| model | greedy | sampled |", "|---|---|---|",
              f"| teacher | {_pct(teacher['greedy_accuracy'])} | {_pct(teacher.get('sampled_accuracy'))} |",
              f"| student (warm start) | {_pct(distill['eval_warmstart']['greedy_accuracy'])} | {_pct(distill['eval_warmstart'].get('sampled_accuracy'))} |",
              f"| student ({cfg.distill.method}) | {_pct(distill['eval']['greedy_accuracy'])} | {_pct(distill['eval'].get('sampled_accuracy'))} |"]
    package = results["package"]
    lines += ["", f"Package: `{package['path']}` with " + ", ".join(f"`{m['path']}` ({_pct(m['metrics']['accuracy'])})"
                                                             for m in package["models"]),
              "", f"Verify it with `rakd verify-package {package['path']}`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- flows


@flow(name="rakd-pipeline", log_prints=True)
def rakd_pipeline(config: str | dict | None = "configs/tiny.yaml", overrides: list[str] | None = None,
                  run_name: str | None = None, refresh: bool = False) -> dict:
    """Every stage on one config; returns each stage's summary and state (Completed, or Cached when skipped).

    `refresh=True` runs every stage even when its results are cached (the nightly deployment does)."""
    logger = get_run_logger()
    cfg = pipeline_config(config, overrides, run_name)
    run_dir = cfg.run.dir
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    storage = Path(cfg.orchestration.result_storage).resolve()  # a local folder; Prefect wraps it in LocalFileSystem
    keys, name = stage_keys(cfg, run_dir), slug(cfg.run.name)
    run, section = str(run_dir), lambda s: getattr(cfg, s).model_dump(mode="json")
    results, states = {}, {}
    plan = [
        ("prep", prep_task, (section("prep"), run), {}),
        ("teacher", teacher_task, (section("teacher"), run), {"progress_key": f"{name}-teacher-progress"}),
        ("distill", distill_task, (section("distill"), run), {"progress_key": f"{name}-distill-progress"}),
        ("export", export_task, (section("export"), run), {}),
        ("validate", validate_task, (section("validation"), run, str(run_dir / "data" / "test.jsonl"),
                                     str(run_dir / "validate")), {}),
        ("package", package_task, (section("package"), run), {}),
    ]
    for stage, stage_task, args, kwargs in plan:
        logger.info(f"[{stage}] key {keys[stage][:12]}")
        states[stage], results[stage] = _run_stage(stage_task, stage, run_dir, storage, cfg.orchestration,
                                                   *args, key=keys[stage], refresh=refresh, **kwargs)
        create_table_artifact(stage_table(stage, results[stage]), key=f"{name}-{stage}",
                              description=f"{stage} of run {cfg.run.name} ({states[stage].lower()})")
    report = final_report(cfg, results, states)
    create_markdown_artifact(report, key=f"{name}-report", description=f"rakd pipeline {cfg.run.name}: final report")
    return {"run_dir": run, "keys": keys, "states": states, "results": results}


@flow(name="rakd-validate", log_prints=True)
def rakd_validate(model: str, data: str, out: str | None = None, validation: dict | None = None,
                  require_pass: bool = False) -> dict:
    """Validate a model file, ONNX folder or package against a data file (an edge device's job)."""
    from deploy.validate import ValidateConfig, shippable

    cfg = ValidateConfig.model_validate(validation or {})
    out = out or str(Path("runs") / f"validate-{Path(model).stem}")
    result = edge_validate_task(cfg.model_dump(mode="json"), model, data, out)
    create_table_artifact(stage_table("validate", result), key=f"edge-validate-{slug(Path(model).stem)}",
                          description=f"validation of {model} on {data}")
    shipped = shippable(result["report"])
    if require_pass and not shipped:
        raise RuntimeError(f"{model}: no artefact passed the gates: " + "; ".join(
            f"{r['label']}: {', '.join(r['failed_gates'])}" for r in result["report"]["artefacts"]))
    return {"report": str(Path(out) / "report.json"), "passed": [r["label"] for r in shipped]}
