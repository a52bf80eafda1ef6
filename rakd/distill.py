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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from rakd.evaluate import EvalConfig, evaluate_model, format_eval
from rakd.flops import merge, with_total
from rakd.io import read_jsonl
from rakd.layout import RunLayout
from rakd.models.load import ModelLoadError, load_causal_lm, save_model
from rakd.models.source import ModelSource
from rakd.models.subset import layer_subset
from rakd.models.zoo import build_model, count_parameters, preset_config
from rakd.schema import StageConfig
from rakd.scorers import ScorerConfig, make_scorer
from rakd.traces import TraceRounds, has_difficulty, teacher_traces, warmstart_prompts  # noqa: F401 (re-exported)
from rakd.train.common import OptimConfig, pick_device, set_threads
from rakd.train.distributed import (
    World,
    launch_torchrun,
    leave_world,
    load_full_state_dict,
    plain_copy,
    shard,
    world_from_env,
)
from rakd.train.rl import LossParams, Method, RLConfig, RLTrainer
from rakd.train.sft import SFTConfig, SFTTrainer


class StudentSource(StageConfig):
    """A model source, or a layer subset of the teacher (`from_teacher_every_k`)."""

    model: ModelSource | None = Field(default_factory=lambda: ModelSource(preset="student-tiny"))
    from_teacher_every_k: int | None = Field(None, ge=1)


class WarmStartStop(StageConfig):
    """End the warm start's SFT once the student reaches a greedy val accuracy, rather than after a fixed number of
    steps: SFT on few traces is on a steep learning curve, so a step count lands anywhere from "solves nothing new"
    to the plateau; RL needs a student at the edge of its competence (README "Results")."""

    val_accuracy: float = Field(gt=0, le=1, description="greedy accuracy on the checked val questions that ends SFT")
    min_difficulty: int | None = Field(
        None,
        ge=1,
        description="check only val questions with at least this many operations (None, or a source with no "
        "difficulty at all such as GSM8K: every val question)",
    )
    every: int = Field(25, ge=1, description="check every N SFT steps")
    problems: int = Field(200, ge=1, description="val questions per check (the first N that qualify)")


class WarmStartRecover(StageConfig):
    """What the warm start does while it misses its target: traces for more of the harder questions (of the same
    `n_prompts`, so RL's unseen questions stay unseen), and SFT goes on with them (rakd.traces)."""

    after: int = Field(300, ge=1, description="SFT steps of a round without reaching the target before the next")
    add_fraction: float = Field(
        0.1, gt=0, le=1, description="each round adds this much to harder_fraction (0.2 -> 0.3 -> 0.4 ...)"
    )
    rounds: int = Field(3, ge=1, description="at most this many rounds after the first")


class WarmStartConfig(StageConfig):
    """Rejection-sampled SeqKD: teacher traces the verifier accepts, then SFT."""

    n_prompts: int = Field(6000, ge=0, description="train questions the teacher answers (0: no warm start)")
    max_difficulty: int | None = Field(
        3,
        ge=1,
        description="a curriculum: of the n_prompts questions, only those with at most this many operations (the "
        "records' `ops`) plus `harder_fraction` of the harder ones; RL then works at the edge the student has only "
        "glimpsed (None: every question; questions with no difficulty at all, e.g. GSM8K, are all kept)",
    )
    harder_fraction: float = Field(
        0.2, ge=0, le=1, description="with max_difficulty: the share of harder questions kept (chosen by seed)"
    )
    samples_per_prompt: int = Field(1, ge=1)
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(64, ge=1)
    sft: SFTConfig = Field(
        default_factory=lambda: SFTConfig(
            steps=1200, log_every=100, optim=OptimConfig(warmup_steps=20, min_lr_ratio=0.05, weight_decay=0.1)
        )
    )
    stop: WarmStartStop | None = Field(
        default_factory=lambda: WarmStartStop(val_accuracy=0.2, min_difficulty=4),
        description="stop SFT early at a target val accuracy (sft.steps is then the most it runs)",
    )
    recover: WarmStartRecover | None = Field(
        default_factory=WarmStartRecover,
        description="while the target is missed: more traces of the harder questions (only with stop; null: never)",
    )


