"""The RL-aware distillation loop: one trainer for every method in the loss registry.

A step: pick prompts, sample G rollouts each from the current student (or take
teacher traces for an offline method), score them with the verifier, form
group advantages, fetch the teacher's log-probs only if the method needs them,
record the sampling policy's log-probs, then `ppo_epochs` passes of minibatch
updates. The method enters only through its `LossSpec`.
"""

from __future__ import annotations

import random
import time
import warnings
from collections import defaultdict
from typing import Literal

import torch
from pydantic import Field

from rakd.losses import LOSSES, LossSpec, group_advantages
from rakd.losses.common import Aggregation
from rakd.rollout import Backend, Rollouts, forward_completion, sample, score_completions
from rakd.schema import StageConfig
from rakd.train.common import OptimConfig, autocast, step_seed
from rakd.train.sft import batch_ids, batch_tensors, pack_pairs
from rakd.verify import reward

Method = Literal["sft", "fkl", "gkd", "opd", "grpo", "grpo_kl", "rakd"]


class LossParams(StageConfig):
    """Hyper-parameters of the losses; each method takes the ones it declares."""

    alpha: float = Field(0.5, ge=0, le=1, description="TRRD: weight of the old policy in the anchor")
    teacher_clamp: float = Field(1.0, gt=0, description="TRRD: clamp c on the teacher log-ratio")
    eps_low: float = Field(0.2, ge=0)
    eps_high: float = Field(0.28, ge=0)
    agg: Aggregation = "seq_mean"
    kl_coef: float = Field(0.1, ge=0, description="grpo_kl, and zero_adv=kd")
    beta: float = Field(0.5, ge=0, le=1, description="gkd")
    temperature: float = Field(1.0, gt=0, description="fkl/gkd softmax temperature")


class RLConfig(StageConfig):
    steps: int = Field(100, ge=0)
    prompts_per_step: int = Field(16, ge=1)
    group_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    ppo_epochs: int = Field(1, ge=1)
    minibatch_size: int = Field(64, ge=1, description="rollouts per optimiser step")
    zero_adv: Literal["skip", "kd"] = "skip"
    backend: Backend = "loop"
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=10, schedule="constant"))


