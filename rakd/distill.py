"""The distill stage: warm-start the student on the teacher's verified traces, then RL-aware distillation.

The student sees questions and final answers only, as real RL datasets give
them: every reasoning trace it learns from comes from the teacher (sampled
traces, log-probabilities). `distill_records` is the only reader of the data.

Writes `student/` (HF folder), `student/checkpoints/step-N/`, `student/metrics.jsonl`,
`student/eval.json`, `student/eval_warmstart.json`, `student/traces.jsonl`.
Work in progress lives in `student.work/` so a crash resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from rakd.evaluate import EvalConfig, evaluate_model, format_eval
from rakd.io import atomic_dir, atomic_write_json, read_jsonl, to_jsonl
from rakd.models.load import ModelLoadError, load_causal_lm, save_model
from rakd.models.subset import layer_subset
from rakd.models.zoo import build_model, count_parameters, preset_config
from rakd.rollout import sample
from rakd.schema import StageConfig
from rakd.teacher import ModelSource
from rakd.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from rakd.train.common import MetricsLog, Progress, make_optimizer, make_scheduler, pick_device, set_threads
from rakd.train.rl import LossParams, Method, RLConfig, RLStep
from rakd.train.sft import SFTConfig, SFTTrainer
from rakd.verify import reward


class StudentSource(StageConfig):
    """A model source, or a layer subset of the teacher (`from_teacher_every_k`)."""

    model: ModelSource | None = Field(default_factory=lambda: ModelSource(preset="student-tiny"))
    from_teacher_every_k: int | None = Field(None, ge=1)


class WarmStartConfig(StageConfig):
    """Rejection-sampled SeqKD: teacher traces the verifier accepts, then SFT."""

    n_prompts: int = Field(4000, ge=0, description="train questions the teacher answers (0: no warm start)")
    samples_per_prompt: int = Field(2, ge=1)
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(64, ge=1)
    sft: SFTConfig = Field(default_factory=lambda: SFTConfig(steps=300))


class DistillConfig(StageConfig):
    student: StudentSource = Field(default_factory=StudentSource)
    method: Method = "rakd"
    loss: LossParams = Field(default_factory=LossParams)
    warmstart: WarmStartConfig = Field(default_factory=WarmStartConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint_every: int = Field(25, ge=1)
    eval_every: int = Field(0, ge=0, description="evaluate on the val split every N RL steps (0: never)")
    val_problems: int = Field(200, ge=1)
    threads: int = Field(1, ge=0, description="torch CPU threads during RL (1 was fastest here)")
    device: str = "auto"
    seed: int = 0
    fail_after_step: int | None = Field(None, description="fault injection for tests: crash after this RL step")


@dataclass(frozen=True)
class DistillResult:
    student_dir: Path
    eval: dict
    eval_warmstart: dict
    seconds: dict


class InjectedFault(RuntimeError):
    """Raised by `fail_after_step` to test crash and resume."""


def distill_records(run_dir: Path, split: str) -> list[dict]:
    """Questions and final answers of a split, and nothing else (no solutions)."""
    return [{"id": r["id"], "question": r["question"], "answer": r["answer"]} for r in read_jsonl(run_dir / f"data/{split}.jsonl")]


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    same = teacher_tok.get_vocab() == student_tok.get_vocab() and all(
        getattr(teacher_tok, f"{r}_token_id") == getattr(student_tok, f"{r}_token_id") for r in ("bos", "eos", "pad"))
    if not same:
        raise ModelLoadError(
            f"teacher tokenizer {teacher_tok.name_or_path!r} ({len(teacher_tok)} tokens) and student tokenizer "
            f"{student_tok.name_or_path!r} ({len(student_tok)} tokens) differ; token-level distillation needs one tokenizer"
        )


def init_student(cfg: DistillConfig, teacher, teacher_tok, device):
    if cfg.student.from_teacher_every_k:
        return layer_subset(teacher, cfg.student.from_teacher_every_k).to(device), teacher_tok
    source = cfg.student.model
    if source.path is not None:
        student, tok = load_causal_lm(source.path, trust_remote_code=source.trust_remote_code)
        check_same_tokenizer(teacher_tok, tok)
        return student.to(device), tok
    return build_model(preset_config(source.preset, teacher_tok, **source.overrides), cfg.seed + 1).to(device), teacher_tok


def teacher_traces(teacher, tokenizer, records: list[dict], cfg: WarmStartConfig, seed: int) -> list[dict]:
    """Sampled teacher solutions that the verifier accepts, one per distinct (question, completion)."""
    records = records[: cfg.n_prompts]
    questions = [r["question"] for r in records for _ in range(cfg.samples_per_prompt)]
    answers = [r["answer"] for r in records for _ in range(cfg.samples_per_prompt)]
    rollouts = sample(teacher, tokenizer, questions, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    seen, traces = set(), []
    for question, answer, text in zip(questions, answers, rollouts.texts):
        if reward(text, answer) == 1.0 and (question, text) not in seen:
            seen.add((question, text))
            traces.append({"question": question, "answer": answer, "completion": text})
    return traces


def run_warmstart(cfg, student, teacher, tokenizer, train, work: Path, log) -> tuple[list[dict], dict]:
    """Traces, SFT and the warm-start evaluation; cached in `work/warmstart/` once done."""
    done = work / "warmstart"
    if (done / "eval_warmstart.json").exists():
        student.load_state_dict(load_causal_lm(done)[0].state_dict())
        return read_jsonl(done / "traces.jsonl"), json.loads((done / "eval_warmstart.json").read_text())
    traces = teacher_traces(teacher, tokenizer, train, cfg.warmstart, cfg.seed) if cfg.warmstart.n_prompts else []
    log(f"[warmstart] {len(traces)} verified teacher traces from {min(len(train), cfg.warmstart.n_prompts)} prompts")
    if traces and cfg.warmstart.sft.steps:
        trainer = SFTTrainer(student, tokenizer, [(t["question"], t["completion"]) for t in traces],
                             cfg.warmstart.sft, work / "warmstart.work", seed=cfg.seed, name="warmstart")
        trainer.resume()
        trainer.run()
    result = evaluate_model(student, tokenizer, distill_records(work.parent, "test"), cfg.eval)
    log(format_eval("student (warm start)", result))
    files = {"traces.jsonl": _write(work / "traces.jsonl", to_jsonl(traces))}
    if (work / "warmstart.work/metrics.jsonl").exists():
        files["metrics_warmstart.jsonl"] = work / "warmstart.work/metrics.jsonl"
    save_model(student, tokenizer, done, extra={"eval_warmstart.json": result}, copy_files=files)
    shutil.rmtree(work / "warmstart.work", ignore_errors=True)
    return traces, result


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run_distill(cfg: DistillConfig, run_dir: str | Path, log=print) -> DistillResult:
    run_dir, work = Path(run_dir), Path(run_dir) / "student.work"
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    timings = {}
    t0 = time.perf_counter()
    teacher, teacher_tok = load_causal_lm(run_dir / "teacher")
    teacher.to(device).eval().requires_grad_(False)
    student, tokenizer = init_student(cfg, teacher, teacher_tok, device)
    train = distill_records(run_dir, "train")
    traces, eval_warm = run_warmstart(cfg, student, teacher, tokenizer, train, work, log)
    timings["warmstart"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    optimizer = make_optimizer(student, cfg.rl.optim)
    scheduler = make_scheduler(optimizer, cfg.rl.steps, cfg.rl.optim)
    rl = RLStep(student, teacher, tokenizer, train, traces, cfg.method, cfg.loss, cfg.rl, optimizer, scheduler, seed=cfg.seed)
    metrics_log = MetricsLog(work / "metrics.jsonl")
    start = 0
    if checkpoints := list_checkpoints(work / "checkpoints"):
        start = load_checkpoint(checkpoints[-1], student, optimizer, scheduler)
        metrics_log.truncate_after(start)
        log(f"[distill] resumed from {checkpoints[-1]} (step {start})")
    progress = Progress(f"distill:{cfg.method}", cfg.rl.steps, start, every=5)
    val_cfg = cfg.eval.model_copy(update={"n_problems": cfg.val_problems})
    val_records = distill_records(run_dir, "val") if cfg.eval_every else []
    for step in range(start, cfg.rl.steps):
        row = {"step": step + 1, "method": cfg.method, **rl.run(step)}
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            val = evaluate_model(student, tokenizer, val_records, val_cfg)
            row.update({f"val_{k}": v for k, v in val.items() if k.endswith(("accuracy", "stderr"))})
        metrics_log.append(row)
        progress.update(step, reward=row["reward_mean"], loss=row.get("loss", 0.0))
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.rl.steps:
            save_checkpoint(work / "checkpoints", step + 1, student, optimizer, scheduler)
        if cfg.fail_after_step is not None and step + 1 == cfg.fail_after_step:
            raise InjectedFault(f"fault injected after RL step {step + 1} (distill.fail_after_step)")
    timings["rl"] = time.perf_counter() - t1

    result = evaluate_model(student, tokenizer, distill_records(run_dir, "test"), cfg.eval)
    result.update(method=cfg.method, parameters=count_parameters(student), teacher_parameters=count_parameters(teacher))
    log(format_eval(f"student ({cfg.method})", result))
    out = _finish(student.cpu(), tokenizer, run_dir, work, result, eval_warm)
    timings["total"] = time.perf_counter() - t0
    return DistillResult(out, result, eval_warm, timings)


def _finish(student, tokenizer, run_dir: Path, work: Path, result: dict, eval_warm: dict) -> Path:
    """Write `student/` atomically with its logs and (hard-linked) checkpoints, then drop the work folder."""
    out = run_dir / "student"
    with atomic_dir(out) as staging:
        student.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / "eval.json", result)
        atomic_write_json(staging / "eval_warmstart.json", eval_warm)
        for source in (work / "metrics.jsonl", work / "traces.jsonl", work / "warmstart/metrics_warmstart.jsonl"):
            if source.exists():
                os.link(source, staging / source.name)
        if (work / "checkpoints").exists():
            shutil.copytree(work / "checkpoints", staging / "checkpoints", copy_function=os.link)
    shutil.rmtree(work, ignore_errors=True)
    return out
