"""The config sections of the core stages (teacher, distill, compare) and of what they share (evaluation, the
teacher's scorer). Light: pydantic only, so the command line, `rakd verify-package` and loading a config never
import torch or transformers; the stage modules read their sections from here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rakd.models.source import ModelSource
from rakd.schema import KEYED_WHEN_SET, StageConfig
from rakd.train.config import LossParams, Method, OptimConfig, Precision, RLConfig, SFTConfig


def precision_field(what: str):
    """A stage's `precision` setting (rakd.train.common.resolve_precision), `what` naming what runs under it."""
    return Field(
        "fp32",
        description=f"{what}: bf16 autocast (weights and optimiser state stay fp32) or fp32; auto: bf16 on CUDA and "
        "on a CPU with AMX, fp32 elsewhere (where bf16 is slower: AVX512_BF16 alone ran it at half fp32's speed); "
        "fp32 by default: the embedded default's small models gain nothing from bf16",
    )


class EvalConfig(StageConfig):
    """Accuracy on a split: greedy, and pass@k / mean@k of k sampled answers."""

    n_problems: int = Field(500, ge=1, description="first N problems of the split")
    k_samples: int = Field(4, ge=0, description="samples per problem at temperature 1 (0: greedy only)")
    max_new_tokens: int = Field(64, ge=1, description="a longer answer counts as wrong")
    batch_size: int = Field(256, ge=1, description="problems decoded together")
    seed: int = Field(1234, description="seed of the sampled (k_samples) answers")
    per_problem: bool = Field(False, description="also record each problem's greedy 0/1 (paired comparisons)")


class ScorerConfig(StageConfig):
    """Where the teacher's log-probs of the sampled tokens come from."""

    kind: Literal["torch", "llama_cpp", "openai"] = Field(
        "torch", description="where the teacher's log-probs come from"
    )
    gguf: str | None = Field(None, description="llama_cpp: the teacher as a GGUF file (its vocabulary: the student's)")
    threads: int = Field(1, ge=1, description="llama_cpp: CPU threads")
    n_ctx: int = Field(0, ge=0, description="llama_cpp: context length (0: the model's own)")
    url: str | None = Field(None, description="openai: the server's base URL, e.g. http://teacher-host:8000")
    model: str | None = Field(None, description="openai: the model name the server expects (vLLM: as served)")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable with a bearer key, if set")
    batch_rows: int = Field(16, ge=1, description="openai: rows per request")
    timeout_s: float = Field(120.0, gt=0, description="openai: seconds to wait for one request")
    retries: int = Field(2, ge=0, description="openai: retries of a request that failed to connect or got a 5xx")


class ValStop(StageConfig):
    """End an SFT once the model reaches a greedy val accuracy, or at its plateau, rather than after a fixed number
    of steps: the warm start's SFT on few traces is on a steep learning curve, so a step count lands anywhere from
    "solves nothing new" to the plateau; a comparison regime stops at a target on purpose; a pretrained teacher
    tuned on the task is done at its plateau (rakd.stages.stop)."""

    val_accuracy: float | None = Field(
        None, gt=0, le=1, description="greedy accuracy on the checked val questions that ends SFT (null: no target)"
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="also end SFT at its plateau: after this many checks in a row without a new best val accuracy "
        "(early stopping; null: never)",
    )
    min_difficulty: int | None = Field(
        None,
        ge=1,
        description="check only val questions with at least this many operations (None, or a source with no "
        "difficulty at all such as GSM8K: every val question)",
    )
    every: int = Field(25, ge=1, description="check every N SFT steps")
    problems: int = Field(200, ge=1, description="val questions per check (the first N that qualify)")
    decay_steps: int | None = Field(
        None,
        ge=1,
        description="at the plateau, train this many more steps with the learning rate falling linearly from where "
        "it is to 0, then stop, checking val at the end (the decay of a warmup-stable-decay schedule: a model "
        "stopped at a high rate's plateau is noisier than one annealed); null: stop at the plateau",
    )

    @model_validator(mode="after")
    def _a_reason_to_stop(self):
        if self.val_accuracy is None and self.patience is None:
            raise ValueError("stop needs val_accuracy (a target), patience (the plateau) or both")
        if self.decay_steps is not None and self.patience is None:
            raise ValueError("stop.decay_steps decays the learning rate at the plateau: set stop.patience too")
        return self


