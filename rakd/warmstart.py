"""The warm start: the teacher's verified traces (rakd.traces), SFT until the student reaches its target, and the
warm-start evaluation; plus the distill stage's inputs (its data and its models), which the comparison uses too.

`distill_records` is the only reader of the data: the student sees questions and final answers only, as real RL
datasets give them; every reasoning trace it learns from comes from the teacher. Work in progress lives in
`student.work/`: the traces of each round (`traces.pending.jsonl`, `traces.rounds.json`), the SFT checkpoints
(`warmstart.work/`), and once done the warm-started student (`warmstart/`), so a crash resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rakd.evaluate import evaluate_model, format_eval
from rakd.flops import merge, with_total
from rakd.io import read_jsonl
from rakd.layout import RunLayout
from rakd.models.load import ModelLoadError, load_causal_lm, save_model
from rakd.models.subset import layer_subset
from rakd.models.zoo import build_model, preset_config
from rakd.prompt import completion_text
from rakd.stage_config import DistillConfig, WarmStartConfig
from rakd.traces import TraceRounds, has_difficulty
from rakd.train.common import pick_device, set_threads
from rakd.train.distributed import World, load_full_state_dict, plain_copy
from rakd.train.sft import SFTTrainer


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


def load_models(cfg: DistillConfig, layout: RunLayout):
    """(frozen teacher, initial student, tokenizer) on the configured device and thread count."""
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    teacher, teacher_tok = load_causal_lm(layout.teacher)
    teacher.to(device).eval().requires_grad_(False)
    student, tokenizer = init_student(cfg, teacher, teacher_tok, device)
    return teacher, student, tokenizer


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
    if cfg.warmstart.base is not None:
        train_base(cfg, student, tokenizer, train, work, world)
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
    sft_log, base_log = work / "warmstart.work/metrics.jsonl", work / "base.work/metrics.jsonl"
    sft_rows = read_jsonl(sft_log) if sft_log.exists() else []
    base_rows = read_jsonl(base_log) if base_log.exists() else []
    result["sft_steps"] = done_steps
    result["rounds"] = rounds.rounds()
    result["target"] = target_outcome(cfg.warmstart, sft_rows, done_steps, result["rounds"])
    result["flops"] = with_total(
        merge(
            {"teacher_generate": rounds.teacher_generate_flops()},
            {"student_sft": sum(r.get("flops", 0) for r in sft_rows + base_rows)},
            {"eval": sum(r.get("flops_eval", 0) for r in sft_rows) + result["eval_flops"]},
        )
    )
    if result["target"]:
        log(f"[warmstart] {result['target']['summary']}")
    log(format_eval("student (warm start)", result))
    files = {"traces.jsonl": rounds.pending}
    if sft_log.exists():
        files["metrics_warmstart.jsonl"] = sft_log
    if base_log.exists():
        files["metrics_base.jsonl"] = base_log
    save_model(whole, tokenizer, done, extra={"eval_warmstart.json": result}, copy_files=files)
    shutil.rmtree(work / "warmstart.work", ignore_errors=True)
    shutil.rmtree(work / "base.work", ignore_errors=True)
    rounds.finish(work / "traces.jsonl")  # the final student folder carries them too
    world.barrier()
    return traces, result


def train_base(cfg: DistillConfig, student, tokenizer, train: list[dict], work: Path, world: World) -> None:
    """`warmstart.base`: SFT on (question, `A: <answer>`) of every train question, no worked solutions (what the
    distill stage may see), checkpointed in `base.work/` so that a crash resumes there."""
    pairs = [(r["question"], completion_text(f"A: {r['answer']}")) for r in train]
    trainer = SFTTrainer(
        student, tokenizer, pairs, cfg.warmstart.base, work / "base.work", seed=cfg.seed, name="base", world=world
    )
    trainer.resume()
    trainer.run()


def sft_in_rounds(trainer: SFTTrainer, rounds: TraceRounds, stop, sources, world: World, log) -> int:
    """The warm start's SFT, round by round: up to the next round's first step, and while the target is missed
    there, that round's traces (sampled once by rank 0) join the pairs. Returns the SFT steps done."""
    trainer.set_pairs(rounds.pairs_at(trainer.start_step))  # a resumed run trains on the rounds begun by then
    while True:
        boundary = rounds.boundary_after(trainer.start_step)
        done = trainer.run(on_step=stop, until=boundary)
        if getattr(stop, "stopped", False) or boundary is None or done >= trainer.cfg.steps:
            return done
        if world.main and not rounds.begins_at(done):  # a round is sampled once, even across a crash
            rounds.add(*sources, done, log)
        world.barrier()
        trainer.set_pairs(rounds.pairs_at(done))


