"""The teacher stage: train the from-scratch teacher on CoT traces, or load a checkpoint (and, with `teacher.tune`,
fine-tune it on the task's worked solutions through its chat template); evaluate it.

Writes `teacher/` (HF folder with tokenizer), `teacher/eval.json` (the ceiling the student aims at; a tuned
checkpoint's accuracy before tuning under `before`, the stop's outcome under `tuning`) and, when trained,
`teacher/metrics.jsonl`. Training stops at `teacher.stop` (a val target or plateau) when one is set. With
`teacher.nproc` > 1 a teacher that trains does so data parallel under torchrun (each rank its share of every
batch, gradients summed: the step of one process on the same global batch); rank 0 checkpoints, evaluates and
writes `teacher/`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from rakd.evaluate import eval_row, evaluate_model
from rakd.flops import with_total
from rakd.io import atomic_write_json, read_jsonl
from rakd.keys import claim_work, work_key
from rakd.layout import EVAL, EVAL_BEFORE, METRICS, RunLayout
from rakd.models.load import load_causal_lm, save_model
from rakd.models.zoo import build_model, count_parameters, preset_config
from rakd.prompt import completion_text
from rakd.schema import DataError, Summary
from rakd.stages.config import TeacherConfig
from rakd.stages.stop import outcome, val_stop
from rakd.train.common import pick_device, resolve_precision, set_threads
from rakd.train.distributed import launch_torchrun, leave_world, world_from_env
from rakd.train.sft import SFTTrainer


@dataclass(frozen=True)
class TeacherResult:
    teacher_dir: Path
    eval: dict
    seconds: float


def sft_pairs(records: list[dict], split: str) -> list[tuple[str, str]]:
    missing = sum("solution" not in r for r in records)
    if missing:
        raise DataError(
            f"data/{split}.jsonl: {missing} records have no 'solution'; a from-scratch teacher needs CoT traces"
        )
    return [(r["question"], completion_text(r["solution"])) for r in records]


def run_teacher(cfg: TeacherConfig, run_dir: str | Path, log=print) -> TeacherResult:
    layout, started = RunLayout(run_dir), time.perf_counter()
    trains, launching = cfg.model.path is None or cfg.tune, "WORLD_SIZE" not in os.environ
    if trains and launching:  # not a torchrun rank: another config's checkpoints are set aside
        claim_work(layout.teacher_work, work_key(cfg), log=log)
    if cfg.nproc > 1 and trains and launching:
        spec = layout.teacher_work / "torchrun-config.json"
        launch_torchrun("teacher", "rakd.stages.teacher", cfg, spec, layout.root, cfg.nproc, cfg.threads, log)
        result = json.loads((layout.teacher / EVAL).read_text())
        return TeacherResult(layout.teacher, result, time.perf_counter() - started)
    world = world_from_env()
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    before = None
    if cfg.model.path is not None:
        model, tokenizer = load_causal_lm(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        model.to(device)
        if cfg.tune:
            before = evaluation_before(cfg, model, tokenizer, layout, world, log, precision)
    else:
        tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer)
        model = build_model(preset_config(cfg.model.preset, tokenizer, **cfg.model.overrides), cfg.seed).to(device)
    if trains:  # checkpoints and log live in teacher.work/ until the model is final
        trainer = SFTTrainer(
            model,
            tokenizer,
            sft_pairs(read_jsonl(layout.split("train")), "train"),
            cfg.train,
            layout.teacher_work,
            seed=cfg.seed,
            name="teacher",
            world=world,
            precision=precision,
        )
        trainer.resume()
        val = layout.split("val")
        check = dict(model=model, tokenizer=tokenizer, eval_cfg=cfg.eval, log=log, precision=precision)
        stop = val_stop(
            cfg.stop, read_jsonl(val), f"teacher.stop: {val}", layout.teacher_work / METRICS, "teacher", **check
        )
        trainer.run(on_step=stop)
    if not world.main:  # rank 0 evaluates and writes the teacher; every rank holds the same weights
        world.barrier()
        return TeacherResult(layout.teacher, {}, time.perf_counter() - started)
    evaluated = evaluate_model(model, tokenizer, read_jsonl(layout.split("test")), cfg.eval, precision)
    result = evaluated.as_json() | {"parameters": count_parameters(model), "source": cfg.model.model_dump()}
    work_log = layout.teacher_work / METRICS
    rows = read_jsonl(work_log) if work_log.exists() else []
    result["precision"] = precision
    if trains:
        result.update(train_steps=len(rows), tuning=outcome(cfg.stop, rows, len(rows)))
    if before is not None:
        result["before"] = before
    trained = sum(row.get("flops", 0) for row in rows)
    checks = sum(row.get("flops_eval", 0) for row in rows) + (before or {}).get("eval_flops", 0)
    result["flops"] = with_total({"teacher_train": trained, "eval": result["eval_flops"] + checks})
    log(evaluated.line("teacher"))
    save_model(
        model.cpu(),
        tokenizer,
        layout.teacher,
        extra={EVAL: result},
        copy_files={METRICS: work_log} if work_log.exists() else None,
    )
    shutil.rmtree(layout.teacher_work, ignore_errors=True)
    world.barrier()
    return TeacherResult(layout.teacher, result, time.perf_counter() - started)


def evaluation_before(cfg: TeacherConfig, model, tokenizer, layout: RunLayout, world, log, precision: str) -> dict:
    """The checkpoint's test accuracy before it is tuned (rank 0; kept in teacher.work/, so a resumed run does not
    evaluate it again)."""
    path = layout.teacher_work / EVAL_BEFORE
    if world.main and not path.exists():
        result = evaluate_model(model, tokenizer, read_jsonl(layout.split("test")), cfg.eval, precision)
        log(result.line("teacher (before tuning)"))
        atomic_write_json(path, {k: v for k, v in result.as_json().items() if k != "greedy_correct"})
    world.barrier()
    return json.loads(path.read_text())


# ---------------------------------------------------------------- the stage contract (pipeline.registry)
# (section config, RunLayout) -> summary, a small JSON dict read back from the outputs, so that a run that just
# finished and outputs current under their key give the same summary; the stage's own summary rows.


def done_file(layout: RunLayout) -> Path:
    return layout.teacher / EVAL


def run_stage(cfg: TeacherConfig, layout: RunLayout) -> Summary:
    run_teacher(cfg, layout.root)
    return read_stage(cfg, layout)


def read_stage(cfg: TeacherConfig, layout: RunLayout) -> Summary:
    return {"path": str(layout.teacher), "eval": json.loads((layout.teacher / EVAL).read_text())}


def stage_rows(summary: Summary) -> list[dict]:
    """The teacher on the test split (and before its tuning, when it was tuned)."""
    before = summary["eval"].get("before")
    return ([eval_row("teacher (before tuning)", before)] if before else []) + [eval_row("teacher", summary["eval"])]


if __name__ == "__main__":  # a torchrun worker: python -m rakd.stages.teacher CONFIG_JSON RUN_DIR
    run_teacher(TeacherConfig.model_validate_json(Path(sys.argv[1]).read_text()), sys.argv[2])
    leave_world()  # only after success: on a failure torchrun ends the other workers
