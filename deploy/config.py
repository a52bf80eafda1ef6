"""The `validation` and `package` config sections (no heavy imports: every `rakd` command loads them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rakd.schema import StageConfig


class Gates(StageConfig):
    """What an artefact must meet to be shipped (null: that gate is off)."""

    min_accuracy: float = Field(0.3, ge=0, le=1, description="greedy accuracy an artefact needs (0: not gated)")
    max_accuracy_drop: float | None = Field(0.05, ge=0, description="absolute drop vs the fp32 reference")
    max_latency_ms_p95: float | None = Field(500, gt=0, description="one problem, greedy, on `threads` threads")
    max_size_mb: float | None = Field(50, gt=0, description="weights on disk (MB)")
    max_kld_mean: float | None = Field(
        None,
        ge=0,
        description="mean token KL divergence (nats) from the fp32 reference over its own greedy completions",
    )
    max_flips_to_wrong: float | None = Field(
        None,
        ge=0,
        le=1,
        description="share of the problems the reference solves and the artefact gets wrong (flips the other way "
        "are not counted against it)",
    )


class ValidateConfig(StageConfig):
    """Every artefact on the runtime a device uses, one problem at a time."""

    n_problems: int = Field(300, ge=1, description="first N problems of the data file")
    max_new_tokens: int = Field(64, ge=1, description="greedy decoding stops here (the answer counts as given)")
    threads: int = Field(1, ge=1, description="runtime threads, as on the device")
    warmup: int = Field(1, ge=0, description="untimed problems first (loads caches, JIT)")
    reference_batch: int = Field(
        64, ge=1, description="problems the PyTorch reference decodes at once (it is not timed: not a device runtime)"
    )
    kld_top_k: int = Field(
        256,
        ge=0,
        description="the reference's most likely tokens kept at each position for the KL divergence, the rest of its "
        "mass lumped into one outcome: a lower bound of the exact KLD (tests/test_agreement.py bounds the error); 0: "
        "every token, exact",
    )
    seed: int = Field(0, description="runtime seed (decoding is greedy)")
    isolate: bool = Field(True, description="one spawned process per artefact (own peak RSS, crash isolation)")
    gates: Gates = Field(default_factory=Gates)
    progress_every: int = Field(50, ge=1, description="a progress line every N problems (in logs)")


class PackageConfig(StageConfig):
    """The shipped bundle: the chosen artefact(s), tokenizer, model card, Modelfile and manifest."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="default: the run name")
    version: str = Field("0.1.0", description="the package's version in its manifest")
    prefer: Literal["gguf", "onnx", "any"] = Field("gguf", description="format to ship when both passed")
    include: Literal["best", "best-per-format"] = Field(
        "best", description="the most accurate artefact that passed, or the best of each format"
    )