def target_outcome(cfg: WarmStartConfig, sft_rows: list[dict], sft_steps: int, rounds: list[dict]) -> dict | None:
    """Whether the warm start reached its target (`warmstart.stop`) or its plateau, at which step, its best check,
    and what the stage did about it, from the checks in the SFT log; None without a stop."""
    stop = cfg.stop
    if stop is None:
        return None
    checks = [(r["step"], r["val_check_accuracy"]) for r in sft_rows if "val_check_accuracy" in r]
    target = stop.val_accuracy
    reached = [step for step, value in checks if target is not None and value >= target]
    plateau = next(
        (checks[i][0] for i in range(len(checks)) if plateaued([v for _, v in checks[: i + 1]], stop.patience)), None
    )
    best_step, best = max(checks, key=lambda check: (check[1], -check[0])) if checks else (None, None)
    last = checks[-1][1] if checks else None
    added = "".join(f"; {r['traces']} more traces of harder questions from step {r['step']}" for r in rounds[1:])
    goal = f"target {target:.0%}" if target is not None else "plateau"
    if reached:
        summary = f"{goal} reached at SFT step {reached[0]} ({checks[-1][1]:.1%}){added}; SFT stopped there"
    elif plateau is not None:
        summary = (
            f"plateau at SFT step {plateau}: no new best in {stop.patience} checks (best {best:.1%} at step "
            f"{best_step}){added}; SFT stopped there"
        )
    elif checks:
        summary = (
            f"{goal} NOT reached in {sft_steps} SFT steps (best {best:.1%} at step "
            f"{best_step}, last {last:.1%}){added}; RL starts from the last step"
        )
    else:
        summary = f"{goal} never checked ({sft_steps} SFT steps, check every {stop.every})"
    return {
        "val_accuracy": target,
        "reached": bool(reached) or (target is None and plateau is not None),
        "step": reached[0] if reached else plateau,
        "plateau_step": plateau,
        "best": best,
        "best_step": best_step,
        "last": last,
        "checks": len(checks),
        "rounds": len(rounds),
        "summary": summary,
    }


def plateaued(checks: list[float], patience: int | None) -> bool:
    """True when the last `patience` checks brought no new best over the ones before (early stopping)."""
    if patience is None or len(checks) <= patience:
        return False
    return max(checks[-patience:]) <= max(checks[:-patience])


def prepare_warmstart(cfg: DistillConfig, run_dir: str | Path, log=print) -> Path:
    """Only the warm start (teacher traces, SFT, evaluation) into `student.work/warmstart/`; returns that folder.
    A comparison makes it once and starts every method from it."""
    layout = RunLayout(run_dir)
    teacher, student, tokenizer = load_models(cfg, layout)
    run_warmstart(cfg, student, teacher, tokenizer, distill_records(layout, "train"), layout, log)
    return layout.student_work / "warmstart"


def warmstart_stop(cfg: DistillConfig, student, tokenizer, layout: RunLayout, log):
    """An SFT `on_step` hook for `warmstart.stop`: every `stop.every` steps, greedy accuracy on the qualifying val
    questions into the metrics row (`val_check_accuracy`); True (stop) once it reaches `stop.val_accuracy`, or once
    `stop.patience` checks in a row bring no new best (the plateau; a resumed run counts the checks it logged
    before). Greedy and deterministic, so every torchrun rank takes the same decision."""
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
    log_path = layout.student_work / "warmstart.work" / "metrics.jsonl"  # a resumed run's earlier checks
    rows = read_jsonl(log_path) if log_path.exists() else []
    earlier = [(r["step"], r["val_check_accuracy"]) for r in rows if "val_check_accuracy" in r]

    def hook(step: int, row: dict) -> bool:
        if step % stop.every:
            return False
        result = evaluate_model(student, tokenizer, records, check)
        accuracy = result["greedy_accuracy"]
        row.update(val_check_accuracy=accuracy, flops_eval=result.get("eval_flops", 0))
        log(f"[warmstart] step {step}: val accuracy {accuracy:.3f} (target {stop.val_accuracy})")
        hook.checks = [c for c in hook.checks if c[0] < step] + [(step, accuracy)]
        hook.reached = stop.val_accuracy is not None and accuracy >= stop.val_accuracy
        hook.stopped = hook.reached or plateaued([value for _, value in hook.checks], stop.patience)
        return hook.stopped

    hook.checks, hook.reached, hook.stopped = earlier, False, False
    return hook
