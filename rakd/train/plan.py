"""What one RL step runs, decided once for the whole world from the method's `LossSpec`, and what it costs.

The trainer both runs and charges its passes from one `StepPlan`, so the ledger counts what ran: the teacher scores
the sampled tokens only for a loss that reads their log-probs (or for the degenerate groups' KL term with
`rl.zero_adv: kd`), and computes whole distributions in every epoch only for a loss that reads logits; π_old gets a
pass of its own only when the update takes more than one optimiser step. Under torchrun every decision here is
taken from the world's row count, never a rank's own: a rank that skipped π_old while another took several
optimiser steps would train its later minibatches on a ratio of exactly 1, never clipped.

`minibatch_chunks` cuts the world's loss rows into the same minibatches whatever the number of processes: one
seeded shuffle over the step's global row positions, cut into `chunks` equal parts, each rank taking its rows of
each part, so that a step under torchrun takes the one-process step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rakd.flops import Ledger, ModelDims, rollout_flops

TeacherRows = Literal["none", "loss", "kd"]


@dataclass(frozen=True)
class StepPlan:
    """One step's passes. `teacher_logprobs`: which rows the teacher scores (every loss row, only the degenerate
    groups' KD rows, or none); `teacher_logit_passes`: teacher forward passes for whole distributions (one per
    epoch); `old_pass`: π_old from a pass of its own; `chunks` minibatches in each of `epochs` epochs."""

    teacher_logprobs: TeacherRows
    teacher_logit_passes: int
    old_pass: bool
    epochs: int
    chunks: int

    @classmethod
    def make(cls, spec, cfg, world_rows: int, *, kd: bool) -> StepPlan:
        """The plan for a step whose loss rows number `world_rows` over every rank; `kd`: the degenerate groups
        train on KL to the teacher (`rl.zero_adv: kd`)."""
        chunks = -(-int(world_rows) // cfg.minibatch_size)
        epochs = cfg.ppo_epochs if chunks else 0
        teacher: TeacherRows = "loss" if spec.teacher == "logprobs" else "kd" if kd else "none"
        needs_old = "old_logprobs" in spec.inputs or kd
        return cls(
            teacher_logprobs=teacher if chunks else "none",
            teacher_logit_passes=epochs if spec.teacher == "logits" else 0,
            old_pass=needs_old and (epochs > 1 or chunks > 1),
            epochs=epochs,
            chunks=chunks,
        )

    def ledger(self, student: ModelDims, teacher: ModelDims, loss_rows, teacher_rows) -> Ledger:
        """This rank's teacher and update phases: the teacher's log-prob pass over `teacher_rows` and its logit
        passes over `loss_rows`, the update's training passes over `loss_rows` and a separate π_old pass."""
        scored = rollout_flops(teacher, teacher_rows) if self.teacher_logprobs != "none" else 0
        update = self.epochs * rollout_flops(student, loss_rows, training=True)
        return Ledger(
            teacher_score=scored + self.teacher_logit_passes * rollout_flops(teacher, loss_rows),
            student_update=update + (rollout_flops(student, loss_rows) if self.old_pass else 0),
        )


def minibatch_chunks(positions: torch.Tensor, chunks: int, seed: int, world) -> list[torch.Tensor]:
    """Indices into `positions` (this rank's loss rows, each named by its position among the step's rows over
    every rank) of each of `chunks` minibatches: a seeded shuffle of every position, the world's loss rows in that
    order cut into `chunks` equal parts, this rank's rows of each part in that order. Every rank gets `chunks`
    parts (some may be empty), and any number of processes cuts the same world rows into the same parts."""
    space = int(world.max(int(positions.max()) + 1 if len(positions) else 0))
    if not chunks or not space:
        return []
    shuffle = torch.randperm(space, generator=torch.Generator().manual_seed(seed))
    place = torch.empty_like(shuffle)
    place[shuffle] = torch.arange(space)  # where each position falls in the shuffled order
    taken = torch.zeros(space, dtype=torch.float64)
    taken[positions] = 1.0
    world_places = place[world.sum_tensor(taken).nonzero().squeeze(-1)].sort().values
    ends = torch.stack([part[-1] for part in world_places.tensor_split(chunks)])
    mine = place[positions]
    part_of = torch.bucketize(mine, ends)  # part k holds the places in (ends[k-1], ends[k]]
    return [torch.nonzero(part_of == k).squeeze(-1)[mine[part_of == k].argsort()] for k in range(chunks)]
