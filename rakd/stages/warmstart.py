"""The warm start: the teacher's verified traces (rakd.stages.traces), SFT until the student reaches its target, and the
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

from rakd.evaluate import evaluate_model
from rakd.flops import merge, with_total
from rakd.io import read_jsonl
from rakd.layout import EVAL_WARMSTART, LAYERS, METRICS, METRICS_BASE, METRICS_WARMSTART, TRACES, RunLayout
from rakd.models.load import ModelLoadError, load_causal_lm, save_model
from rakd.models.subset import keep_layers, layer_subset
from rakd.models.zoo import build_model, preset_config
from rakd.prompt import completion_text
from rakd.stages.config import DistillConfig, WarmStartConfig
from rakd.stages.stop import ValCheck, outcome, val_stop
from rakd.stages.traces import TraceRounds
from rakd.train.common import pick_device, resolve_precision, set_threads
from rakd.train.distributed import World, load_full_state_dict, plain_copy
from rakd.train.sft import SFTTrainer


def distill_records(layout: RunLayout, split: str) -> list[dict]:
    """Questions, final answers and (when the source has it) difficulty of a split; never the solutions."""
    keep = ("id", "question", "answer", "ops")
    return [{k: r[k] for k in keep if k in r} for r in read_jsonl(layout.split(split))]


def val_greedy(cfg, model, tokenizer, layout: RunLayout, precision: str, problems: int):
    """`model` on the first `problems` problems of the val split, greedy only (the evaluation's result)."""
    val_cfg = cfg.eval.model_copy(update={"n_problems": problems, "k_samples": 0})
    return evaluate_model(model, tokenizer, distill_records(layout, "val"), val_cfg, precision)


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


def calibration_rows(teacher, tokenizer, questions: list[str], max_new_tokens: int):
    """The teacher's greedy completions of `questions` as (ids, attention mask, read): `read` marks the positions
    that predict a completion token."""
    import torch

    from rakd.rollout import sample

    rows = sample(teacher, tokenizer, questions, max_new_tokens=max_new_tokens, temperature=0.0)
    ids = torch.cat([rows.prompt_ids, rows.completion_ids], dim=1)
    mask = torch.cat([rows.prompt_mask, rows.completion_mask], dim=1)
    read = torch.zeros_like(mask, dtype=torch.bool)
    start = rows.prompt_ids.shape[1] - 1
    read[:, start : start + rows.completion_ids.shape[1]] = rows.completion_mask.bool()
    device = next(teacher.parameters()).device
    return ids.to(device), mask.to(device), read.to(device)


def prune_record(cfg: DistillConfig, teacher, tokenizer, layout: RunLayout, log=print) -> dict:
    """How a `student.prune` student is cut from the teacher: its layers (given, or chosen by measurement on the
    teacher's completions of `calibration` train questions: rakd.models.prune) and, with `ffn`, each kept layer's
    feed-forward channels by activation importance, with `kv_heads` its key-value head groups (rakd.models.width).
    Written to `student.work/layers.json` once and read back by a resumed stage."""
    from rakd.io import atomic_write_json
    from rakd.models.prune import layer_choice
    from rakd.models.width import ffn_importance, kept_channels, kept_groups, kv_group_importance

    stored = layout.student_work / LAYERS
    if stored.is_file():
        return json.loads(stored.read_text())
    prune = cfg.student.prune
    record = {"chosen": {"rule": "given", "kept": list(prune.kept or [])}, "candidates": []}
    if prune.kept is None or prune.ffn is not None or prune.kv_heads is not None:
        questions = [r["question"] for r in distill_records(layout, "train")[: prune.calibration]]
        log(f"[distill] measuring the teacher on {len(questions)} calibration completions to prune it")
        rows = calibration_rows(teacher, tokenizer, questions, prune.max_new_tokens)
        if prune.kept is None:
            record = layer_choice(teacher, *rows, prune.layers, prune.by).as_json()
            for c in record["candidates"]:
                log(f"[distill]   {c['rule']:>15}: KL {c['kl']:.3f} nats/token, top-1 {c['top1']:.1%}: {c['kept']}")
            log(f"[distill] kept {record['chosen']['rule']}'s layers {record['chosen']['kept']}")
        if prune.ffn is not None:
            importance = ffn_importance(teacher, *rows)[record["chosen"]["kept"]]
            record["ffn_channels"] = kept_channels(importance, prune.ffn).tolist()
            log(f"[distill] kept {prune.ffn} of {importance.shape[1]} feed-forward channels a layer by importance")
        if prune.kv_heads is not None:
            importance = kv_group_importance(teacher, *rows)[record["chosen"]["kept"]]
            record["kv_groups"] = kept_groups(importance, prune.kv_heads).tolist()
            log(f"[distill] kept {prune.kv_heads} of {importance.shape[1]} key-value head groups a layer by importance")
    stored.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stored, record)
    return record


