"""Group-normalised advantages for GRPO-style methods."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, *, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """A_i = (r_i − mean r) / (std r + eps) within each group of `group_size` rollouts.

    `rewards` is (B,) with each prompt's G rollouts contiguous (B = n_prompts · G);
    std is the population standard deviation of the group. Returns
    `(advantages, degenerate)`: `degenerate` (B,) bool marks rollouts whose group
    rewards are all equal — they carry no RL signal (advantages exactly 0) and
    `zero_adv` decides their fate (skip, or the KD term).
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, unbiased=False)
    degenerate = (groups == groups[:, :1]).all(dim=1, keepdim=True)
    advantages = torch.where(degenerate, torch.zeros_like(groups), (groups - mean) / (std + eps))
    return advantages.view(-1), degenerate.expand_as(groups).reshape(-1)
