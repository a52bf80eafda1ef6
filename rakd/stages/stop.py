"""Ending an SFT at a val target or at its plateau (`ValStop`): the warm start's SFT and a pretrained teacher's
tuning on the task both stop this way.

`ValCheck` is an SFT `on_step` hook: every `stop.every` steps it measures greedy accuracy on the checked val
questions, writes it into the step's metrics row (`val_check_accuracy`, `flops_eval`), and returns True (stop) once
the accuracy reaches `stop.val_accuracy` or `stop.patience` checks in a row bring no new best. A resumed run counts
the checks it logged before. Greedy and deterministic, so every torchrun rank takes the same decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rakd.evaluate import evaluate_model
from rakd.io import read_jsonl
from rakd.schema import DataError
from rakd.stages.config import EvalConfig, ValStop


def check_records(records: list[dict], stop: ValStop, where: str) -> list[dict]:
    """The val questions a check reads: those with at least `stop.min_difficulty` operations where the source has
    a difficulty (`ops`), every one otherwise (GSM8K); `where` names the file in the error when none qualify."""
    if stop.min_difficulty is not None and any(r.get("ops") is not None for r in records):
        records = [r for r in records if r.get("ops") is not None and r["ops"] >= stop.min_difficulty]
    if not records:
        what = f" with at least {stop.min_difficulty} operations (`ops`)" if stop.min_difficulty else ""
        raise DataError(f"{where} has no questions{what} to check")
    return records


def plateaued(checks: list[float], patience: int | None) -> bool:
    """True when the last `patience` checks brought no new best over the ones before (early stopping)."""
    if patience is None or len(checks) <= patience:
        return False
    return max(checks[-patience:]) <= max(checks[:-patience])


@dataclass
class ValCheck:
    """The hook: `checks` holds (step, accuracy) of every check so far (a resumed run's earlier ones first);
    `reached` and `stopped` say why the last check ended the SFT, if it did."""

    stop: ValStop
    model: object
    tokenizer: object
    records: list[dict]
    eval_cfg: EvalConfig
    name: str
    log: Callable[[str], None] = print
    precision: str = "fp32"  # the SFT's resolved precision, which the checks decode under too
    checks: list[tuple[int, float]] = field(default_factory=list)
    reached: bool = False
    stopped: bool = False
    decay_from: int | None = None  # with stop.decay_steps: the step whose check found the plateau

    def lr_scale(self, step: int) -> float:
        """The learning rate's factor at 0-based SFT step `step` (the trainer reads it through its scheduler): 1
        until the plateau, then falling linearly to 0 over `stop.decay_steps` steps."""
        if self.decay_from is None:
            return 1.0
        return min(1.0, max(0.0, (self.decay_from + self.stop.decay_steps - step) / self.stop.decay_steps))

    def __post_init__(self):
        if not self.records:
            raise DataError(f"{self.name}: no val questions to check")
        self.eval_cfg = self.eval_cfg.model_copy(
            update={"n_problems": self.stop.problems, "k_samples": 0, "per_problem": False}
        )

    @classmethod
    def resuming(cls, metrics: Path, **kwargs) -> ValCheck:
        """A hook that resumes the checks an interrupted SFT logged in `metrics` (its metrics.jsonl, if there is
        one)."""
        rows = read_jsonl(metrics) if metrics.exists() else []
        checks = [(r["step"], r["val_check_accuracy"]) for r in rows if "val_check_accuracy" in r]
        hook = cls(checks=checks, **kwargs)
        hook.decay_from = plateau_step(checks, hook.stop.patience) if hook.stop.decay_steps else None
        return hook

    def __call__(self, step: int, row: dict) -> bool:
        decayed = self.decay_from is not None and step >= self.decay_from + self.stop.decay_steps
        if step % self.stop.every and not decayed:
            return False
        result = evaluate_model(self.model, self.tokenizer, self.records, self.eval_cfg, self.precision)
        accuracy = result.greedy_accuracy
        row.update(val_check_accuracy=accuracy, flops_eval=result.eval_flops)
        target = "" if self.stop.val_accuracy is None else f" (target {self.stop.val_accuracy})"
        self.log(f"[{self.name}] step {step}: val accuracy {accuracy:.3f}{target}")
        self.checks = [c for c in self.checks if c[0] < step] + [(step, accuracy)]
        if self.decay_from is not None:  # the checks of a decay only record; its last step ends the SFT
            self.stopped = decayed
            return self.stopped
        self.reached = self.stop.val_accuracy is not None and accuracy >= self.stop.val_accuracy
        plateau = plateaued([value for _, value in self.checks], self.stop.patience)
        if plateau and not self.reached and self.stop.decay_steps:
            self.decay_from = step
            self.log(f"[{self.name}] step {step}: plateau; the rate falls to 0 over {self.stop.decay_steps} steps")
            return False
        self.stopped = self.reached or plateau
        return self.stopped


def plateau_step(checks: list[tuple[int, float]], patience: int | None) -> int | None:
    """The step of the first check at which the checks so far had plateaued (None: they never had)."""
    values = [value for _, value in checks]
    return next((checks[i][0] for i in range(len(checks)) if plateaued(values[: i + 1], patience)), None)


def outcome(stop: ValStop | None, sft_rows: list[dict], sft_steps: int, added: str = "") -> dict | None:
    """Whether an SFT reached its target (`stop.val_accuracy`) or its plateau, at which step, its best check and
    a one-line summary, from the checks in its log; None without a stop. `added` is said after the best check (the
    warm start's extra rounds of traces)."""
    if stop is None:
        return None
    checks = [(r["step"], r["val_check_accuracy"]) for r in sft_rows if "val_check_accuracy" in r]
    target = stop.val_accuracy
    reached = [step for step, value in checks if target is not None and value >= target]
    plateau = plateau_step(checks, stop.patience)
    best_step, best = max(checks, key=lambda check: (check[1], -check[0])) if checks else (None, None)
    last = checks[-1][1] if checks else None
    goal = f"target {target:.0%}" if target is not None else "plateau"
    if reached:
        summary = f"{goal} reached at SFT step {reached[0]} ({checks[-1][1]:.1%}){added}; SFT stopped there"
    elif plateau is not None and stop.decay_steps:
        before = max(value for step, value in checks if step <= plateau)
        summary = (
            f"plateau at SFT step {plateau}: no new best in {stop.patience} checks (best {before:.1%}){added}; then "
            f"the learning rate fell to 0 over {stop.decay_steps} steps: {last:.1%} at step {checks[-1][0]}"
            + ("" if checks[-1][0] >= plateau + stop.decay_steps else f" (of {plateau + stop.decay_steps}: cut short)")
        )
    elif plateau is not None:
        summary = (
            f"plateau at SFT step {plateau}: no new best in {stop.patience} checks (best {best:.1%} at step "
            f"{best_step}){added}; SFT stopped there"
        )
    elif checks:
        summary = (
            f"{goal} NOT reached in {sft_steps} SFT steps (best {best:.1%} at step {best_step}, last {last:.1%})"
            f"{added}; SFT ended at its last step"
        )
    else:
        summary = f"{goal} never checked ({sft_steps} SFT steps, check every {stop.every})"
    return {
        "val_accuracy": target,
        "reached": bool(reached) or (target is None and plateau is not None),
        "step": reached[0] if reached else plateau,
        "plateau_step": plateau,
        "decay_steps": stop.decay_steps if plateau is not None else None,
        "best": best,
        "best_step": best_step,
        "last": last,
        "checks": len(checks),
        "summary": summary,
    }


def val_stop(
    stop: ValStop | None, records: list[dict], where: str, metrics: Path, name: str, **check
) -> ValCheck | None:
    """The SFT hook of a `stop` section on the qualifying val `records` (read from `where`), resuming the checks an
    interrupted SFT logged in `metrics`; None without a `stop`. `check`: the model, tokenizer, eval config, log
    and precision of the checks."""
    if stop is None:
        return None
    return ValCheck.resuming(metrics, stop=stop, records=check_records(records, stop, where), name=name, **check)
