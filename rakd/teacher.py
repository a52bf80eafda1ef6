"""The teacher stage: train the from-scratch teacher on CoT traces, or load a checkpoint; evaluate it.

Writes `teacher/` (HF folder with tokenizer), `teacher/eval.json` (the ceiling
the student aims at) and, when trained, `teacher/metrics.jsonl`. With `teacher.nproc` > 1 a from-scratch
teacher trains data parallel under torchrun (each rank its share of every batch, gradients summed: the step of
one process on the same global batch); rank 0 checkpoints, evaluates and writes `teacher/`.
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

from rakd.evaluate import evaluate_model
from rakd.flops import with_total
from rakd.io import read_jsonl
from rakd.layout import RunLayout
from rakd.models.load import load_causal_lm, save_model
from rakd.models.zoo import build_model, count_parameters, preset_config
from rakd.prompt import completion_text
from rakd.schema import DataError
from rakd.stage_config import TeacherConfig
from rakd.train.common import pick_device, set_threads
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
    if cfg.nproc > 1 and cfg.model.path is None and "WORLD_SIZE" not in os.environ:
        spec = layout.teacher_work / "torchrun-config.json"
        launch_torchrun("teacher", "rakd.teacher", cfg, spec, layout.root, cfg.nproc, cfg.threads, log)
        result = json.loads((layout.teacher / "eval.json").read_text())
        return TeacherResult(layout.teacher, result, time.perf_counter() - started)
    world = world_from_env()
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    if cfg.model.path is not None:
        model, tokenizer = load_causal_lm(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        model.to(device)
    else:
        tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer)
        model = build_model(preset_config(cfg.model.preset, tokenizer, **cfg.model.overrides), cfg.seed).to(device)
        # checkpoints and log live in teacher.work/ until the model is final
        trainer = SFTTrainer(
            model,
            tokenizer,
            sft_pairs(read_jsonl(layout.split("train")), "train"),
            cfg.train,
            layout.teacher_work,
            seed=cfg.seed,
            name="teacher",
            world=world,
        )
        trainer.resume()
        trainer.run()
    if not world.main:  # rank 0 evaluates and writes the teacher; every rank holds the same weights
        world.barrier()
        return TeacherResult(layout.teacher, {}, time.perf_counter() - started)
    result = evaluate_model(model, tokenizer, read_jsonl(layout.split("test")), cfg.eval)
    result.update(parameters=count_parameters(model), source=cfg.model.model_dump())
    work_log = layout.teacher_work / "metrics.jsonl"
    trained = sum(row.get("flops", 0) for row in read_jsonl(work_log)) if work_log.exists() else 0
    result["flops"] = with_total({"teacher_train": trained, "eval": result["eval_flops"]})
    save_model(
        model.cpu(),
        tokenizer,
        layout.teacher,
        extra={"eval.json": result},
        copy_files={"metrics.jsonl": work_log} if work_log.exists() else None,
    )
    shutil.rmtree(layout.teacher_work, ignore_errors=True)
    world.barrier()
    return TeacherResult(layout.teacher, result, time.perf_counter() - started)


if __name__ == "__main__":  # a torchrun worker: python -m rakd.teacher CONFIG_JSON RUN_DIR
    run_teacher(TeacherConfig.model_validate_json(Path(sys.argv[1]).read_text()), sys.argv[2])
    leave_world()  # only after success: on a failure torchrun ends the other workers
