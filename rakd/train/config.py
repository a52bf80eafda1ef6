"""The trainers' config sections: optimiser, SFT, the loss hyper-parameters and RL (light: no torch import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rakd.schema import LOSS_DEFAULTS, Aggregation, Backend, Precision, StageConfig

__all__ = ["Aggregation", "Backend", "Precision"]

# sft: SFT continued on the warm start's traces; seqkd_fresh: SFT on new teacher traces each step (SeqKD that pays
# for its traces); the rest learn from the student's own samples or the teacher's distributions (rakd.losses);
# rakd_lower: TRRD with the teacher term only where it lowers the ratio
Method = Literal["sft", "seqkd_fresh", "fkl", "gkd", "opd", "grpo", "grpo_kl", "rakd", "rakd_lower"]


class OptimConfig(StageConfig):
    """AdamW with a linear warm-up, then a cosine decay (or a constant rate)."""

    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    warmup_steps: int = Field(50, ge=0, description="steps of linear warm-up from 0 to lr")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="after the warm-up")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine: the last step's rate as a share of lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW's moment decay rates")


class SFTConfig(StageConfig):
    """Next-token training on (question, completion) pairs, the loss on completion tokens only."""

    steps: int = Field(1000, ge=0, description="optimiser steps")
    batch_size: int = Field(64, ge=1, description="pairs per step")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: only at the end)")
    log_every: int = Field(25, ge=1, description="steps between progress lines (a metrics row is written every step)")


class LossParams(StageConfig):
    """Hyper-parameters of the losses; each method takes the ones its loss function declares. The defaults are
    rakd.schema.LOSS_DEFAULTS, which the loss functions' keyword defaults read too; `agg` left at None is the
    method's own (its loss function's default)."""

    alpha: float = Field(
        LOSS_DEFAULTS.alpha, ge=0, le=1, description="rakd (TRRD), rakd_lower: weight of the old policy in the anchor"
    )
    teacher_clamp: float | None = Field(
        LOSS_DEFAULTS.teacher_clamp,
        gt=0,
        description="rakd (TRRD), rakd_lower: clamp c on the teacher log-ratio (null: unclamped)",
    )
    eps_low: float = Field(
        LOSS_DEFAULTS.eps_low, ge=0, description="rakd/rakd_lower/grpo/grpo_kl: lower clip of the ratio"
    )
    eps_high: float = Field(
        LOSS_DEFAULTS.eps_high, ge=0, description="rakd/rakd_lower/grpo/grpo_kl: upper clip of the ratio"
    )
    agg: Aggregation | None = Field(
        None,
        description="seq_mean (mean over a row's tokens, then over rows) or token_mean (over every token of the "
        "batch); None: the method's own, token_mean for sft and opd, seq_mean for rakd, grpo and grpo_kl (fkl and gkd "
        "always average over tokens)",
    )
    kl_coef: float = Field(
        LOSS_DEFAULTS.kl_coef, ge=0, description="grpo_kl: weight of KL(student || teacher); also zero_adv=kd"
    )
    beta: float = Field(LOSS_DEFAULTS.beta, ge=0, le=1, description="gkd: JSD mixture weight (1: reverse KL)")
    kd_temperature: float = Field(
        LOSS_DEFAULTS.kd_temperature,
        gt=0,
        description="fkl/gkd: softmax temperature of the vocabulary KL (not the sampling temperature)",
    )


class RLConfig(StageConfig):
    """The RL loop: G samples per prompt, verifier rewards, group advantages, the method's loss."""

    steps: int = Field(50, ge=0, description="RL steps")
    prompts_per_step: int = Field(32, ge=1, description="prompts of one draw")
    group_size: int = Field(8, ge=1, description="samples per prompt (G)")
    max_new_tokens: int = Field(64, ge=1, description="longest completion sampled")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling (1: off)")
    ppo_epochs: int = Field(1, ge=1, description="passes over a step's rollouts")
    minibatch_size: int = Field(1024, ge=1, description="rollouts per optimiser step (>= the step's rows: one step)")
    zero_adv: Literal["skip", "kd"] = Field(
        "skip", description="groups whose rewards all agree: skip them, or train them on KL to the teacher"
    )
    min_informative_groups: int = Field(
        16,
        ge=0,
        description="dynamic sampling (DAPO): draw more prompts until the step holds this many groups with "
        "mixed rewards (0: one draw of prompts_per_step)",
    )
    max_draws: int = Field(3, ge=1, description="dynamic sampling: at most this many draws of prompts_per_step")
    prompts: Literal["unseen", "all"] = Field(
        "unseen",
        description="unseen: RL draws train questions the warm start's traces did not cover (all of "
        "train when too few are left); all: any train question",
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="stop after this many seconds of RL (a compute-matched baseline); steps stays the cap"
    )
    flops_budget: float | None = Field(
        None,
        gt=0,
        description="stop once RL's own training FLOPs (teacher generation and scoring, student sampling and "
        "updates; evaluation left out) reach this (a compute-matched baseline); steps stays the cap",
    )
    readout_steps: int | None = Field(
        None,
        ge=1,
        description="with a budget: also read the student out after this many RL steps, running past the spent "
        "budget if need be (rakd compare reads each job per step and per FLOP from one run; eval.json readouts)",
    )
    readout_seconds: float | None = Field(
        None,
        gt=0,
        description="with a budget: also read the student out once RL's compute seconds (sampling, teacher scoring "
        "and updates; evaluation left out) reach this, running past the spent budget if need be (rakd compare "
        "reads each job at the reference's seconds too)",
    )
    backend: Backend = Field(
        "auto",
        description="sampler: auto (graph on CUDA, loop elsewhere: the fastest measured on each), loop (our "
        "KV-cache loop), graph (our decode step over a pre-allocated cache, captured as a CUDA graph on CUDA), "
        "generate, or static (generate over a pre-allocated cache, compiled on CUDA); the same distribution "
        "(rakd.rollout)",
    )
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=10, schedule="constant"))
