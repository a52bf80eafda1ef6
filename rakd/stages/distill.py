"""The distill stage: warm-start the student on the teacher's verified traces, then RL-aware distillation.

The warm start (rakd.stages.warmstart) gives RL a student at the edge of its competence; RL then trains it with the
configured method (rakd.train.rl) from the teacher's log-probabilities (rakd.scorers).

Writes `student/` (HF folder), `student/checkpoints/step-N/`, `student/metrics.jsonl`,
`student/eval.json`, `student/eval_warmstart.json`, `student/seconds.json` (wall times), `student/traces.jsonl`.
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

from rakd.evaluate import eval_row, evaluate_model
from rakd.flops import merge, with_total
from rakd.io import fingerprint, read_jsonl
from rakd.keys import claim_work, mark_work, work_key
from rakd.layout import (
    EVAL,
    EVAL_WARMSTART,
    LAYERS,
    METRICS,
    METRICS_BASE,
    METRICS_WARMSTART,
    SECONDS,
    TRACES,
    RunLayout,
)
from rakd.models.load import save_model
from rakd.models.zoo import count_parameters
from rakd.schema import ConfigError, Summary, key_dump
from rakd.scorers import make_scorer
from rakd.stages.config import DistillConfig
from rakd.stages.rl_lr import run_lr_sweep
from rakd.stages.warmstart import distill_records, load_models, run_warmstart, stage_precision, val_greedy
from rakd.tables import pct
from rakd.train.distributed import launch_torchrun, leave_world, plain_copy, shard, world_from_env
from rakd.train.rl import RLTrainer


@dataclass(frozen=True)
class DistillResult:
    student_dir: Path
    eval: dict
    eval_warmstart: dict
    seconds: dict


class InjectedFault(RuntimeError):
    """Raised by `fail_after_step` to test crash and resume."""


def run_distill(cfg: DistillConfig, run_dir: str | Path, log=print) -> DistillResult:
    layout, launching = RunLayout(run_dir), "WORLD_SIZE" not in os.environ
    if launching:  # not a torchrun rank: checkpoints of another config are set aside
        claim_work(layout.student_work, work_key(cfg), keep={"warmstart": warmstart_work_key(cfg)}, log=log)
    if cfg.nproc > 1 and launching:
        return launch_distill(cfg, run_dir, log)
    world = world_from_env()
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
    if world.main and layout.warmstart.is_dir():
        mark_work(layout.warmstart, warmstart_work_key(cfg))  # kept by a later config that changes only RL

    t1 = time.perf_counter()
    precision = stage_precision(cfg, student)  # resolved once: sampling, scoring, the update and every evaluation
    scorer = make_scorer(cfg.teacher_scorer, teacher, cfg.method, tokenizer)

    def make_trainer(lr: float, out_dir: Path) -> RLTrainer:
        rl = cfg.rl.model_copy(update={"optim": cfg.rl.optim.model_copy(update={"lr": lr})})
        return RLTrainer(
            student,
            teacher,
            tokenizer,
            rl_records(cfg, train),
            traces,
            cfg.method,
            cfg.loss,
            rl,
            out_dir,
            seed=cfg.seed,
            checkpoint_every=cfg.checkpoint_every,
            teacher_scorer=scorer,
            world=world,
            flops_before=eval_warm.get("flops", {}).get("total", 0),
            precision=precision,
        )

    readouts: list[dict] = []

    def run_trainer(trainer: RLTrainer) -> None:
        trainer.run(
            on_step=val_evaluation(cfg, student, tokenizer, layout, precision),
            after_step=fault_injection(cfg),
            on_readout=test_readout(cfg, student, tokenizer, layout, readouts, precision) if world.main else _quiet,
        )

    work = layout.student_work
    sweep = None
    try:
        if cfg.rl_lr is None:
            trainer = make_trainer(cfg.rl.optim.lr, work)
            if trainer.resume():
                log(f"[distill] resumed from checkpoint step {trainer.start_step}")
            run_trainer(trainer)
        else:
            sweep = run_lr_sweep(cfg, student, tokenizer, layout, precision, make_trainer, run_trainer, log)
    finally:
        getattr(scorer, "close", lambda: None)()  # a llama.cpp teacher frees its model now
    timings["rl"] = time.perf_counter() - t1
    student = plain_copy(student)  # a sharded student gathered on rank 0 (every rank takes part)
    if not world.main:  # rank 0 evaluates and writes the student
        return DistillResult(layout.student, {}, eval_warm, timings)

    evaluated = evaluate_model(student, tokenizer, distill_records(layout, "test"), cfg.eval, precision)
    result = evaluated.as_json() | {
        "method": cfg.method,
        "parameters": count_parameters(student),
        "teacher_parameters": count_parameters(teacher),
        "precision": precision,
    }
    kept = chosen_folder(sweep) if sweep else None
    rl_dir = work if sweep is None else work / kept if kept else None  # None: the warm start kept, no RL log
    rows = read_jsonl(rl_dir / METRICS) if rl_dir and (rl_dir / METRICS).exists() else []
    if sweep is None:
        result["flops"] = stage_flops(eval_warm, rows, result["eval_flops"])
    else:  # every candidate's RL steps and val readings are the stage's compute too
        result["flops"], result["rl_lr"] = sweep_flops(eval_warm, work, sweep, result["eval_flops"]), sweep
    result["steps"] = len(rows)
    if rows and "groups_drawn" in rows[0]:
        result["rl_pool"] = rl_pool(rows[0], cfg.rl.group_size)
        result["advice"] = advise(result["rl_pool"], eval_warm, teacher, student)
    if cfg.eval_every and rows:  # the student as written: the last check's val when it is the last step's
        result["val_greedy_accuracy"] = rows[-1].get("val_greedy_accuracy")
        if result["val_greedy_accuracy"] is None:
            result.update(final_val(cfg, student, tokenizer, layout, precision))
    if readouts:  # the student read out earlier in the same run (rl.readout_steps): the budget's, or the steps'
        result["readouts"] = readouts
    if (layout.student_work / LAYERS).is_file():  # a pruned student: its layers, the rule and every candidate
        result["layers"] = json.loads((layout.student_work / LAYERS).read_text())
    log(evaluated.line(f"student ({cfg.method})"))
    logs = {
        name: path
        for name, path in (
            (METRICS, rl_dir and rl_dir / METRICS),
            (TRACES, work / TRACES),
            (METRICS_WARMSTART, work / "warmstart" / METRICS_WARMSTART),
            (METRICS_BASE, work / "warmstart" / METRICS_BASE),
            ("checkpoints", rl_dir and rl_dir / "checkpoints"),
        )
        if path and path.exists()
    }
    save_model(
        student.cpu(),
        tokenizer,
        layout.student,
        # wall seconds apart from eval.json, whose numbers are deterministic: torchrun's launcher reads them back
        extra={EVAL: result, EVAL_WARMSTART: eval_warm, SECONDS: timings},
        copy_files=logs,
    )
    shutil.rmtree(work, ignore_errors=True)
    timings["total"] = time.perf_counter() - t0
    return DistillResult(layout.student, result, eval_warm, timings)


def warmstart_work_key(cfg: DistillConfig) -> str:
    """The key of a finished warm start in `student.work/warmstart/`: what it depends on (the student, the warm
    start's config, its evaluation, the seed, the precision), so a config that changes only RL keeps it."""
    dump = key_dump(cfg)
    return fingerprint({k: dump[k] for k in ("student", "warmstart", "eval", "seed", "precision")})


def stage_flops(eval_warm: dict, rows: list[dict], test_eval_flops: int) -> dict[str, int]:
    """The distill stage's compute ledger: the warm start's phases, every RL step's (its metrics `rows`), and the
    final evaluation."""
    rl = {
        phase: sum(row.get(f"flops_{phase}", 0) for row in rows)
        for phase in ("teacher_generate", "student_sample", "teacher_score", "student_update", "eval")
    }
    warm = {k: v for k, v in eval_warm.get("flops", {}).items() if k != "total"}
    return with_total(merge(warm, rl, {"eval": test_eval_flops}))


def chosen_folder(sweep: dict) -> str | None:
    """The work subfolder of the rate `distill.rl_lr` kept (None: the warm-started student was kept)."""
    return next((c["folder"] for c in sweep["candidates"] if c["lr"] == sweep["chosen"]), None)


def sweep_flops(eval_warm: dict, work: Path, sweep: dict, test_eval_flops: int) -> dict[str, int]:
    """The ledger of a stage that chose RL's rate on val: every candidate's RL steps and val readings."""
    rows = [row for c in sweep["candidates"] if c["folder"] for row in read_jsonl(work / c["folder"] / METRICS)]
    return stage_flops(eval_warm, rows, test_eval_flops + sum(c["eval_flops"] for c in sweep["candidates"]))


def rl_pool(first: dict, group_size: int) -> dict:
    """How the warm-started student fares on its RL pool, read off RL step 1's samples (drawn before any update,
    every dynamic-sampling draw included): its pass rate, the samples it is over, and the share of groups with mixed
    rewards (the only ones an advantage-based method learns from)."""
    return {
        "pass_rate": first["accuracy"],
        "samples": first["groups_drawn"] * group_size,
        "informative_groups": first["informative_frac"],
    }


def advise(pool: dict, eval_warm: dict, teacher, student) -> dict:
    """The method the rule of rakd.stages.advice recommends for this student, from its RL pool's pass rate, the
    teacher:student ratio of non-embedding parameters and whether its warm start was stopped by a target it reached
    (SFT ended before its plateau; a target missed runs SFT to its last step)."""
    from rakd.flops import ModelDims
    from rakd.stages.advice import recommend

    target = eval_warm.get("target") or {}
    before_plateau = target.get("val_accuracy") is not None and bool(target.get("reached"))
    ratio = ModelDims.of(teacher).params / ModelDims.of(student).params if teacher is not None else None
    return {**recommend(pool["pass_rate"], ratio, before_plateau=before_plateau).as_dict(), "ratio": ratio}


def rl_records(cfg: DistillConfig, train: list[dict]) -> list[dict]:
    """The questions RL draws from: with `rl.prompts=unseen`, those after the warm start's `n_prompts` (refused when
    they are fewer than one step's prompts: RL would otherwise draw from what the warm start trained on)."""
    if cfg.rl.prompts != "unseen":
        return train
    unseen = train[cfg.warmstart.n_prompts :]
    if len(unseen) < cfg.rl.prompts_per_step:
        raise ConfigError(
            f"distill.rl.prompts: unseen: the train split has {len(train)} questions, {len(unseen)} of them after the "
            f"warm start's distill.warmstart.n_prompts={cfg.warmstart.n_prompts}, fewer than one step's "
            f"distill.rl.prompts_per_step={cfg.rl.prompts_per_step}; lower n_prompts or prompts_per_step, make more "
            "train questions, or set distill.rl.prompts=all to let RL reuse the warm start's questions"
        )
    return unseen


def val_evaluation(cfg: DistillConfig, student, tokenizer, layout: RunLayout, precision: str):
    """An `on_step` hook: val-split accuracy every `eval_every` RL steps, into that step's metrics row."""
    if not cfg.eval_every:
        return None
    val_cfg = cfg.eval.model_copy(update={"n_problems": cfg.val_problems})
    records = distill_records(layout, "val")

    def hook(step: int, row: dict) -> None:
        if step % cfg.eval_every == 0:
            val = evaluate_model(student, tokenizer, records, val_cfg, precision)
            row.update({f"val_{k}": v for k, v in val.as_json().items() if k.endswith(("accuracy", "stderr"))})
            row["flops_eval"] = val.eval_flops

    return hook


def test_readout(cfg: DistillConfig, student, tokenizer, layout: RunLayout, readouts: list[dict], precision: str):
    """An `on_readout` hook: the test split's greedy accuracy, per problem, and the val split's greedy accuracy (what
    a choice between runs may read) of the student after `steps` RL steps (where its budget ran out, or at
    `rl.readout_steps`), appended to `readouts`."""
    test_cfg = cfg.eval.model_copy(update={"k_samples": 0, "per_problem": True})
    records = distill_records(layout, "test")

    def hook(steps: int, reason: str) -> None:
        result = evaluate_model(student, tokenizer, records, test_cfg, precision)
        val = final_val(cfg, student, tokenizer, layout, precision)
        readouts.append({"steps": steps, "at": reason, **result.reading(), **val})

    return hook


def final_val(cfg: DistillConfig, student, tokenizer, layout: RunLayout, precision: str) -> dict:
    """The val split's greedy accuracy on `val_problems` problems, as the `eval_every` checks read it."""
    return {
        "val_greedy_accuracy": val_greedy(cfg, student, tokenizer, layout, precision, cfg.val_problems).greedy_accuracy
    }


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
    launch_torchrun("distill", "rakd.stages.distill", cfg, spec, layout.root, cfg.nproc, cfg.threads, log)
    result = json.loads((layout.student / EVAL).read_text())
    seconds = {**json.loads((layout.student / SECONDS).read_text()), "total": time.perf_counter() - t0}
    return DistillResult(layout.student, result, json.loads((layout.student / EVAL_WARMSTART).read_text()), seconds)


# ---------------------------------------------------------------- the stage contract (pipeline.registry)
# (section config, RunLayout) -> summary, a small JSON dict read back from the outputs, so that a run that just
# finished and outputs current under their key give the same summary; the stage's own summary rows.


def done_file(layout: RunLayout) -> Path:
    return layout.student / EVAL


def run_stage(cfg: DistillConfig, layout: RunLayout) -> Summary:
    run_distill(cfg, layout.root)
    return read_stage(cfg, layout)


def read_stage(cfg: DistillConfig, layout: RunLayout) -> Summary:
    keep = ("step", "reward_mean", "val_greedy_accuracy", "val_sampled_accuracy")
    metrics = layout.student / METRICS  # absent when rl.steps is 0 (the warm start alone)
    by_step = [
        {k: row[k] for k in keep if k in row}
        for row in (read_jsonl(metrics) if metrics.exists() else [])
        if "val_greedy_accuracy" in row
    ]
    return {
        "path": str(layout.student),
        "eval": json.loads((layout.student / EVAL).read_text()),
        "eval_warmstart": json.loads((layout.student / EVAL_WARMSTART).read_text()),
        "val_by_step": by_step,
    }


def stage_rows(summary: Summary) -> list[dict]:
    """The warm start and the distilled student on the test split, and the val checks between."""
    rows = [eval_row("warm start (test)", summary["eval_warmstart"])]
    rows += [
        {
            "model": f"RL step {r['step']} (val)",
            "greedy": pct(r.get("val_greedy_accuracy")),
            "sampled": pct(r.get("val_sampled_accuracy")),
        }
        for r in summary["val_by_step"]
    ]
    sweep = summary["eval"].get("rl_lr")
    for c in sweep["candidates"] if sweep else []:  # RL's learning rate chosen on val
        what = "warm start, no RL" if c["lr"] is None else f"RL lr {c['lr']:g}, {c['steps']} steps"
        chosen = " (kept)" if c["lr"] == sweep["chosen"] else ""
        rows.append({"model": f"{what} (val){chosen}", "greedy": pct(c["val_greedy_accuracy"]), "sampled": pct(None)})
    return rows + [eval_row(f"{summary['eval'].get('method', 'distilled')} (test)", summary["eval"])]


if __name__ == "__main__":  # a torchrun worker: python -m rakd.stages.distill CONFIG_JSON RUN_DIR
    run_distill(DistillConfig.model_validate_json(Path(sys.argv[1]).read_text()), sys.argv[2])
    leave_world()  # only after success: on a failure torchrun ends the other workers