class TeacherConfig(StageConfig):
    """The teacher: a checkpoint evaluated as it is or tuned on the task, or a preset trained from scratch on the
    CoT traces."""

    model: ModelSource = Field(default_factory=lambda: ModelSource(preset="teacher-tiny"))
    train: SFTConfig = Field(
        default_factory=lambda: SFTConfig(
            steps=800, checkpoint_every=200, log_every=100, optim=OptimConfig(min_lr_ratio=0.05)
        )
    )
    tune: bool = Field(
        False,
        description="a checkpoint (model.path): fine-tune it with `train` on the train split's worked solutions, "
        "through its chat template, before its evaluation; eval.json keeps its accuracy before (false: evaluated "
        "as it is)",
    )
    stop: ValStop | None = Field(
        None,
        description="end the teacher's training at a greedy val accuracy or at its plateau (train.steps is then "
        "the most it runs; null: train.steps)",
    )
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig(n_problems=1000))
    threads: int = Field(2, ge=0, description="torch CPU threads (0: torch's default); per process with nproc > 1")
    nproc: int = Field(
        1, ge=1, description="processes for data-parallel training under torchrun on this machine (one GPU each)"
    )
    device: str = Field("auto", description="auto (cuda when there is one), cpu, cuda, cuda:1, ...")
    precision: Precision = precision_field("training and evaluation")
    seed: int = Field(0, description="the from-scratch teacher's initial weights and data order")

    @model_validator(mode="after")
    def _tune_needs_a_checkpoint(self):
        if self.tune and self.model.path is None:
            raise ValueError(
                "teacher.tune fine-tunes a checkpoint: set teacher.model.path (a preset teacher trains from scratch "
                "with teacher.train anyway)"
            )
        return self


class LayerPrune(StageConfig):
    """A student of the teacher's layers chosen by measurement (rakd.models.prune): the rules' candidates measured
    by their KL to the teacher on its own completions of train questions."""

    layers: int = Field(ge=1, description="decoder layers the student keeps")
    by: Literal["measured", "block_influence", "angular", "even"] = Field(
        "measured",
        description="measured: the candidate of least KL to the teacher; or one rule's layers (block_influence: the "
        "layers of most Block Influence; angular: all but the contiguous block of least angular distance; even: "
        "evenly spaced)",
    )
    kept: list[int] | None = Field(
        None, description="the layers to keep, given (ascending indices; `layers` must be their count): no measurement"
    )
    ffn: int | None = Field(
        None,
        ge=1,
        description="also width: the feed-forward channels each kept layer keeps, by activation importance on the same "
        "completions (a multiple of 256 keeps llama.cpp's k-quants; null: all)",
    )
    kv_heads: int | None = Field(
        None,
        ge=1,
        description="also width: the key-value head groups each kept layer keeps, each with its query heads, by the "
        "norm of their outputs on the same completions (the head size stays; null: all)",
        json_schema_extra=KEYED_WHEN_SET,
    )
    calibration: int = Field(64, ge=1, description="train questions whose teacher completions the choice reads")
    max_new_tokens: int = Field(64, ge=1, description="length of those completions")

    @model_validator(mode="after")
    def _kept_matches(self):
        if self.kept is not None and len(self.kept) != self.layers:
            raise ValueError(f"distill.student.prune.kept lists {len(self.kept)} layers, layers says {self.layers}")
        return self


class StudentSource(StageConfig):
    """A model source, or a layer subset of the teacher (`from_teacher_every_k`, or `prune`: chosen by measurement):
    exactly one. Setting a subset alone takes the place of the default model."""

    model: ModelSource | None = Field(default_factory=lambda: ModelSource(preset="student-tiny"))
    from_teacher_every_k: int | None = Field(
        None,
        ge=1,
        description="a student of the teacher's layers 0, k, 2k, ... (its embeddings and head too); set model: null",
    )
    prune: LayerPrune | None = Field(
        None, description="a student of the teacher's layers chosen by measurement (its embeddings and head too)"
    )

    @model_validator(mode="before")
    @classmethod
    def _subset_replaces_the_default_model(cls, data):
        subset = (
            any(data.get(key) is not None for key in ("from_teacher_every_k", "prune"))
            if isinstance(data, dict)
            else False
        )
        if subset and "model" not in data:
            return {**data, "model": None}
        return data

    @model_validator(mode="after")
    def _one_source(self):
        given = [self.model is not None, self.from_teacher_every_k is not None, self.prune is not None]
        if sum(given) != 1:
            raise ValueError(
                "give exactly one of distill.student.model (a preset or a path), "
                "distill.student.from_teacher_every_k (a layer subset of the teacher) and distill.student.prune "
                "(layers chosen by measurement)" + (": set distill.student.model=null" if given[0] else "")
            )
        return self