def pruned_student(cfg: DistillConfig, teacher, tokenizer, layout: RunLayout, log=print):
    """A trainable copy of the teacher cut as `prune_record` says."""
    import torch

    from rakd.models.width import prune_ffn, prune_kv_groups

    record = prune_record(cfg, teacher, tokenizer, layout, log)
    student = keep_layers(teacher, record["chosen"]["kept"])
    if record.get("ffn_channels"):
        prune_ffn(student, torch.tensor(record["ffn_channels"]))
    if record.get("kv_groups"):
        prune_kv_groups(student, torch.tensor(record["kv_groups"]))
    return student


def init_student(cfg: DistillConfig, teacher, teacher_tok, device, layout: RunLayout | None = None, log=print):
    if cfg.student.from_teacher_every_k:
        return layer_subset(teacher, cfg.student.from_teacher_every_k).to(device), teacher_tok
    if cfg.student.prune:
        if layout is None:
            raise ValueError("a pruned student's layers are chosen on the run's train split: pass its layout")
        return pruned_student(cfg, teacher, teacher_tok, layout, log).to(device), teacher_tok
    source = cfg.student.model
    if source.path is not None:
        student, tok = load_causal_lm(source.path, trust_remote_code=source.trust_remote_code)
        check_same_tokenizer(teacher_tok, tok)
        return student.to(device), tok
    return build_model(preset_config(source.preset, teacher_tok, **source.overrides), cfg.seed + 1).to(
        device
    ), teacher_tok


def stage_precision(cfg, model) -> str:
    """The stage's resolved precision (`fp32` or `bf16`) on the device its model lives on."""
    return resolve_precision(cfg.precision, next(model.parameters()).device)


def load_models(cfg: DistillConfig, layout: RunLayout):
    """(frozen teacher, initial student, tokenizer) on the configured device and thread count."""
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    teacher, teacher_tok = load_causal_lm(layout.teacher)
    teacher.to(device).eval().requires_grad_(False)
    student, tokenizer = init_student(cfg, teacher, teacher_tok, device, layout)
    return teacher, student, tokenizer


def run_warmstart(
    cfg, student, teacher, tokenizer, train, layout: RunLayout, log, world: World | None = None
) -> tuple[list[dict], dict]:
    """Traces, SFT and the warm-start evaluation; cached in `student.work/warmstart/` once done. Under torchrun
    rank 0 samples the traces (kept in `student.work/traces.pending.jsonl`, so a crash in SFT does not sample
    them again), every rank trains on its share of each SFT batch, and rank 0 evaluates and saves."""
    world = world or World()
    work, done = layout.student_work, layout.warmstart
    if (done / EVAL_WARMSTART).exists():
        load_full_state_dict(student, load_causal_lm(done)[0].state_dict())
        return read_jsonl(done / TRACES), json.loads((done / EVAL_WARMSTART).read_text())
    precision = stage_precision(cfg, student)
    stop = warmstart_stop(cfg, student, tokenizer, layout, log, precision)  # a bad `stop` fails before any sampling
    if cfg.warmstart.base is not None:
        train_base(cfg, student, tokenizer, train, layout.base_work, world, precision)
    rounds = TraceRounds(work, cfg.warmstart, cfg.seed, precision, teacher_dir=layout.teacher)
    if world.main and not rounds.rounds():
        rounds.add(train, teacher, tokenizer, 0, log)
    if world.main:
        rounds.keep_cached(train, next(teacher.parameters()).device)  # rounds sampled before the cache existed
    world.barrier()
    traces, done_steps = rounds.traces(), 0
    if traces and cfg.warmstart.sft.steps:
        trainer = SFTTrainer(
            student,
            tokenizer,
            rounds.pairs_at(0),
            cfg.warmstart.sft,
            layout.warmstart_work,
            seed=cfg.seed,
            name="warmstart",
            world=world,
            precision=precision,
            teacher=teacher if cfg.warmstart.kd is not None else None,
            kd=cfg.warmstart.kd,
        )
        trainer.resume()
        done_steps = sft_in_rounds(trainer, rounds, stop, (train, teacher, tokenizer), world, log)
        traces = rounds.traces()
    whole = plain_copy(student)  # a sharded student gathered on rank 0 (every rank takes part)
    if not world.main:
        world.barrier()  # rank 0 evaluates and saves; every rank holds the same weights already
        return traces, json.loads((done / EVAL_WARMSTART).read_text())
    evaluated = evaluate_model(whole, tokenizer, distill_records(layout, "test"), cfg.eval, precision)
    result = evaluated.as_json()
    sft_log, base_log = layout.warmstart_work / METRICS, layout.base_work / METRICS
    sft_rows = read_jsonl(sft_log) if sft_log.exists() else []
    base_rows = read_jsonl(base_log) if base_log.exists() else []
    result["sft_steps"] = done_steps
    result["precision"] = precision
    result["rounds"] = rounds.rounds()
    result["target"] = target_outcome(cfg.warmstart, sft_rows, done_steps, result["rounds"])
    result["flops"] = with_total(
        merge(
            {"teacher_generate": rounds.teacher_generate_flops()},
            {"teacher_score": scored} if (scored := sum(r.get("flops_teacher_score", 0) for r in sft_rows)) else {},
            {"student_sft": sum(r.get("flops", 0) for r in sft_rows + base_rows)},
            {"eval": sum(r.get("flops_eval", 0) for r in sft_rows) + result["eval_flops"]},
        )
    )
    if result["target"]:
        log(f"[warmstart] {result['target']['summary']}")
    log(evaluated.line("student (warm start)"))
    files = {TRACES: rounds.pending}
    if sft_log.exists():
        files[METRICS_WARMSTART] = sft_log
    if base_log.exists():
        files[METRICS_BASE] = base_log
    save_model(whole, tokenizer, done, extra={EVAL_WARMSTART: result}, copy_files=files)
    shutil.rmtree(layout.warmstart_work, ignore_errors=True)
    shutil.rmtree(layout.base_work, ignore_errors=True)
    rounds.finish(work / TRACES)  # the final student folder carries them too
    world.barrier()
    return traces, result