class DistillConfig(StageConfig):
    student: StudentSource = Field(default_factory=StudentSource)
    method: Method = "rakd"
    loss: LossParams = Field(default_factory=LossParams)
    warmstart: WarmStartConfig = Field(default_factory=WarmStartConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    teacher_scorer: ScorerConfig = Field(
        default_factory=ScorerConfig, description="where the teacher's log-probs come from (rakd/scorers.py)"
    )
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig(n_problems=1000))
    checkpoint_every: int = Field(40, ge=1)
    eval_every: int = Field(40, ge=0, description="evaluate on the val split every N RL steps (0: never)")
    val_problems: int = Field(200, ge=1)
    threads: int = Field(2, ge=0, description="torch CPU threads (0: torch's default); per process with nproc > 1")
    nproc: int = Field(
        1, ge=1, description="processes for data-parallel RL under torchrun on this machine (one GPU each on CUDA)"
    )
    fsdp: bool = Field(
        False,
        description="shard the student's weights, gradients and optimiser state across the nproc processes "
        "(torch FSDP2), for a student that does not fit on one device; needs nproc > 1",
    )
    device: str = "auto"
    seed: int = 0
    fail_after_step: int | None = Field(None, description="fault injection for tests: crash after this RL step")

    @model_validator(mode="after")
    def _fsdp_needs_processes(self):
        if self.fsdp and self.nproc < 2:
            raise ValueError("distill.fsdp shards the student across processes: set distill.nproc to 2 or more")
        return self


@dataclass(frozen=True)
class DistillResult:
    student_dir: Path
    eval: dict
    eval_warmstart: dict
    seconds: dict


class InjectedFault(RuntimeError):
    """Raised by `fail_after_step` to test crash and resume."""


def distill_records(layout: RunLayout, split: str) -> list[dict]:
    """Questions, final answers and (when the source has it) difficulty of a split; never the solutions."""
    keep = ("id", "question", "answer", "ops")
    return [{k: r[k] for k in keep if k in r} for r in read_jsonl(layout.split(split))]


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    same = teacher_tok.get_vocab() == student_tok.get_vocab() and all(
        getattr(teacher_tok, f"{r}_token_id") == getattr(student_tok, f"{r}_token_id") for r in ("bos", "eos", "pad")
    )
    if not same:
        raise ModelLoadError(
            f"teacher tokenizer {teacher_tok.name_or_path!r} ({len(teacher_tok)} tokens) and student tokenizer "
            f"{student_tok.name_or_path!r} ({len(student_tok)} tokens) differ; "
            "token-level distillation needs one tokenizer"
        )


def init_student(cfg: DistillConfig, teacher, teacher_tok, device):
    if cfg.student.from_teacher_every_k:
        return layer_subset(teacher, cfg.student.from_teacher_every_k).to(device), teacher_tok
    source = cfg.student.model
    if source.path is not None:
        student, tok = load_causal_lm(source.path, trust_remote_code=source.trust_remote_code)
        check_same_tokenizer(teacher_tok, tok)
        return student.to(device), tok
    return build_model(preset_config(source.preset, teacher_tok, **source.overrides), cfg.seed + 1).to(
        device
    ), teacher_tok


