"""The RL-aware distillation loop: one trainer for every method in the loss registry.

A step: pick prompts, sample G rollouts each from the current student (or take
teacher traces for an offline method), score them with the verifier, form
group advantages, fetch the teacher's log-probs only if the method needs them,
record the sampling policy's log-probs, then `ppo_epochs` passes of minibatch
updates. The method enters only through its `LossSpec`.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from rakd.flops import Ledger, ModelDims, compute_seconds
from rakd.layout import METRICS
from rakd.losses import LOSSES, LossSpec, group_advantages
from rakd.progress import Progress
from rakd.rollout import (
    Rollouts,
    TorchScorer,
    completion_logits,
    select_rows,
    trimmed,
)
from rakd.rollout.head import splits_head
from rakd.train.batches import batch_tensors
from rakd.train.checkpoint import CheckpointedTrainer
from rakd.train.collect import Collecting
from rakd.train.common import MetricsLog, autocast, make_optimizer, make_scheduler, step_seed
from rakd.train.config import LossParams, Method, RLConfig
from rakd.train.distributed import World, clip_gradients, full_weights, is_sharded
from rakd.train.plan import StepPlan, minibatch_chunks


def token_entropy(tensors: dict[str, torch.Tensor], temperature: float) -> float:
    """The mean entropy of the student's sampling distribution (logits / `temperature`) over completion tokens:
    `batch_tensors`' own `entropy`, or from its whole logits."""
    mask = tensors["mask"]
    entropy = tensors.get("entropy")
    if entropy is None:
        logprobs = torch.log_softmax(tensors["student_logits"].detach().float() / temperature, dim=-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1)
    return float((entropy * mask).sum() / mask.sum().clamp(min=1))


# The most logits (rows x positions x vocabulary) one forward pass of the update holds: 2^28 floats, 1 GiB, so
# a minibatch of a 49k-token vocabulary's rows goes through in pieces of about 40 rows where all at once it would
# exceed a worker's memory (the pieces' gradients sum to the whole one's). Micro models' minibatches are one piece.
LOGITS_PER_PASS = 2**28


