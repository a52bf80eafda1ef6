"""RL's learning rate chosen on val (`distill.rl_lr`): one RL run per rate, each from the warm-started student, each
read on the same val problems, and the student kept the best of them and of the warm-started student itself.

Each rate's run lives in its own folder of the stage's work folder (`lr-<i>/`: checkpoints and metrics, so a crashed
run resumes inside the candidate it was in), and `rl_lr.json` there records every finished candidate (its rate,
steps, val accuracy, the FLOPs of reading it and its `eval_every` val curve, which outlives its folder), so a
resumed stage never runs a finished candidate again. The record goes into the student's `eval.json` (`rl_lr`), with
`chosen`: the rate kept, or null where no rate beat the warm start on val.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rakd.io import atomic_write_text
from rakd.layout import RunLayout
from rakd.stages.warmstart import val_greedy
from rakd.tables import pct

RECORD = "rl_lr.json"


def folder(index: int) -> str:
    """The work subfolder of the `index`-th rate's run."""
    return f"lr-{index}"


def choose(candidates: list[dict]) -> dict:
    """The candidate of best val greedy accuracy; ties go to the warm start (rate null), then to the smaller rate."""
    return max(candidates, key=lambda c: (c["val_greedy_accuracy"], -(c["lr"] or 0.0)))


def run_lr_sweep(
    cfg,
    student,
    tokenizer,
    layout: RunLayout,
    precision: str,
    make_trainer: Callable[[float, Path], object],
    run_trainer: Callable[[object], None],
    log=print,
) -> dict:
    """Run every rate of `cfg.rl_lr` not yet recorded (`make_trainer(lr, out_dir)` builds its trainer,
    `run_trainer` runs it), read each on val, and leave `student` holding the chosen candidate's weights. Returns
    the record, `chosen` set."""
    work = layout.student_work
    path = work / RECORD
    record = json.loads(path.read_text()) if path.exists() else {"problems": cfg.rl_lr.problems, "candidates": []}
    healed = {k: v.detach().clone() for k, v in student.state_dict().items()}

    def keep(entry: dict) -> None:
        what = "the warm start (no RL)" if entry["lr"] is None else f"RL at lr {entry['lr']:g}, {entry['steps']} steps"
        log(f"[distill] rl_lr: {what}: val {pct(entry['val_greedy_accuracy'])} on {cfg.rl_lr.problems} problems")
        record["candidates"].append(entry)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")

    def read_val() -> dict:
        val = val_greedy(cfg, student, tokenizer, layout, precision, cfg.rl_lr.problems)
        return {
            "val_greedy_accuracy": val.greedy_accuracy,
            "val_greedy_stderr": val.greedy_stderr,
            "eval_flops": val.eval_flops,
        }

    done = {c["lr"] for c in record["candidates"]}
    if None not in done:
        keep({"lr": None, "folder": None, "steps": 0, **read_val()})
    for index, lr in enumerate(cfg.rl_lr.lrs):
        if lr in done:
            continue
        student.load_state_dict(healed)
        out = work / folder(index)
        trainer = make_trainer(lr, out)
        if trainer.resume():
            log(f"[distill] rl_lr: lr {lr:g} resumed from checkpoint step {trainer.start_step}")
        run_trainer(trainer)
        rows = trainer.log.rows()
        curve = [[r["step"], r["val_greedy_accuracy"]] for r in rows if r.get("val_greedy_accuracy") is not None]
        keep({"lr": lr, "folder": folder(index), "steps": len(rows), **read_val(), "val_curve": curve})

    chosen = choose(record["candidates"])
    student.load_state_dict(healed)
    if chosen["lr"] is not None:
        make_trainer(chosen["lr"], work / chosen["folder"]).resume()  # its last checkpoint: the run's final weights
    record["chosen"] = chosen["lr"]
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    log(
        "[distill] rl_lr: kept "
        + ("the warm-started student: no rate beat it on val" if chosen["lr"] is None else f"lr {chosen['lr']:g}")
    )
    return record