class HealKD(StageConfig):
    """The warm start's SFT as distillation: at every completion token of the teacher's verified traces, the forward
    KL to the teacher's distribution (its top-k tokens and the tail's mass, teacher-forced) plus `ce_weight` x the
    trace's cross-entropy (rakd.losses.distill.heal_loss)."""

    top_k: int = Field(
        32, ge=1, description="the teacher's most likely tokens kept at each position (the rest: a tail)"
    )
    ce_weight: float = Field(0.5, ge=0, description="weight of the trace's cross-entropy beside the KL")


class WarmStartRecover(StageConfig):
    """What the warm start does while it misses its target: traces for more of the harder questions (of the same
    `n_prompts`, so RL's unseen questions stay unseen), and SFT goes on with them (rakd.stages.traces)."""

    after: int = Field(300, ge=1, description="SFT steps of a round without reaching the target before the next")
    add_fraction: float = Field(
        0.1, gt=0, le=1, description="each round adds this much to harder_fraction (0.2 -> 0.3 -> 0.4 ...)"
    )
    rounds: int = Field(3, ge=1, description="at most this many rounds after the first")


class WarmStartConfig(StageConfig):
    """Rejection-sampled SeqKD: teacher traces the verifier accepts, then SFT."""

    n_prompts: int = Field(6000, ge=0, description="train questions the teacher answers (0: no warm start)")
    max_difficulty: int | None = Field(
        None,
        ge=1,
        description="a curriculum: of the n_prompts questions, only those with at most this many operations (the "
        "records' `ops`) plus `harder_fraction` of the harder ones, so that RL works at an edge the student has only "
        "glimpsed (None: every question; questions with no difficulty at all, e.g. GSM8K, are all kept)",
    )
    harder_fraction: float = Field(
        0.2, ge=0, le=1, description="with max_difficulty: the share of harder questions kept (chosen by seed)"
    )
    samples_per_prompt: int = Field(
        1, ge=1, description="teacher samples per question; the verifier keeps the right ones"
    )
    temperature: float = Field(0.7, gt=0, description="the teacher's sampling temperature for the traces")
    max_new_tokens: int = Field(64, ge=1, description="longest trace")
    sft: SFTConfig = Field(
        default_factory=lambda: SFTConfig(
            steps=2000, log_every=100, optim=OptimConfig(warmup_steps=20, min_lr_ratio=0.05, weight_decay=0.1)
        )
    )
    stop: ValStop | None = Field(
        default_factory=lambda: ValStop(patience=4, every=50),
        description="stop SFT early, at its val plateau (patience) or at a target val accuracy (sft.steps is then "
        "the most it runs); the default, the plateau, is what the comparison's regimes support (docs/results.md, "
        "which method when)",
    )
    base: SFTConfig | None = Field(
        None,
        description="before any trace: SFT of the student on every train question with its bare final answer "
        "(`A: 46`, no worked solution), a base model that has seen the task but no reasoning (the comparison's "
        "base-start regime); null: none",
    )
    kd: HealKD | None = Field(
        None,
        description="heal by distillation: SFT's loss is the forward KL to the teacher at every trace token plus a "
        "CE term (null: plain SFT on the traces)",
    )
    recover: WarmStartRecover | None = Field(
        None,
        description="while a target (stop.val_accuracy) is missed: more traces of the harder questions (null: never)",
    )


class RLLearningRates(StageConfig):
    """The RL learning rate chosen on val: one RL run per rate from the warm-started student, each read on the same
    val problems; the student kept is the best of them and of the warm-started student itself (no RL), ties going
    to the warm start, then to the smaller rate."""

    lrs: list[float] = Field(min_length=2, description="RL learning rates tried, each a run of distill.rl.steps")
    problems: int = Field(200, ge=1, description="val problems every candidate is read on (greedy)")

    @model_validator(mode="after")
    def _positive(self):
        if min(self.lrs) <= 0 or len(set(self.lrs)) < len(self.lrs):
            raise ValueError(f"distill.rl_lr.lrs: {self.lrs}: each rate must be above 0 and given once")
        return self


