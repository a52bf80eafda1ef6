"""Accuracy of a model on held-out problems: greedy pass@1 and sampled accuracy.

RL moves sampled accuracy before greedy accuracy, so both are reported on the
same problems, each with its standard error.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rakd.flops import ModelDims, rollout_flops
from rakd.rollout import sample
from rakd.stage_config import EvalConfig
from rakd.tables import pct
from rakd.train.common import autocast
from rakd.verify import extract_answer, reward, reward_flexible


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
) -> dict:
    """Greedy and sampled accuracy on `records[:cfg.n_problems]` with the project's verifier, decoding under the
    stage's resolved `precision` (bf16: autocast, rakd.train.common)."""
    with autocast(next(model.parameters()).device, precision):
        return _evaluate(model, tokenizer, records, cfg)


def _evaluate(model, tokenizer, records: list[dict], cfg: EvalConfig) -> dict:
    records = records[: cfg.n_problems]
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
    result = {
        "n": len(records),
        "greedy_accuracy": sum(greedy_rewards) / len(records),
        "greedy_stderr": _stderr(greedy_rewards),
        "no_answer_rate": sum(extract_answer(t) is None for t in greedy.texts) / len(records),
        # the last number when no answer is marked (lm-eval's flexible-extract); reported, never trained on
        "greedy_accuracy_flexible": sum(reward_flexible(t, a) for t, a in zip(greedy.texts, answers)) / len(records),
        "mean_response_tokens": float(greedy.lengths.float().mean()),
        "k_samples": cfg.k_samples,
        "eval_flops": rollout_flops(ModelDims.of(model), greedy),  # the compute ledger's `eval` (rakd.flops)
    }
    if cfg.k_samples:
        sampled = sample(
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
            [reward(t, a) for t, a in zip(sampled.texts, [a for a in answers for _ in range(cfg.k_samples)])]
        )
        result["eval_flops"] += rollout_flops(ModelDims.of(model), sampled)
        per_sample = rewards.view(-1, cfg.k_samples)
        per_problem, solved = per_sample.mean(-1).tolist(), (per_sample.max(-1).values == 1).float().tolist()
        result.update(
            sampled_accuracy=sum(per_problem) / len(records),
            sampled_stderr=_stderr(per_problem),
            pass_at_k=sum(solved) / len(records),
            pass_at_k_stderr=_stderr(solved),
        )
    else:
        per_problem = solved = None
    result["by_difficulty"] = by_difficulty(records, greedy_rewards, per_problem, solved)
    if cfg.per_problem:
        result["greedy_correct"] = "".join("1" if r == 1.0 else "0" for r in greedy_rewards)
    model.train(was_training)
    return result


def by_difficulty(
    records: list[dict], greedy: list[float], sampled: list[float] | None, solved: list[float] | None
) -> dict[str, dict]:
    """Accuracy per number of operations (`ops`), where the records carry it (the built-in generator's do)."""
    groups: dict[int, list[int]] = {}
    for i, record in enumerate(records):
        if record.get("ops") is not None:
            groups.setdefault(int(record["ops"]), []).append(i)
    table = {}
    for ops, rows in sorted(groups.items()):
        entry = {"n": len(rows), "greedy_accuracy": sum(greedy[i] for i in rows) / len(rows)}
        if sampled is not None:
            entry["sampled_accuracy"] = sum(sampled[i] for i in rows) / len(rows)
            entry["pass_at_k"] = sum(solved[i] for i in rows) / len(rows)
        table[str(ops)] = entry
    return table


def eval_row(name: str, result: dict) -> dict:
    """One row of an accuracy table: greedy and sampled accuracy with their standard errors."""
    sampled = "sampled_accuracy" in result
    return {
        "model": name,
        "parameters": result.get("parameters"),
        "greedy": f"{pct(result['greedy_accuracy'])} ± {100 * result['greedy_stderr']:.1f}",
        "sampled": f"{pct(result['sampled_accuracy'])} ± {100 * result['sampled_stderr']:.1f}" if sampled else "-",
        "n": result["n"],
        "no answer": pct(result["no_answer_rate"]),
        "flexible": pct(result.get("greedy_accuracy_flexible")),
    }


def format_eval(name: str, result: dict) -> str:
    """The same row as one log line."""
    row = eval_row(name, result)
    return (
        f"{name:<22} greedy {row['greedy']}   sampled {row['sampled']}   (n={row['n']}, no answer {row['no answer']})"
    )
