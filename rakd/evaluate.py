"""Accuracy of a model on held-out problems: greedy pass@1 and sampled accuracy.

RL moves sampled accuracy before greedy accuracy, so both are reported on the
same problems, each with its standard error. `evaluate_model` returns an `EvalResult`, the one shape of an
evaluation: a stage writes its `as_json()` (its `eval.json`, with the stage's own keys beside), and every table
or log line of one is its `row()`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rakd.flops import ModelDims, rollout_flops
from rakd.rollout import sample
from rakd.schema import GREEDY_READING, decode_answers, encode_answers
from rakd.stages.config import EvalConfig
from rakd.tables import pct
from rakd.train.common import autocast
from rakd.verify import extract_answer, reward, reward_flexible


@dataclass(frozen=True)
class Difficulty:
    """Accuracy on the problems of one number of operations."""

    n: int
    greedy_accuracy: float
    sampled_accuracy: float | None = None
    pass_at_k: float | None = None

    def as_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: greedy accuracy (with its standard error, the flexible reading and the share of outputs with
    no marked answer), sampled accuracy and pass@k when `k_samples` > 0, accuracy by difficulty, the compute it
    took, and each problem's greedy answer when asked for (`per_problem`)."""

    n: int
    greedy_accuracy: float
    greedy_stderr: float
    no_answer_rate: float
    greedy_accuracy_flexible: float  # the last number when no answer is marked (lm-eval's flexible-extract)
    mean_response_tokens: float
    k_samples: int
    eval_flops: int  # the compute ledger's `eval` (rakd.flops)
    by_difficulty: dict[str, Difficulty] = field(default_factory=dict)
    sampled_accuracy: float | None = None
    sampled_stderr: float | None = None
    pass_at_k: float | None = None
    pass_at_k_stderr: float | None = None
    greedy_correct: tuple[bool, ...] | None = None

    def as_json(self) -> dict:
        """The stored form (the keys of every eval.json): no None entries, answers as `encode_answers` writes."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "by_difficulty":
                value = {ops: entry.as_json() for ops, entry in value.items()}
            elif f.name == "greedy_correct":
                value = encode_answers(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> EvalResult:
        """The evaluation in a stored record; a stage's own keys beside it (flops, method, ...) are not its."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["by_difficulty"] = {ops: Difficulty(**entry) for ops, entry in data.get("by_difficulty", {}).items()}
        if values.get("greedy_correct") is not None:
            values["greedy_correct"] = decode_answers(values["greedy_correct"])
        return cls(**values)

    def reading(self) -> dict:
        """What a readout keeps of it (the distill stage's readouts, a comparison job's readings): greedy accuracy,
        its standard error and the stored per-problem answers."""
        return {k: v for k, v in self.as_json().items() if k in GREEDY_READING}

    def row(self, name: str, parameters: int | None = None) -> dict:
        """One row of an accuracy table: greedy and sampled accuracy with their standard errors."""
        sampled = self.sampled_accuracy is not None
        return {
            "model": name,
            "parameters": parameters,
            "greedy": f"{pct(self.greedy_accuracy)} ± {100 * self.greedy_stderr:.1f}",
            "sampled": f"{pct(self.sampled_accuracy)} ± {100 * self.sampled_stderr:.1f}" if sampled else "-",
            "n": self.n,
            "no answer": pct(self.no_answer_rate),
            "flexible": pct(self.greedy_accuracy_flexible),
        }

    def line(self, name: str) -> str:
        """The same row as one log line."""
        row = self.row(name)
        return (
            f"{name:<22} greedy {row['greedy']}   sampled {row['sampled']}   "
            f"(n={row['n']}, no answer {row['no answer']})"
        )


def eval_row(name: str, stored: Mapping) -> dict:
    """The table row of a stored evaluation (a stage's eval.json), with the model's parameters where it has them."""
    return EvalResult.from_json(stored).row(name, stored.get("parameters"))


def _stderr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    cfg: EvalConfig,
    precision: str = "fp32",
) -> EvalResult:
    """Greedy and sampled accuracy on `records[:cfg.n_problems]` with the project's verifier, decoding under the
    stage's resolved `precision` (bf16: autocast, rakd.train.common)."""
    with autocast(next(model.parameters()).device, precision):
        return _evaluate(model, tokenizer, records, cfg)


def _evaluate(model, tokenizer, records: list[dict], cfg: EvalConfig) -> EvalResult:
    records = records[: cfg.n_problems]
    n = len(records)
    questions, answers = [r["question"] for r in records], [r["answer"] for r in records]
    was_training = model.training
    model.eval()
    greedy = sample(
        model,
        tokenizer,
        questions,
        max_new_tokens=cfg.max_new_tokens,
        temperature=0.0,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress="eval greedy",
    )
    greedy_rewards = [reward(text, ans) for text, ans in zip(greedy.texts, answers)]
    flops = rollout_flops(ModelDims.of(model), greedy)
    sampled: dict = {}
    per_problem = solved = None
    if cfg.k_samples:
        drawn = sample(
            model,
            tokenizer,
            [q for q in questions for _ in range(cfg.k_samples)],
            max_new_tokens=cfg.max_new_tokens,
            temperature=1.0,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            progress=f"eval sampled x{cfg.k_samples}",
        )
        rewards = torch.tensor(
            [reward(t, a) for t, a in zip(drawn.texts, [a for a in answers for _ in range(cfg.k_samples)])]
        )
        flops += rollout_flops(ModelDims.of(model), drawn)
        per_sample = rewards.view(-1, cfg.k_samples)
        per_problem, solved = per_sample.mean(-1).tolist(), (per_sample.max(-1).values == 1).float().tolist()
        sampled = {
            "sampled_accuracy": sum(per_problem) / n,
            "sampled_stderr": _stderr(per_problem),
            "pass_at_k": sum(solved) / n,
            "pass_at_k_stderr": _stderr(solved),
        }
    model.train(was_training)
    return EvalResult(
        n=n,
        greedy_accuracy=sum(greedy_rewards) / n,
        greedy_stderr=_stderr(greedy_rewards),
        no_answer_rate=sum(extract_answer(t) is None for t in greedy.texts) / n,
        greedy_accuracy_flexible=sum(reward_flexible(t, a) for t, a in zip(greedy.texts, answers)) / n,
        mean_response_tokens=float(greedy.lengths.float().mean()),
        k_samples=cfg.k_samples,
        eval_flops=flops,
        by_difficulty=by_difficulty(records, greedy_rewards, per_problem, solved),
        greedy_correct=tuple(r == 1.0 for r in greedy_rewards) if cfg.per_problem else None,
        **sampled,
    )


def by_difficulty(
    records: list[dict], greedy: list[float], sampled: list[float] | None, solved: list[float] | None
) -> dict[str, Difficulty]:
    """Accuracy per number of operations (`ops`), where the records carry it (the built-in generator's do)."""
    groups: dict[int, list[int]] = {}
    for i, record in enumerate(records):
        if record.get("ops") is not None:
            groups.setdefault(int(record["ops"]), []).append(i)

    def mean(values: list[float] | None, rows: list[int]) -> float | None:
        return None if values is None else sum(values[i] for i in rows) / len(rows)

    return {
        str(ops): Difficulty(len(rows), mean(greedy, rows), mean(sampled, rows), mean(solved, rows))
        for ops, rows in sorted(groups.items())
    }