def token_entropy(logits: torch.Tensor, mask: torch.Tensor) -> float:
    logprobs = torch.log_softmax(logits.detach().float(), dim=-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return float((entropy * mask).sum() / mask.sum().clamp(min=1))


def subset(batch: Rollouts, rows: torch.Tensor) -> Rollouts:
    return Rollouts(batch.prompt_ids[rows], batch.prompt_mask[rows], batch.completion_ids[rows],
                    batch.completion_mask[rows], [batch.texts[i] for i in rows.tolist()])


class RLStep:
    """Everything one RL step needs; `run(step)` returns that step's metrics."""

    def __init__(self, student, teacher, tokenizer, records, traces, method: Method, loss: LossParams,
                 cfg: RLConfig, optimizer, scheduler, *, seed: int):
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.records, self.traces, self.cfg, self.seed = records, traces, cfg, seed
        self.spec: LossSpec = LOSSES[method]
        self.hparams = loss.model_dump()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device = next(student.parameters()).device
        # Degenerate groups get the grpo_kl KL term when zero_adv=kd and the method has advantages.
        self.kd_spec = LOSSES["grpo_kl"] if cfg.zero_adv == "kd" and "advantages" in self.spec.inputs else None

    def prompts(self, step: int) -> list[dict]:
        rng = random.Random(step_seed(self.seed, step, salt=101))
        return rng.sample(self.records, min(self.cfg.prompts_per_step, len(self.records)))

    def collect(self, step: int) -> tuple[Rollouts, torch.Tensor, list[dict]]:
        """(batch, rewards, prompts): student samples for on-policy methods, teacher traces otherwise."""
        chosen = self.prompts(step)
        if self.spec.on_policy:
            questions = [r["question"] for r in chosen for _ in range(self.cfg.group_size)]
            batch = sample(self.student, self.tokenizer, questions, max_new_tokens=self.cfg.max_new_tokens,
                           temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                           seed=step_seed(self.seed, step, salt=7), backend=self.cfg.backend)
            answers = [r["answer"] for r in chosen for _ in range(self.cfg.group_size)]
        else:
            rng = random.Random(step_seed(self.seed, step, salt=13))
            picked = rng.sample(self.traces, min(len(self.traces), self.cfg.prompts_per_step * self.cfg.group_size))
            batch = pack_pairs(self.tokenizer, [(t["question"], t["completion"]) for t in picked])
            answers = [t["answer"] for t in picked]
        rewards = torch.tensor([reward(text, ans) for text, ans in zip(batch.texts, answers)])
        return batch, rewards, chosen

    def run(self, step: int) -> dict:
        self.student.eval()
        # Sampling and scoring run under the same precision as the update, so that
        # π_old and π_θ agree exactly before the first optimiser step.
        with autocast(self.device):
            t0 = time.perf_counter()
            batch, rewards, _ = self.collect(step)
            t_sample = time.perf_counter() - t0
            t1 = time.perf_counter()
            teacher_lp = score_completions(self.teacher, batch) if self.spec.needs_teacher or self.kd_spec else None
            t_teacher = time.perf_counter() - t1
            old_lp = score_completions(self.student, batch)
        group = self.cfg.group_size if self.spec.on_policy else 1
        advantages, degenerate = group_advantages(rewards, group)
        uses_adv = "advantages" in self.spec.inputs
        main_rows = torch.nonzero(~degenerate if uses_adv else torch.ones_like(degenerate)).squeeze(-1)
        kd_rows = torch.nonzero(degenerate).squeeze(-1) if self.kd_spec else main_rows[:0]
        t2 = time.perf_counter()
        metrics = self.update(batch, advantages, old_lp, teacher_lp, main_rows, kd_rows)
        t_update = time.perf_counter() - t2
        with warnings.catch_warnings():  # a step whose groups were all degenerate took no optimiser step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        n_tokens = int(batch.completion_mask.sum())
        return {
            **metrics,
            "reward_mean": float(rewards.mean()),
            "accuracy": float((rewards == 1).float().mean()),
            "degenerate_frac": float(degenerate.float().mean()) if uses_adv else 0.0,
            "response_length": n_tokens / max(1, len(batch.texts)),
            "tokens_per_s": n_tokens / max(t_sample, 1e-9),
            "seconds_sample": t_sample, "seconds_teacher": t_teacher, "seconds_update": t_update,
            "lr": self.scheduler.get_last_lr()[0],
        }

    def update(self, batch, advantages, old_lp, teacher_lp, main_rows, kd_rows) -> dict:
        """`ppo_epochs` passes of minibatch steps over the rows that carry a signal."""
        self.student.train()
        rows = torch.cat([main_rows, kd_rows])
        is_kd = torch.cat([torch.zeros(len(main_rows), dtype=torch.bool), torch.ones(len(kd_rows), dtype=torch.bool)])
        sums: dict[str, float] = defaultdict(float)
        updates = 0
        for epoch in range(self.cfg.ppo_epochs if len(rows) else 0):
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(epoch))
            for chunk in order.split(self.cfg.minibatch_size):
                picked = rows[chunk]
                metrics = self.minibatch(subset(batch, picked), is_kd[chunk], advantages[picked], old_lp[picked],
                                         None if teacher_lp is None else teacher_lp[picked])
                for key, value in metrics.items():
                    sums[key] += value
                updates += 1
        return {key: value / max(1, updates) for key, value in sums.items()} | {"updates": updates}

    def minibatch(self, batch: Rollouts, is_kd: torch.Tensor, advantages, old_lp, teacher_lp) -> dict:
        """One optimiser step on a minibatch: the method's loss on its rows, plus the KD term on
        degenerate-group rows (zero_adv=kd), weighted by their share of the minibatch."""
        with autocast(self.device):
            tensors = batch_tensors(self.student, batch)
            tensors.update(old_logprobs=old_lp.to(self.device), advantages=advantages.to(self.device))
            if teacher_lp is not None:
                tensors["teacher_logprobs"] = teacher_lp.to(self.device)
            if self.spec.needs_logits:
                with torch.no_grad():
                    tensors["teacher_logits"] = forward_completion(self.teacher, *batch_ids(batch, self.device)).float()
            logits = tensors["student_logits"]
            loss, metrics = logits.sum() * 0.0, {}
            for spec, rows, prefix in ((self.spec, ~is_kd, ""), (self.kd_spec, is_kd, "kd/")):
                if spec is None or not rows.any():
                    continue
                part, part_metrics = spec({k: v[rows.to(v.device)] for k, v in tensors.items()}, self.hparams)
                loss = loss + part * rows.float().mean().item()
                metrics.update({prefix + k: v for k, v in part_metrics.items()})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        return {**metrics, "loss": float(loss.detach()), "grad_norm": float(grad_norm),
                "entropy": token_entropy(logits, tensors["mask"])}