def row_pieces(rows: int, width: int, vocab: int, budget: int | None = None) -> list[torch.Tensor]:
    """Consecutive ranges of `rows` whose logits (rows x `width` x `vocab`) stay within `budget` elements
    (`LOGITS_PER_PASS`), at least one row each."""
    size = max(1, (budget or LOGITS_PER_PASS) // max(1, width * vocab))
    return [torch.arange(start, min(rows, start + size)) for start in range(0, rows, size)]


def loss_units(spec, hparams: dict, mask: torch.Tensor) -> float:
    """What `spec`'s loss averages over, for rows of completion mask `mask`: their tokens (token_mean, and the
    vocabulary losses, which have no `agg`), or the rows themselves (seq_mean)."""
    agg = hparams.get("agg", spec.defaults.get("agg")) if "agg" in spec.hparams else "token_mean"
    return float(mask.sum()) if agg == "token_mean" else float(len(mask))


def step_flops_of(row: dict, *, training_only: bool = False) -> int:
    """The FLOPs a metrics row records for its own step (not the running total); with `training_only`, the
    ledger's training FLOPs (what `rl.flops_budget` counts)."""
    ledger = Ledger.of_row(row)
    return ledger.training if training_only else ledger.total


class RLTrainer(Collecting, CheckpointedTrainer):
    """setup / step / save / resume for RL-aware distillation: one trainer for every method in the loss registry.

    `step(i)` runs RL step i and returns its metrics; `run()` runs the remaining steps with logging, progress and
    checkpoints in `out_dir` (`metrics.jsonl`, `checkpoints/step-N/`)."""

    def __init__(
        self,
        student,
        teacher,
        tokenizer,
        records,
        traces,
        method: Method,
        loss: LossParams,
        cfg: RLConfig,
        out_dir: Path,
        *,
        seed: int,
        checkpoint_every: int = 25,
        teacher_scorer=None,
        world: World | None = None,
        flops_before: int = 0,
        precision: str = "fp32",
    ):
        self.model = self.student = student
        self.teacher, self.tokenizer = teacher, tokenizer
        self.world = world or World()  # under torchrun: each rank samples its share of every step's prompts
        # log π_T of the sampled tokens: the torch teacher here, or a scorer elsewhere (rakd.scorers)
        self.teacher_scorer = teacher_scorer or TorchScorer(teacher)
        self.student_scorer = TorchScorer(student)  # π_old, when the update needs a pass of its own
        self.records, self.traces, self.cfg, self.seed, self.method = records, traces, cfg, seed, method
        self.spec: LossSpec = LOSSES[method]
        self.hparams = self.spec.resolve(loss.model_dump())  # None: the method's own default
        self.optimizer = make_optimizer(student, cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, cfg.steps, cfg.optim)
        self.out_dir, self.checkpoint_every = Path(out_dir), checkpoint_every
        self.log = MetricsLog(self.out_dir / METRICS)
        self.device = next(student.parameters()).device
        self.precision = precision  # resolved: sampling, scoring and the update under one autocast
        # Degenerate groups get the grpo_kl KL term when zero_adv=kd and the method has advantages.
        self.kd_spec = LOSSES["grpo_kl"] if cfg.zero_adv == "kd" and self.spec.trains_on == "informative" else None
        # the compute ledger (rakd.flops): each step's phases, and `flops_total` from the stage's earlier phases on
        self.student_dims, self.teacher_dims, self.flops_before = (
            ModelDims.of(student),
            ModelDims.of(teacher),
            flops_before,
        )

    def score_rows(self, scorer, batch: Rollouts, rows: torch.Tensor, temperature: float) -> torch.Tensor:
        """Per-token log-probs (B, T) from `scorer(batch, temperature)` for `rows` only (the rows that enter the
        loss); 0 elsewhere."""
        scores = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
        if len(rows):
            scores[rows] = scorer(select_rows(batch, rows), temperature)
        return scores

    def run(
        self,
        on_step: Callable[[int, dict], None] | None = None,
        after_step: Callable[[int], None] | None = None,
        on_readout: Callable[[int, str], None] | None = None,
    ) -> None:
        """Steps `start_step`..`cfg.steps`: `on_step(step, row)` may add to the row before it is logged;
        `after_step(step)` runs once the step is logged and checkpointed. Under torchrun only rank 0 calls
        `on_step`, logs and checkpoints (every rank holds the same weights). With a budget and
        `cfg.readout_steps` and/or `cfg.readout_seconds`, the run goes on to whichever comes last, and
        `on_readout(steps_done, "budget" | "steps" | "seconds")` reads the student out at each earlier one (every
        rank calls it)."""
        main = self.world.main
        progress = Progress(f"distill:{self.method}", self.cfg.steps, self.start_step, every=5) if main else None
        started = time.perf_counter()
        spent = self.flops_before + sum(step_flops_of(row) for row in self.log.rows())  # rows kept on resume
        trained = sum(step_flops_of(row, training_only=True) for row in self.log.rows())
        computed = sum(compute_seconds(row) for row in self.log.rows())
        readout, budget_spent = self.cfg.readout_steps or 0, False
        seconds_due = self.budgeted and self.cfg.readout_seconds is not None
        for step in range(self.start_step, self.cfg.steps):
            if not budget_spent and self.over_budget(time.perf_counter() - started, trained):
                budget_spent = True
                if (step < readout or seconds_due) and on_readout:
                    self.read_out(on_readout, step, "budget")
            if seconds_due and self.world.max(computed) >= self.cfg.readout_seconds:
                seconds_due = False
                if on_readout and (not budget_spent or step < readout):
                    self.read_out(on_readout, step, "seconds")
            if budget_spent and step >= readout and not seconds_due:
                if step > self.start_step:
                    self.save(step)
                break
            row = {"step": step + 1, "method": self.method, **self.step(step)}
            if on_step:
                with full_weights(self.student):  # a sharded student is gathered on every rank; rank 0 evaluates
                    if main:
                        on_step(step + 1, row)
            spent += step_flops_of(row)
            trained += step_flops_of(row, training_only=True)
            computed += compute_seconds(row)
            row["flops_total"] = spent  # the stage's ledger so far, warm start included
            if main:
                self.log.append(row)
                progress.update(step, reward=row["reward_mean"], loss=row.get("loss", 0.0))
            if (step + 1) % self.checkpoint_every == 0 or step + 1 == self.cfg.steps:
                self.save(step + 1)
            if after_step:
                after_step(step + 1)
            if step + 1 == readout and on_readout and self.budgeted and step + 1 < self.cfg.steps:
                # when the run stops right here, its final evaluation stands for this readout
                if seconds_due or not self.over_budget(time.perf_counter() - started, trained):
                    self.read_out(on_readout, step + 1, "steps")

    @property
    def budgeted(self) -> bool:
        return self.cfg.time_budget_s is not None or self.cfg.flops_budget is not None

    def read_out(self, on_readout: Callable[[int, str], None], steps_done: int, reason: str) -> None:
        with full_weights(self.student):
            on_readout(steps_done, reason)

    def over_budget(self, seconds: float, trained_flops: int) -> bool:
        """Whether `rl.time_budget_s` or `rl.flops_budget` is spent (every rank decides alike)."""
        if self.cfg.time_budget_s is not None and self.world.max(seconds) >= self.cfg.time_budget_s:
            return True
        return self.cfg.flops_budget is not None and trained_flops >= self.cfg.flops_budget

    def step(self, step: int) -> dict:
        self.student.eval()
        # Sampling and scoring run under the same precision as the update, so that
        # π_old and π_θ agree exactly before the first optimiser step (on a sharded student's gathered weights).
        with autocast(self.device, self.precision), full_weights(self.student):
            t0 = time.perf_counter()
            collected = self.collect(step)
            batch, rewards = collected.batch, collected.rewards
            t_sample = time.perf_counter() - t0
            group = self.cfg.group_size if self.spec.on_policy else 1
            advantages, degenerate = group_advantages(rewards, group)
            trains = {"informative": ~degenerate, "verified": rewards == 1, "all": torch.ones_like(degenerate)}
            main_rows = torch.nonzero(trains[self.spec.trains_on]).squeeze(-1)
            kd_rows = torch.nonzero(degenerate).squeeze(-1) if self.kd_spec else main_rows[:0]
            rows = torch.cat([main_rows, kd_rows])
            plan = StepPlan.make(self.spec, self.cfg, int(self.world.sum(len(rows))), kd=self.kd_spec is not None)
            teacher_rows = {"loss": rows, "kd": kd_rows}.get(plan.teacher_logprobs, rows[:0])
            t1 = time.perf_counter()
            teacher_lp = (
                self.score_rows(self.teacher_scorer, batch, teacher_rows, self.temperature)
                if plan.teacher_logprobs != "none"
                else None
            )
            t_teacher = time.perf_counter() - t1
            # π_old: a forward pass of its own only when the update takes more than one optimiser step; with
            # one step on-policy, π_old is π_θ before that step, i.e. the update's own log-probs, detached.
            old_lp = self.score_rows(self.student_scorer, batch, rows, self.temperature) if plan.old_pass else None
        ledger = plan.ledger(
            self.student_dims, self.teacher_dims, select_rows(batch, rows), select_rows(batch, teacher_rows)
        )
        t2 = time.perf_counter()
        positions = collected.positions[rows]
        metrics = self.update(step, plan, batch, advantages, old_lp, teacher_lp, main_rows, kd_rows, positions)
        t_update = time.perf_counter() - t2
        with warnings.catch_warnings():  # a step whose groups were all degenerate took no optimiser step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        n_tokens = int(batch.completion_mask.sum())
        return {
            "accuracy": float((rewards == 1).float().mean()),
            **collected.info,
            **metrics,
            "flops_teacher_score": int(self.world.sum(ledger.teacher_score)),
            "flops_student_update": int(self.world.sum(ledger.student_update)),
            "old_pass": plan.old_pass,
            "degenerate_frac": float(degenerate.float().mean()) if self.spec.trains_on == "informative" else 0.0,
            "rows_in_loss": len(rows),
            "response_length": n_tokens / max(1, len(batch.texts)),
            "tokens_per_s": n_tokens / max(t_sample, 1e-9),
            "seconds_sample": t_sample,
            "seconds_teacher": t_teacher,
            "seconds_update": t_update,
            "lr": self.scheduler.get_last_lr()[0],
        }

    @property
    def temperature(self) -> float:
        """The temperature rollouts were sampled at: π_old, π_θ and the teacher are all taken on logits / T."""
        return self.cfg.temperature if self.spec.on_policy else 1.0

    def update(self, step, plan: StepPlan, batch, advantages, old_lp, teacher_lp, main_rows, kd_rows, positions):
        """`plan.epochs` passes of `plan.chunks` minibatch steps over the rows that carry a signal (under torchrun:
        every rank takes the same optimiser steps, each over its rows of the world's minibatch)."""
        self.student.train()
        rows = torch.cat([main_rows, kd_rows])
        is_kd = torch.cat([torch.zeros(len(main_rows), dtype=torch.bool), torch.ones(len(kd_rows), dtype=torch.bool)])
        sums: dict[str, float] = defaultdict(float)
        updates = 0
        for epoch in range(plan.epochs):
            seed = step_seed(self.seed, step, salt=epoch)  # a different order every step and epoch
            for chunk in minibatch_chunks(positions, plan.chunks, seed, self.world):
                picked = rows[chunk]
                part = trimmed(select_rows(batch, picked))  # padding every row shares costs compute, not signal
                width = part.completion_ids.shape[1]
                metrics = self.minibatch(
                    part,
                    is_kd[chunk],
                    advantages[picked],
                    None if old_lp is None else old_lp[picked, :width],
                    None if teacher_lp is None else teacher_lp[picked, :width],
                )
                for key, value in metrics.items():
                    sums[key] += value
                updates += 1
        return {key: value / max(1, updates) for key, value in sums.items()} | {"updates": updates}

    def share_of_batch(self, batch: Rollouts) -> float:
        """This rank's share of the global minibatch in the loss's own units (rows for seq_mean, tokens for
        token_mean): the weight that makes the summed gradients those of the whole minibatch. 1 alone."""
        token_mean = self.hparams.get("agg", "token_mean") == "token_mean"  # fkl, gkd: always over tokens
        share = self.world.fraction(float(batch.completion_mask.sum()) if token_mean else len(batch.texts))
        return share * self.world.grad_scale(self.student)

    def minibatch(self, batch: Rollouts, is_kd: torch.Tensor, advantages, old_lp, teacher_lp) -> dict:
        """One optimiser step on a minibatch: the method's loss on its rows, plus the KD term on
        degenerate-group rows (zero_adv=kd), weighted by their share of the minibatch. The forward and backward
        passes go over `row_pieces` (a bound on the logits held at once, a large vocabulary's memory) whose
        gradients sum to the whole minibatch's: each piece's loss is weighted by its share of its loss's units.
        Of the pieces' metrics, maxima take the maximum and the rest the token-weighted mean: the whole
        minibatch's for token means and token_mean losses, near it for the value of a seq_mean loss."""
        weight = self.share_of_batch(batch)
        if not len(batch.texts):  # a rank with no rows in this minibatch still joins the gradient sum
            self.optimizer.zero_grad(set_to_none=True)
            if is_sharded(self.student):  # FSDP reduces in the backward pass: every rank runs one
                pad = torch.full((1, 1), self.tokenizer.pad_token_id, device=self.device)
                (self.student(input_ids=pad).logits.sum() * 0.0).backward()
            return self.optimizer_step({})
        mask = batch.completion_mask.float()
        parts = [  # (loss, its rows, metrics prefix, its units in the whole minibatch, its share of the rows)
            (spec, rows, prefix, loss_units(spec, self.hparams, mask[rows]), rows.float().mean().item())
            for spec, rows, prefix in ((self.spec, ~is_kd, ""), (self.kd_spec, is_kd, "kd/"))
            if spec is not None and rows.any()
        ]
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = defaultdict(float)
        total, entropy = 0.0, 0.0
        width = batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]
        whole_logits = any(spec.teacher == "logits" for spec, *_ in parts) or not splits_head(self.student)
        pieces = row_pieces(len(batch.texts), width, self.student.config.vocab_size)
        if is_sharded(self.student) or not whole_logits:  # FSDP's backward is a collective: every rank must run as
            pieces = [torch.arange(len(batch.texts))]  # many, so one each; a chunked head holds no (B, T, V) logits
        alone = len(pieces) == 1  # one pass over the whole minibatch: every share is exactly 1
        for piece in pieces:
            part = batch if alone else trimmed(select_rows(batch, piece))
            cut = part.completion_ids.shape[1]
            with autocast(self.device, self.precision):
                tensors = batch_tensors(self.student, part, temperature=self.temperature, logits=whole_logits)
                old = tensors["logprobs"].detach() if old_lp is None else old_lp[piece, :cut].to(self.device)
                tensors.update(old_logprobs=old, advantages=advantages[piece].to(self.device))
                if teacher_lp is not None:
                    tensors["teacher_logprobs"] = teacher_lp[piece, :cut].to(self.device)
                if self.spec.teacher == "logits":
                    with torch.no_grad():
                        tensors["teacher_logits"] = completion_logits(self.teacher, part).float()
                loss = tensors["logprobs"].sum() * 0.0
                for spec, rows, prefix, units, share in parts:
                    here = rows[piece]
                    if not here.any():
                        continue
                    value, part_metrics = spec({k: v[here.to(v.device)] for k, v in tensors.items()}, self.hparams)
                    within = 1.0 if alone else loss_units(spec, self.hparams, mask[piece][here]) / units
                    loss = loss + value * (within * share)
                    its_tokens = 1.0 if alone else float(mask[piece][here].sum()) / float(mask[rows].sum())
                    for key, number in part_metrics.items():
                        if key.endswith("_max"):
                            metrics[prefix + key] = max(metrics.get(prefix + key, number), number)
                        else:  # token means (clip shares, ratios): exact; a seq_mean loss's own value: near
                            metrics[prefix + key] += number * its_tokens
            (loss * weight).backward()
            total += float(loss.detach())
            tokens = 1.0 if alone else float(mask[piece].sum()) / float(mask.sum().clamp(min=1))
            entropy += token_entropy(tensors, self.temperature) * tokens
        return self.optimizer_step({**metrics, "loss": total, "entropy": entropy})

    def optimizer_step(self, metrics: dict) -> dict:
        self.world.sum_gradients(self.student)
        grad_norm = clip_gradients(self.student, self.cfg.optim.grad_clip)
        self.optimizer.step()
        return {**metrics, "grad_norm": grad_norm}
