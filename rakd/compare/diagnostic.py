"""The step-0 diagnostic of a comparison: what TRRD's teacher term does to the warm start's first RL step.

On `prompts` x G of the student's own samples from its RL pool, at θ = θ_old (the first step, before any update):
the pass rate, the share of groups with mixed rewards, the distribution of log π − log π_T over the sampled tokens,
the share the teacher clamp c binds on, and the share of tokens whose gradient TRRD's clip removes. At θ = θ_old
TRRD's ratio is the teacher term alone, log ρ = (1 − α) clamp(log π − log π_T, −c, c), and a token gets no gradient
when A > 0 and ρ > 1 + ε_hi, or A < 0 and ρ < 1 − ε_lo. Where the student already agrees with the teacher on its own
samples the teacher term carries no signal (TRRD is GRPO); where it disagrees a lot, most positive-advantage tokens
are clipped and the update learns only from failures.
"""

from __future__ import annotations

import random

import torch

from rakd.losses.common import masked_stat
from rakd.losses.policy import clamp_binds, clamp_log_ratio


def step0_diagnostic(student, teacher, tokenizer, records: list[dict], rl, loss, *, prompts: int = 64, seed: int = 0):
    """The diagnostic's numbers (a flat dict) for `student` and `teacher` on `prompts` questions of `records`, sampled
    as RL samples them (`rl`: group size, new tokens, temperature), at TRRD's hyper-parameters (`loss`)."""
    from rakd.losses import group_advantages
    from rakd.rollout import sample, score_completions
    from rakd.verify import reward

    group = rl.group_size
    chosen = random.Random(seed).sample(records, min(prompts, len(records)))
    questions = [r["question"] for r in chosen for _ in range(group)]
    with torch.no_grad():
        batch = sample(student, tokenizer, questions, max_new_tokens=rl.max_new_tokens, temperature=rl.temperature,
                       top_p=rl.top_p, seed=seed, group_size=group)  # fmt: skip
        own = score_completions(student, batch, temperature=rl.temperature)
        theirs = score_completions(teacher, batch, temperature=rl.temperature)
    answers = [r["answer"] for r in chosen for _ in range(group)]
    rewards = torch.tensor([reward(text, answer) for text, answer in zip(batch.texts, answers)])
    advantages, degenerate = group_advantages(rewards, group)
    return clip_shares(own, theirs, advantages, batch.completion_mask.bool(), loss) | {
        "prompts": len(chosen),
        "group_size": group,
        "pass_rate": float((rewards == 1).float().mean()),
        "informative_groups": float((~degenerate).float().mean()),
    }


def clip_shares(own, theirs, advantages, mask, loss) -> dict:
    """The distribution of log π − log π_T over the masked tokens and the shares TRRD's clamp and clip bind on, at
    θ = θ_old (`own`, `theirs`: (B, T) log-probs; `advantages`: (B,); `mask`: (B, T) bool)."""
    gap = (own - theirs)[mask].double()
    ratio = torch.exp((1.0 - loss.alpha) * clamp_log_ratio(own - theirs, loss.teacher_clamp))
    adv = advantages.unsqueeze(-1).expand_as(ratio)
    positive, negative = mask & (adv > 0), mask & (adv < 0)
    no_gradient = (positive & (ratio > 1.0 + loss.eps_high)) | (negative & (ratio < 1.0 - loss.eps_low))
    quantiles = torch.quantile(gap, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)) if len(gap) else [0.0] * 3
    return {
        "tokens": int(mask.sum()),
        "gap_p5": float(quantiles[0]),
        "gap_median": float(quantiles[1]),
        "gap_p95": float(quantiles[2]),
        "clamped": masked_stat(clamp_binds(own - theirs, loss.teacher_clamp), mask, "mean"),
        "positive_no_gradient": masked_stat(no_gradient, positive, "mean"),
        "negative_no_gradient": masked_stat(no_gradient, negative, "mean"),
        "no_gradient": masked_stat(no_gradient, mask & (adv != 0), "mean"),
    }


def warmstart_diagnostic(distill, layout, warmstart, folder, *, prompts: int = 64) -> dict:
    """`step0_diagnostic` of the comparison's shared warm start against the run's teacher, on its RL pool; kept in
    `folder/diagnostic.json` under the warm start's key (computed once per warm start)."""
    import json

    from rakd.compare.run import warmstart_key
    from rakd.io import atomic_write_json
    from rakd.models.load import load_causal_lm
    from rakd.stages.distill import rl_records
    from rakd.stages.warmstart import distill_records

    key = warmstart_key(warmstart)
    kept = folder / "diagnostic.json"
    if kept.is_file() and json.loads(kept.read_text()).get("key") == key:
        return json.loads(kept.read_text())["diagnostic"]
    teacher, _ = load_causal_lm(layout.teacher)
    student, tokenizer = load_causal_lm(warmstart)
    records = rl_records(distill, distill_records(layout, "train"))
    result = step0_diagnostic(
        student.eval(), teacher.eval(), tokenizer, records, distill.rl, distill.loss, prompts=prompts, seed=distill.seed
    )
    atomic_write_json(kept, {"key": key, "diagnostic": result})
    return result