def run_warmstart(
    cfg, student, teacher, tokenizer, train, layout: RunLayout, log, world: World | None = None
) -> tuple[list[dict], dict]:
    """Traces, SFT and the warm-start evaluation; cached in `student.work/warmstart/` once done. Under torchrun
    rank 0 samples the traces (kept in `student.work/traces.pending.jsonl`, so a crash in SFT does not sample
    them again), every rank trains on its share of each SFT batch, and rank 0 evaluates and saves."""
    world = world or World()
    work = layout.student_work
    done = work / "warmstart"
    if (done / "eval_warmstart.json").exists():
        load_full_state_dict(student, load_causal_lm(done)[0].state_dict())
        return read_jsonl(done / "traces.jsonl"), json.loads((done / "eval_warmstart.json").read_text())
    stop = warmstart_stop(cfg, student, tokenizer, layout, log)  # a bad `stop` fails before any sampling
    rounds = TraceRounds(work, cfg.warmstart, cfg.seed)
    if world.main and not rounds.rounds():
        rounds.add(train, teacher, tokenizer, 0, log)
    world.barrier()
    traces, done_steps = rounds.traces(), 0
    if traces and cfg.warmstart.sft.steps:
        trainer = SFTTrainer(
            student,
            tokenizer,
            rounds.pairs_at(0),
            cfg.warmstart.sft,
            work / "warmstart.work",
            seed=cfg.seed,
            name="warmstart",
            world=world,
        )
        trainer.resume()
        done_steps = sft_in_rounds(trainer, rounds, stop, (train, teacher, tokenizer), world, log)
        traces = rounds.traces()
    whole = plain_copy(student)  # a sharded student gathered on rank 0 (every rank takes part)
    if not world.main:
        world.barrier()  # rank 0 evaluates and saves; every rank holds the same weights already
        return traces, json.loads((done / "eval_warmstart.json").read_text())
    result = evaluate_model(whole, tokenizer, distill_records(layout, "test"), cfg.eval)
    sft_log = work / "warmstart.work/metrics.jsonl"
    sft_rows = read_jsonl(sft_log) if sft_log.exists() else []
    result["sft_steps"] = done_steps
    result["rounds"] = rounds.rounds()
    result["target"] = target_outcome(cfg.warmstart, sft_rows, done_steps, result["rounds"])
    result["flops"] = with_total(
        merge(
            {"teacher_generate": rounds.teacher_generate_flops()},
            {"student_sft": sum(r.get("flops", 0) for r in sft_rows)},
            {"eval": sum(r.get("flops_eval", 0) for r in sft_rows) + result["eval_flops"]},
        )
    )
    if result["target"]:
        log(f"[warmstart] {result['target']['summary']}")
    log(format_eval("student (warm start)", result))
    files = {"traces.jsonl": rounds.pending}
    if sft_log.exists():
        files["metrics_warmstart.jsonl"] = sft_log
    save_model(whole, tokenizer, done, extra={"eval_warmstart.json": result}, copy_files=files)
    shutil.rmtree(work / "warmstart.work", ignore_errors=True)
    rounds.finish(work / "traces.jsonl")  # the final student folder carries them too
    world.barrier()
    return traces, result


def sft_in_rounds(trainer: SFTTrainer, rounds: TraceRounds, stop, sources, world: World, log) -> int:
    """The warm start's SFT, round by round: up to the next round's first step, and while the target is missed
    there, that round's traces (sampled once by rank 0) join the pairs. Returns the SFT steps done."""
    trainer.set_pairs(rounds.pairs_at(trainer.start_step))  # a resumed run trains on the rounds begun by then
    while True:
        boundary = rounds.boundary_after(trainer.start_step)
        done = trainer.run(on_step=stop, until=boundary)
        if getattr(stop, "reached", False) or boundary is None or done >= trainer.cfg.steps:
            return done
        if world.main and not rounds.begins_at(done):  # a round is sampled once, even across a crash
            rounds.add(*sources, done, log)
        world.barrier()
        trainer.set_pairs(rounds.pairs_at(done))


def target_outcome(cfg: WarmStartConfig, sft_rows: list[dict], sft_steps: int, rounds: list[dict]) -> dict | None:
    """Whether the warm start reached its target (`warmstart.stop`), at which step, its best check, and what the
    stage did about it, from the checks in the SFT log; None without a target."""
    stop = cfg.stop
    if stop is None:
        return None
    checks = [(r["step"], r["val_check_accuracy"]) for r in sft_rows if "val_check_accuracy" in r]
    reached = [step for step, value in checks if value >= stop.val_accuracy]
    best_step, best = max(checks, key=lambda check: (check[1], -check[0])) if checks else (None, None)
    last = checks[-1][1] if checks else None
    added = "".join(f"; {r['traces']} more traces of harder questions from step {r['step']}" for r in rounds[1:])
    if reached:
        summary = (
            f"target {stop.val_accuracy:.0%} reached at SFT step {reached[0]} ({checks[-1][1]:.1%}){added}; "
            "SFT stopped there"
        )
    elif checks:
        summary = (
            f"target {stop.val_accuracy:.0%} NOT reached in {sft_steps} SFT steps (best {best:.1%} at step "
            f"{best_step}, last {last:.1%}){added}; RL starts from the last step"
        )
    else:
        summary = f"target {stop.val_accuracy:.0%} never checked ({sft_steps} SFT steps, check every {stop.every})"
    return {
        "val_accuracy": stop.val_accuracy,
        "reached": bool(reached),
        "step": reached[0] if reached else None,
        "best": best,
        "best_step": best_step,
        "last": last,
        "checks": len(checks),
        "rounds": len(rounds),
        "summary": summary,
    }