class DistillConfig(StageConfig):
    """The student, its warm start on the teacher's traces and the RL-aware distillation after it."""

    student: StudentSource = Field(default_factory=StudentSource)
    method: Method = Field(
        "grpo",
        description="the loss of the RL stage (rakd.losses.LOSSES; rakd is TRRD); the default is what "
        "rakd.stages.advice's rule picks for the embedded default's student (docs/results.md, which method when)",
    )
    loss: LossParams = Field(default_factory=LossParams)
    warmstart: WarmStartConfig = Field(default_factory=WarmStartConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    teacher_scorer: ScorerConfig = Field(
        default_factory=ScorerConfig, description="where the teacher's log-probs come from (rakd/scorers.py)"
    )
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig(n_problems=1000))
    checkpoint_every: int = Field(40, ge=1, description="RL steps between checkpoints (a crash resumes from the last)")
    eval_every: int = Field(40, ge=0, description="evaluate on the val split every N RL steps (0: never)")
    val_problems: int = Field(200, ge=1, description="val problems of each eval_every check")
    threads: int = Field(2, ge=0, description="torch CPU threads (0: torch's default); per process with nproc > 1")
    nproc: int = Field(
        1, ge=1, description="processes for data-parallel RL under torchrun on this machine (one GPU each on CUDA)"
    )
    fsdp: bool = Field(
        False,
        description="shard the student's weights, gradients and optimiser state across the nproc processes "
        "(torch FSDP2), for a student that does not fit on one device; needs nproc > 1",
    )
    device: str = Field("auto", description="auto (cuda when there is one), cpu, cuda, cuda:1, ...")
    precision: Precision = precision_field(
        "the warm start's traces and SFT, RL's sampling, scoring and updates, and every evaluation"
    )
    seed: int = Field(0, description="the student's initial weights, the traces' sampling, the RL prompts and samples")
    rl_lr: RLLearningRates | None = Field(
        None,
        description="choose RL's learning rate on val: one run per rate, the best on val kept (the warm-started "
        "student, no RL, among the candidates); null: one run at distill.rl.optim.lr",
    )
    fail_after_step: int | None = Field(None, description="fault injection for tests: crash after this RL step")

    @model_validator(mode="after")
    def _combinations(self):
        if self.fsdp and self.nproc < 2:
            raise ValueError("distill.fsdp shards the student across processes: set distill.nproc to 2 or more")
        problem = scorer_problem(self.teacher_scorer, self.method, self.rl.temperature)
        if problem:
            raise ValueError(problem)
        if self.warmstart.n_prompts == 0 and self.warmstart.stop is not None:
            raise ValueError(
                "distill.warmstart.n_prompts=0 (no warm start) leaves distill.warmstart.stop no SFT to stop: "
                "set distill.warmstart.stop=null"
            )
        if self.rl_lr is not None:
            problem = rl_lr_problem(self)
            if problem:
                raise ValueError(problem)
        if self.method == "sft" and self.warmstart.n_prompts == 0:
            raise ValueError(
                "distill.method='sft' trains on the warm start's teacher traces, and distill.warmstart.n_prompts=0 "
                "leaves none: use method 'seqkd_fresh' (it buys new traces from the teacher) or set n_prompts"
            )
        return self


def rl_lr_problem(cfg: DistillConfig) -> str | None:
    """Why `distill.rl_lr` cannot be used with the rest of `cfg`, naming the keys; None if it can."""
    if cfg.rl.steps == 0:
        return "distill.rl_lr chooses RL's learning rate, and distill.rl.steps=0 runs no RL: set one or the other"
    if cfg.nproc > 1:
        return "distill.rl_lr runs its candidates one after another in one process: set distill.nproc=1"
    budgets = [k for k in ("time_budget_s", "flops_budget", "readout_steps", "readout_seconds") if getattr(cfg.rl, k)]
    if budgets:
        return (
            f"distill.rl_lr runs every candidate to distill.rl.steps; distill.rl.{budgets[0]} (a compute-matched "
            "run of rakd compare) does not combine with it"
        )
    return None


