"""The teacher stage: train the from-scratch teacher on CoT traces, or load a checkpoint; evaluate it.

Writes `teacher/` (HF folder with tokenizer), `teacher/eval.json` (the ceiling
the student aims at) and, when trained, `teacher/metrics.jsonl`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator
from transformers import AutoTokenizer

from rakd.data.format import completion_text
from rakd.data.loaders import DataError
from rakd.evaluate import EvalConfig, evaluate_model
from rakd.io import read_jsonl
from rakd.models.load import load_causal_lm, save_model
from rakd.models.zoo import build_model, count_parameters, preset_config
from rakd.schema import StageConfig
from rakd.train.common import pick_device, set_threads
from rakd.train.sft import SFTConfig, SFTTrainer


class ModelSource(StageConfig):
    """Where a model comes from: a checkpoint `path` (folder, hub id, .gguf) or a named `preset` built from scratch."""

    path: str | None = None
    preset: str | None = None
    overrides: dict[str, int | float | bool | str] = Field(default_factory=dict)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        if (self.path is None) == (self.preset is None):
            raise ValueError("give exactly one of 'path' (a checkpoint) or 'preset' (build from scratch)")
        return self


class TeacherConfig(StageConfig):
    model: ModelSource = Field(default_factory=lambda: ModelSource(preset="teacher-tiny"))
    train: SFTConfig = Field(default_factory=SFTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    threads: int = Field(2, ge=0, description="torch CPU threads (0: torch's default)")
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class TeacherResult:
    teacher_dir: Path
    eval: dict
    seconds: float


def sft_pairs(records: list[dict], split: str) -> list[tuple[str, str]]:
    missing = sum("solution" not in r for r in records)
    if missing:
        raise DataError(f"data/{split}.jsonl: {missing} records have no 'solution'; a from-scratch teacher needs CoT traces")
    return [(r["question"], completion_text(r["solution"])) for r in records]


def run_teacher(cfg: TeacherConfig, run_dir: str | Path) -> TeacherResult:
    run_dir, started = Path(run_dir), time.perf_counter()
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    out = run_dir / "teacher"
    if cfg.model.path is not None:
        model, tokenizer = load_causal_lm(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        model.to(device)
    else:
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
        model = build_model(preset_config(cfg.model.preset, tokenizer, **cfg.model.overrides), cfg.seed).to(device)
        work = run_dir / "teacher.work"  # checkpoints and log live here until the model is final
        trainer = SFTTrainer(model, tokenizer, sft_pairs(read_jsonl(run_dir / "data/train.jsonl"), "train"),
                             cfg.train, work, seed=cfg.seed, name="teacher")
        trainer.resume()
        trainer.run()
    result = evaluate_model(model, tokenizer, read_jsonl(run_dir / "data/test.jsonl"), cfg.eval)
    result.update(parameters=count_parameters(model), source=cfg.model.model_dump())
    work_log = run_dir / "teacher.work/metrics.jsonl"
    save_model(model.cpu(), tokenizer, out, extra={"eval.json": result},
               copy_files={"metrics.jsonl": work_log} if work_log.exists() else None)
    shutil.rmtree(run_dir / "teacher.work", ignore_errors=True)
    return TeacherResult(out, result, time.perf_counter() - started)
