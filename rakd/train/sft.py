"""Supervised fine-tuning on (question, completion) pairs: next-token loss on completion tokens only.

Trains the from-scratch teacher on chain-of-thought solutions, and warm-starts
the student on the teacher's verified traces (the `sft`/SeqKD baseline).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

from rakd.flops import ModelDims, rollout_flops
from rakd.layout import METRICS
from rakd.losses import LOSSES
from rakd.losses.distill import heal_loss
from rakd.progress import Progress
from rakd.rollout import Rollouts, packs_forests
from rakd.rollout.head import splits_head, teacher_targets
from rakd.train.batches import TeacherTargets, batch_tensors, kd_tensors, pack_pairs
from rakd.train.checkpoint import CheckpointedTrainer
from rakd.train.common import MetricsLog, autocast, make_optimizer, make_scheduler, step_seed
from rakd.train.config import SFTConfig
from rakd.train.distributed import World, clip_gradients, full_weights


class SFTTrainer(CheckpointedTrainer):
    """setup / step / save / resume for SFT on a fixed list of (prompt, completion) pairs."""

    def __init__(
        self,
        model,
        tokenizer,
        pairs: list[tuple[str, str]],
        cfg: SFTConfig,
        out_dir: Path,
        *,
        seed: int,
        name: str,
        world: World | None = None,
        precision: str = "fp32",
        teacher=None,
        kd=None,
    ):
        if not pairs:
            raise ValueError(f"{name}: no training pairs")
        self.model, self.tokenizer, self.pairs, self.cfg, self.seed, self.name = (
            model,
            tokenizer,
            pairs,
            cfg,
            seed,
            name,
        )
        self.out_dir = Path(out_dir)
        self.optimizer = make_optimizer(model, cfg.optim)
        self.lr_scale = None  # an `on_step` hook's `lr_scale(step)`, where it has one (a decay begun at a plateau)
        self.scheduler = make_scheduler(
            self.optimizer, cfg.steps, cfg.optim, scale=lambda step: self.lr_scale(step) if self.lr_scale else 1.0
        )
        self.log = MetricsLog(self.out_dir / METRICS)
        self.device = next(model.parameters()).device
        self.start_step = 0
        self.world = world or World()  # under torchrun: each rank takes its share of every batch
        self._order: tuple[int, list[int]] = (-1, [])
        self.dims = ModelDims.of(model)
        self.precision = precision  # resolved: fp32 or bf16 autocast (rakd.train.common.resolve_precision)
        self.teacher, self.kd = teacher, kd  # kd (HealKD): distil from the teacher on the pairs, else plain SFT
        if kd is not None and (teacher is None or not (splits_head(model) and splits_head(teacher))):
            raise ValueError(f"{name}: healing by distillation needs the teacher, and both heads apart (llama, qwen2)")
        self.teacher_dims = ModelDims.of(teacher) if kd is not None else None
        # the teacher's distributions kept from epoch to epoch (one process: each rank of several would keep its own
        # share of every batch, and its batches change with the world's size)
        self.targets = TeacherTargets() if kd is not None and self.world.size == 1 else None

    def set_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """Train on `pairs` from the next step on (a warm start that adds traces); the optimiser and schedule go
        on. A step's batch depends only on the step and the pairs, so a resumed run sees what an unbroken one did."""
        self.pairs, self._order = pairs, (-1, [])

    def epoch_order(self, epoch: int) -> list[int]:
        """The seeded shuffle of epoch `epoch` (kept for the epoch's steps)."""
        if self._order[0] != epoch:
            order = list(range(len(self.pairs)))
            random.Random(step_seed(self.seed, epoch, salt=17)).shuffle(order)
            self._order = (epoch, order)
        return self._order[1]

    def pairs_for(self, step: int) -> list[tuple[str, str]]:
        """This rank's pairs of batch `step` of a seeded shuffle, epoch by epoch: the same step always sees the
        same data."""
        per_epoch = max(1, len(self.pairs) // self.cfg.batch_size)
        epoch, index = divmod(step, per_epoch)
        order = self.epoch_order(epoch)
        chosen = order[index * self.cfg.batch_size : (index + 1) * self.cfg.batch_size] or order[: self.cfg.batch_size]
        return [self.pairs[i] for i in self.world.share(chosen)]

    def batch_for(self, step: int) -> Rollouts:
        return pack_pairs(self.tokenizer, self.pairs_for(step))

    def checkpoint_extra(self) -> dict:
        return {"teacher_targets": self.targets.tensors()} if self.targets is not None else {}

    def restore_extra(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        saved = Path(checkpoint) / "teacher_targets.safetensors"
        if self.targets is not None:
            self.targets.load(load_file(saved) if saved.is_file() else {})

    def _kd_target(self, step: int, batch: Rollouts):
        """The teacher's distributions for batch `step` (`TeacherTargets`) and whether the teacher ran for them."""
        if self.targets is None:
            return None, True
        pairs = self.pairs_for(step)
        kept = self.targets.lookup(pairs)
        if kept is not None:
            return kept, False
        with autocast(self.device, self.precision):
            fresh = teacher_targets(self.teacher, batch, self.kd.top_k, packed=packs_forests(self.device))
        return self.targets.merge(pairs, batch, fresh), True

    def step(self, step: int) -> dict:
        self.model.train()
        batch = self.batch_for(step)
        target, teacher_ran = self._kd_target(step, batch) if self.kd is not None else (None, False)
        with autocast(self.device, self.precision):
            if self.kd is None:
                tensors = batch_tensors(self.model, batch)
                loss, metrics = LOSSES["sft"](tensors, {})  # the loss's own aggregation (token_mean)
            else:
                tensors = kd_tensors(self.model, self.teacher, batch, self.kd.top_k, target=target)
                loss, metrics = heal_loss(
                    tensors["logprobs"], tensors["forward_kl"], tensors["mask"], ce_weight=self.kd.ce_weight
                )
        # token_mean: its share of the batch's tokens (scaled where FSDP averages what it reduces)
        weight = self.world.fraction(float(tensors["mask"].sum())) * self.world.grad_scale(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        self.world.sum_gradients(self.model)
        grad_norm = clip_gradients(self.model, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {
            **metrics,
            "loss": float(loss.detach()),
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens": int(self.world.sum(int(batch.completion_mask.sum()))),  # the completion tokens trained on
            "flops": int(self.world.sum(rollout_flops(self.dims, batch, training=True))),  # every rank's share
            **self.teacher_flops(batch, teacher_ran),
        }

    def teacher_flops(self, batch: Rollouts, ran: bool = True) -> dict:
        """The teacher's forward pass over the batch when healing by distillation (`flops_teacher_score`; 0 where
        its kept distributions stood in for it)."""
        if self.kd is None:
            return {}
        return {"flops_teacher_score": int(self.world.sum(rollout_flops(self.teacher_dims, batch))) if ran else 0}

    def run(self, on_step: Callable[[int, dict], bool | None] | None = None, until: int | None = None) -> int:
        """Steps `start_step`..`until` (default `cfg.steps`); returns the number of steps done, which is also the
        next run's `start_step`. `on_step(step, row)` may add to the row before it is logged, and ends training
        early by returning True (a warm start's target accuracy)."""
        until = self.cfg.steps if until is None else min(until, self.cfg.steps)
        self.lr_scale = getattr(on_step, "lr_scale", None)
        progress = Progress(self.name, self.cfg.steps, self.start_step, every=self.cfg.log_every)
        for step in range(self.start_step, until):
            started = time.perf_counter()
            metrics = self.step(step)
            row = {"step": step + 1, "stage": self.name, **metrics, "seconds": time.perf_counter() - started}
            stop = False
            if on_step:
                with full_weights(self.model):  # every rank checks, on a sharded model's gathered weights
                    stop = bool(on_step(step + 1, row))
            if self.world.main:  # every rank holds the same weights: rank 0 logs and checkpoints
                self.log.append(row)
                progress.update(step, loss=metrics["loss"])
            if stop:
                self.start_step = step + 1
                return self.start_step
            if self.cfg.checkpoint_every and (step + 1) % self.cfg.checkpoint_every == 0 and step + 1 < self.cfg.steps:
                self.save(step + 1)
        self.start_step = max(self.start_step, until)
        return self.start_step