def scorer_problem(cfg: ScorerConfig, method: str, temperature: float = 1.0) -> str | None:
    """Why the teacher scorer `cfg` cannot serve `method` at this sampling temperature, naming the keys; None if
    it can. Checked when a config loads and again when a scorer is made."""
    if cfg.kind == "torch":
        return None
    if method in ("gkd", "fkl"):
        return (
            f"distill.teacher_scorer.kind={cfg.kind!r}: method {method!r} needs the teacher's whole distribution at "
            "every position; use kind 'torch' (or a method that needs only log-probs: rakd, grpo_kl, opd)"
        )
    if cfg.kind == "openai" and not cfg.url:
        return "distill.teacher_scorer.url: kind 'openai' needs the server's URL"
    if cfg.kind == "openai" and temperature != 1.0:
        return (
            f"distill.teacher_scorer.kind='openai' returns log-probs of the raw logits: distill.rl.temperature must "
            f"be 1 (it is {temperature:g})"
        )
    if cfg.kind == "llama_cpp" and not cfg.gguf:
        return "distill.teacher_scorer.gguf: kind 'llama_cpp' needs the teacher's GGUF file"
    return None


class CompareConfig(StageConfig):
    """`rakd compare`: methods x seeds x alphas from one warm start, on Dask, at an equal budget."""

    regime: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="a name for this comparison: its warm start, jobs and results go to <run>/compare/<regime>/ "
        "(null: <run>/compare/), so several regimes share one run's data and teacher",
    )
    methods: list[Method] = Field(
        default_factory=lambda: ["rakd", "grpo", "grpo_kl", "opd", "gkd", "seqkd_fresh", "sft"],
        min_length=1,
        description="methods compared (sft is labelled sft_continue: more epochs on the warm start's traces)",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="one job per seed and method")
    alphas: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7], description="rakd only")
    clamp_off: bool = Field(False, description="also run rakd with the teacher clamp switched off")
    lrs: list[float] = Field(default_factory=list, description="RL learning rates (default: distill.rl.optim.lr)")
    method_lrs: dict[Method, list[float]] = Field(
        default_factory=dict,
        description="a method's own learning rates in place of lrs (the SFT arms of a pretrained pair need larger "
        "ones than its RL methods), swept and chosen the same way",
    )
    lr_choice: Literal["variant", "val"] = Field(
        "variant",
        description="with several lrs: each lr a variant of its own (variant), or each variant's lr chosen on val "
        "from its first seed's jobs at every lr, and only the chosen lr run on the other seeds (val: the same sweep "
        "for every method; test is read for the chosen ones only)",
    )
    extra_seeds: list[int] = Field(
        default_factory=list,
        description="seeds added to every variant whose mean greedy accuracy at the equal budget lies within "
        "close_points of another variant's (few seeds cannot part close methods)",
    )
    close_points: float = Field(2.0, ge=0, description="extra_seeds: how close (accuracy points) counts as close")
    steps: int | None = Field(None, ge=1, description="RL steps of the reference jobs (default: distill.rl.steps)")
    budget: Literal["steps", "seconds", "flops"] = Field(
        "flops",
        description="what every job gets as much of as the reference rakd jobs spent: their steps, their wall "
        "seconds, or their training FLOPs (the ledger: teacher generation and scoring, student sampling and updates)",
    )
    flops: float | None = Field(
        None, gt=0, description="budget flops: this many training FLOPs per job (default: the reference jobs' mean)"
    )
    eval_every: int = Field(25, ge=1, description="val accuracy every N steps (the curves)")
    val_problems: int = Field(200, ge=1, description="val problems of each curve point")
    workers: int = Field(0, ge=0, description="Dask workers of the local cluster (0: one per CPU core)")
    dask_address: str | None = Field(None, description="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    interval_level: float = Field(
        0.95, gt=0, lt=1, description="coverage of the intervals against the reference (rakd.compare.stats: Welch t)"
    )

    @model_validator(mode="after")
    def _method_lrs_name_compared_methods(self):
        stray = sorted(set(self.method_lrs) - set(self.methods))
        if stray:
            raise ValueError(f"compare.method_lrs names {stray}, not in compare.methods {self.methods}")
        empty = sorted(m for m, lrs in self.method_lrs.items() if not lrs or min(lrs) <= 0)
        if empty:
            raise ValueError(f"compare.method_lrs: no learning rate, or one not above 0, for {empty}")
        return self