def load_models(cfg: DistillConfig, layout: RunLayout):
    """(frozen teacher, initial student, tokenizer) on the configured device and thread count."""
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    teacher, teacher_tok = load_causal_lm(layout.teacher)
    teacher.to(device).eval().requires_grad_(False)
    student, tokenizer = init_student(cfg, teacher, teacher_tok, device)
    return teacher, student, tokenizer


def run_distill(cfg: DistillConfig, run_dir: str | Path, log=print) -> DistillResult:
    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_distill(cfg, run_dir, log)
    world = world_from_env()
    layout = RunLayout(run_dir)
    timings = {}
    t0 = time.perf_counter()
    teacher, student, tokenizer = load_models(cfg, layout)
    if cfg.fsdp:
        student = shard(student, world)
    train = distill_records(layout, "train")
    traces, eval_warm = run_warmstart(
        cfg, student, teacher, tokenizer, train, layout, log if world.main else _quiet, world
    )
    timings["warmstart"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    trainer = RLTrainer(
        student,
        teacher,
        tokenizer,
        rl_records(cfg, train),
        traces,
        cfg.method,
        cfg.loss,
        cfg.rl,
        layout.student_work,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        teacher_scorer=make_scorer(cfg.teacher_scorer, teacher, cfg.method, tokenizer),
        world=world,
        flops_before=eval_warm.get("flops", {}).get("total", 0),
    )
    if trainer.resume():
        log(f"[distill] resumed from checkpoint step {trainer.start_step}")
    try:
        trainer.run(on_step=val_evaluation(cfg, student, tokenizer, layout), after_step=fault_injection(cfg))
    finally:
        getattr(trainer.teacher_scorer, "close", lambda: None)()  # a llama.cpp teacher frees its model now
    timings["rl"] = time.perf_counter() - t1
    student = plain_copy(student)  # a sharded student gathered on rank 0 (every rank takes part)
    if not world.main:  # rank 0 evaluates and writes the student
        return DistillResult(layout.student, {}, eval_warm, timings)

    result = evaluate_model(student, tokenizer, distill_records(layout, "test"), cfg.eval)
    result.update(method=cfg.method, parameters=count_parameters(student), teacher_parameters=count_parameters(teacher))
    work = layout.student_work
    result["flops"] = stage_flops(eval_warm, work / "metrics.jsonl", result["eval_flops"])
    log(format_eval(f"student ({cfg.method})", result))
    logs = {
        name: work / path
        for name, path in (
            ("metrics.jsonl", "metrics.jsonl"),
            ("traces.jsonl", "traces.jsonl"),
            ("metrics_warmstart.jsonl", "warmstart/metrics_warmstart.jsonl"),
            ("checkpoints", "checkpoints"),
        )
        if (work / path).exists()
    }
    save_model(
        student.cpu(),
        tokenizer,
        layout.student,
        extra={"eval.json": result, "eval_warmstart.json": eval_warm},
        copy_files=logs,
    )
    shutil.rmtree(work, ignore_errors=True)
    timings["total"] = time.perf_counter() - t0
    return DistillResult(layout.student, result, eval_warm, timings)


def stage_flops(eval_warm: dict, rl_metrics: Path, test_eval_flops: int) -> dict[str, int]:
    """The distill stage's compute ledger: the warm start's phases, every RL step's, and the final evaluation."""
    rows = read_jsonl(rl_metrics) if rl_metrics.exists() else []
    rl = {
        phase: sum(row.get(f"flops_{phase}", 0) for row in rows)
        for phase in ("student_sample", "teacher_score", "student_update", "eval")
    }
    warm = {k: v for k, v in eval_warm.get("flops", {}).items() if k != "total"}
    return with_total(merge(warm, rl, {"eval": test_eval_flops}))


def rl_records(cfg: DistillConfig, train: list[dict]) -> list[dict]:
    """The questions RL draws from: with `rl.prompts=unseen`, those after the warm start's `n_prompts`."""
    unseen = train[cfg.warmstart.n_prompts :]
    return unseen if cfg.rl.prompts == "unseen" and len(unseen) >= cfg.rl.prompts_per_step else train


def prepare_warmstart(cfg: DistillConfig, run_dir: str | Path, log=print) -> Path:
    """Only the warm start (teacher traces, SFT, evaluation) into `student.work/warmstart/`; returns that folder.
    A comparison makes it once and starts every method from it."""
    layout = RunLayout(run_dir)
    teacher, student, tokenizer = load_models(cfg, layout)
    run_warmstart(cfg, student, teacher, tokenizer, distill_records(layout, "train"), layout, log)
    return layout.student_work / "warmstart"


def val_evaluation(cfg: DistillConfig, student, tokenizer, layout: RunLayout):
    """An `on_step` hook: val-split accuracy every `eval_every` RL steps, into that step's metrics row."""
    if not cfg.eval_every:
        return None
    val_cfg = cfg.eval.model_copy(update={"n_problems": cfg.val_problems})
    records = distill_records(layout, "val")

    def hook(step: int, row: dict) -> None:
        if step % cfg.eval_every == 0:
            val = evaluate_model(student, tokenizer, records, val_cfg)
            row.update({f"val_{k}": v for k, v in val.items() if k.endswith(("accuracy", "stderr"))})
            row["flops_eval"] = val["eval_flops"]

    return hook


def warmstart_stop(cfg: DistillConfig, student, tokenizer, layout: RunLayout, log):
    """An SFT `on_step` hook for `warmstart.stop`: every `stop.every` steps, greedy accuracy on the qualifying val
    questions into the metrics row (`val_check_accuracy`); True (stop) once it reaches `stop.val_accuracy`. Greedy
    and deterministic, so every torchrun rank takes the same decision."""
    stop = cfg.warmstart.stop
    if stop is None:
        return None
    records = distill_records(layout, "val")
    if stop.min_difficulty is not None and has_difficulty(records):
        records = [r for r in records if r.get("ops") is not None and r["ops"] >= stop.min_difficulty]
    if not records:
        where = f" with at least {stop.min_difficulty} operations (`ops`)" if stop.min_difficulty else ""
        raise ValueError(f"distill.warmstart.stop: {layout.split('val')} has no questions{where} to check")
    check = cfg.eval.model_copy(update={"n_problems": stop.problems, "k_samples": 0, "per_problem": False})

    def hook(step: int, row: dict) -> bool:
        if step % stop.every:
            return False
        result = evaluate_model(student, tokenizer, records, check)
        accuracy = result["greedy_accuracy"]
        row.update(val_check_accuracy=accuracy, flops_eval=result.get("eval_flops", 0))
        log(f"[warmstart] step {step}: val accuracy {accuracy:.3f} (target {stop.val_accuracy})")
        hook.reached = accuracy >= stop.val_accuracy
        return hook.reached

    hook.reached = False
    return hook


def fault_injection(cfg: DistillConfig):
    """An `after_step` hook that crashes after step `fail_after_step` (tests of crash and resume)."""

    def hook(step: int) -> None:
        if cfg.fail_after_step is not None and step == cfg.fail_after_step:
            raise InjectedFault(f"fault injected after RL step {step} (distill.fail_after_step)")

    return hook


def _quiet(*_args) -> None:
    pass


def launch_distill(cfg: DistillConfig, run_dir: str | Path, log=print) -> DistillResult:
    """`distill.nproc` > 1: the stage again in `nproc` processes under torchrun on this machine (data parallel RL,
    one GPU each where there are GPUs); rank 0 writes the student. Returns what rank 0 wrote."""
    layout = RunLayout(run_dir)
    t0 = time.perf_counter()
    spec = layout.student_work / "torchrun-config.json"
    launch_torchrun("distill", "rakd.distill", cfg, spec, layout.root, cfg.nproc, cfg.threads, log)
    read = json.loads
    return DistillResult(
        layout.student,
        read((layout.student / "eval.json").read_text()),
        read((layout.student / "eval_warmstart.json").read_text()),
        {"total": time.perf_counter() - t0},
    )


if __name__ == "__main__":  # a torchrun worker: python -m rakd.distill CONFIG_JSON RUN_DIR
    run_distill(DistillConfig.model_validate_json(Path(sys.argv[1]).read_text()), sys.argv[2])
    leave_world()  # only after success: on a failure torchrun ends the other workers
