"""What an RL step trains on: the student's own samples (G per prompt, with dynamic sampling until enough groups
have mixed rewards), fixed teacher traces, or fresh teacher traces, each row rewarded by the verifier. `Collecting`
is the part of `rakd.train.rl.RLTrainer` that gathers them (it reads the trainer's config, models and world)."""

from __future__ import annotations

import dataclasses
import functools
import random

import torch

from rakd.flops import rollout_flops
from rakd.losses import group_advantages
from rakd.rollout import Rollouts, concat_rollouts, sample, select_rows
from rakd.train.batches import pack_pairs
from rakd.train.common import step_seed
from rakd.train.distributed import World
from rakd.verify import reward


@dataclasses.dataclass
class Collected:
    """A step's rows (`batch`, their `rewards`), the sampling metrics (`info`) and each row's position among the
    step's rows over every rank (`positions`: what the world's minibatches are cut by)."""

    batch: Rollouts
    rewards: torch.Tensor
    info: dict
    positions: torch.Tensor


def shared_positions(world: World, local_units: int, unit: int, offset: int = 0) -> torch.Tensor:
    """Positions over every rank of this rank's rows when a list of units (prompts, or traces) was shared out with
    `world.share` (rank r holds units r, r + size, ...) and each unit became `unit` consecutive rows."""
    units = torch.arange(local_units).repeat_interleave(unit) * world.size + world.rank
    return offset + units * unit + torch.arange(unit).repeat(local_units)


class Collecting:
    """The RL trainer's collection of a step's rows (needs `cfg`, `spec`, `records`, `traces`, `seed`, `world`,
    `student`, `teacher`, `tokenizer`, `student_dims` and `teacher_dims`)."""

    def prompt_order(self, step: int) -> list[dict]:
        """The prompts step `step` may draw, in order: `prompts_per_step` per draw, never one twice in a step."""
        rng = random.Random(step_seed(self.seed, step, salt=101))
        draws = self.cfg.max_draws if self.dynamic_sampling else 1
        return rng.sample(self.records, min(self.cfg.prompts_per_step * draws, len(self.records)))

    def collect(self, step: int) -> Collected:
        """The step's rows: student samples for on-policy methods, teacher traces otherwise (new ones for
        `fresh_traces` methods)."""
        if self.spec.fresh_traces:
            return self.fresh_traces(step)
        if not self.spec.on_policy:
            rng = random.Random(step_seed(self.seed, step, salt=13))
            picked = rng.sample(self.traces, min(len(self.traces), self.cfg.prompts_per_step * self.cfg.group_size))
            picked = self.world.share(picked)
            batch = pack_pairs(self.tokenizer, [(t["question"], t["completion"]) for t in picked])
            rewards = torch.tensor([reward(text, t["answer"]) for text, t in zip(batch.texts, picked)])
            info = {"reward_mean": float(rewards.mean()), "flops_student_sample": 0}
            return Collected(batch, rewards, info, shared_positions(self.world, len(picked), 1))
        return self.draw_groups(step)

    @functools.cached_property
    def trace_order(self) -> list[dict]:
        """The RL pool in the seeded order seqkd_fresh traces it."""
        return random.Random(step_seed(self.seed, 0, salt=211)).sample(self.records, len(self.records))

    def fresh_traces(self, step: int) -> Collected:
        """seqkd_fresh: the teacher samples G solutions of `prompts_per_step` questions of the RL pool that no earlier
        step traced (the step's slice of one seeded order, starting over once the pool is used up), at the RL
        sampling temperature; the verifier's rewards say which rows train. Every sample costs teacher decoding."""
        order, size = self.trace_order, self.cfg.prompts_per_step
        chosen = self.world.share([order[(step * size + i) % len(order)] for i in range(min(size, len(order)))])
        questions = [r["question"] for r in chosen for _ in range(self.cfg.group_size)]
        batch = sample(
            self.teacher,
            self.tokenizer,
            questions,
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature,
            seed=step_seed(self.seed, step, salt=17 + 104729 * self.world.rank),
            backend=self.cfg.backend,
            group_size=self.cfg.group_size,
        )
        answers = [r["answer"] for r in chosen for _ in range(self.cfg.group_size)]
        rewards = torch.tensor([reward(text, answer) for text, answer in zip(batch.texts, answers)])
        generated = int(self.world.sum(rollout_flops(self.teacher_dims, batch)))
        info = {"reward_mean": float(rewards.mean()), "flops_student_sample": 0, "flops_teacher_generate": generated}
        return Collected(batch, rewards, info, shared_positions(self.world, len(chosen), self.cfg.group_size))

    @property
    def dynamic_sampling(self) -> bool:
        """Whether steps draw more prompts until they hold `min_informative_groups` groups with mixed rewards: only
        for a loss that reads an advantage (for the others an all-equal group is a signal like any other)."""
        return bool(self.cfg.min_informative_groups) and self.spec.trains_on == "informative"

    def draw_groups(self, step: int) -> Collected:
        """G samples for each of `prompts_per_step` prompts; with dynamic sampling, more draws until the step holds
        `min_informative_groups` groups with mixed rewards (all-equal groups are dropped when zero_adv=skip)."""
        cfg, group = self.cfg, self.cfg.group_size
        order, kept, kept_rewards, every_reward, informative, draws = self.prompt_order(step), [], [], [], 0, 0
        first, sampled_flops, kept_positions = None, 0, []
        for start in range(0, len(order), cfg.prompts_per_step):
            chosen, draws = self.world.share(order[start : start + cfg.prompts_per_step]), draws + 1
            batch = sample(
                self.student,
                self.tokenizer,
                [r["question"] for r in chosen for _ in range(group)],
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=step_seed(self.seed, step, salt=7 + 7919 * start + 104729 * self.world.rank),
                backend=cfg.backend,
                group_size=group,
            )
            rewards = torch.tensor(
                [reward(t, a) for t, a in zip(batch.texts, [r["answer"] for r in chosen for _ in range(group)])]
            )
            sampled_flops += rollout_flops(self.student_dims, batch)  # every draw costs, kept or not
            positions = shared_positions(self.world, len(chosen), group, offset=start * group)
            every_reward.append(rewards)
            first = first or (batch, rewards, positions)
            mixed = ~group_advantages(rewards, group)[1]
            if self.dynamic_sampling and cfg.zero_adv == "skip":
                keep = torch.nonzero(mixed).squeeze(-1)
                batch, rewards, positions = select_rows(batch, keep), rewards[keep], positions[keep]
            kept.append(batch)
            kept_rewards.append(rewards)
            kept_positions.append(positions)
            informative += int(self.world.sum(int(mixed.sum()) // group))  # every rank decides alike
            if not self.dynamic_sampling or informative >= cfg.min_informative_groups:
                break
        every_reward = torch.cat(every_reward)
        drawn = self.world.sum(len(every_reward))
        info = {
            "reward_mean": self.world.sum(float(every_reward.sum())) / max(1, drawn),
            "accuracy": self.world.sum(float((every_reward == 1).sum())) / max(1, drawn),
            "draws": draws,
            "groups_drawn": int(drawn) // group,
            "groups_informative": informative,
            "informative_frac": informative / max(1, int(drawn) // group),
            "flops_student_sample": int(self.world.sum(sampled_flops)),
        }
        if not informative:  # nothing to learn from in any draw: the first draw, whole (zero_adv decides)
            return Collected(first[0], first[1], info, first[2])
        batch = concat_rollouts(kept, self.tokenizer.pad_token_id)
        return Collected(batch, torch.cat(kept_rewards), info, torch.cat(kept_positions))