def train_base(
    cfg: DistillConfig, student, tokenizer, train: list[dict], work: Path, world: World, precision: str
) -> None:
    """`warmstart.base`: SFT on (question, `A: <answer>`) of every train question, no worked solutions (what the
    distill stage may see), checkpointed in `work` (RunLayout.base_work) so that a crash resumes there."""
    pairs = [(r["question"], completion_text(f"A: {r['answer']}")) for r in train]
    trainer = SFTTrainer(
        student,
        tokenizer,
        pairs,
        cfg.warmstart.base,
        work,
        seed=cfg.seed,
        name="base",
        world=world,
        precision=precision,
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
        if (stop is not None and stop.stopped) or boundary is None or done >= trainer.cfg.steps:
            return done
        if world.main and not rounds.begins_at(done):  # a round is sampled once, even across a crash
            rounds.add(*sources, done, log)
        world.barrier()
        trainer.set_pairs(rounds.pairs_at(done))


def target_outcome(cfg: WarmStartConfig, sft_rows: list[dict], sft_steps: int, rounds: list[dict]) -> dict | None:
    """Whether the warm start reached its target (`warmstart.stop`) or its plateau, at which step, its best check,
    and what the stage did about it (its rounds of traces), from the checks in the SFT log; None without a stop."""
    added = "".join(f"; {r['traces']} more traces of harder questions from step {r['step']}" for r in rounds[1:])
    result = outcome(cfg.stop, sft_rows, sft_steps, added)
    return None if result is None else {**result, "rounds": len(rounds)}


def prepare_warmstart(cfg: DistillConfig, run_dir: str | Path, log=print) -> Path:
    """Only the warm start (teacher traces, SFT, evaluation) into `student.work/warmstart/`; returns that folder.
    A comparison makes it once and starts every method from it."""
    layout = RunLayout(run_dir)
    teacher, student, tokenizer = load_models(cfg, layout)
    run_warmstart(cfg, student, teacher, tokenizer, distill_records(layout, "train"), layout, log)
    return layout.warmstart


def warmstart_stop(cfg: DistillConfig, student, tokenizer, layout: RunLayout, log, precision: str) -> ValCheck | None:
    """`warmstart.stop` on the val questions (never their solutions) of the run."""
    val = layout.split("val")
    return val_stop(
        cfg.warmstart.stop, distill_records(layout, "val"), f"distill.warmstart.stop: {val}",
        layout.warmstart_work / METRICS, "warmstart",
        model=student, tokenizer=tokenizer, eval_cfg=cfg.eval, log=log, precision=precision,
    )  # fmt: skip
