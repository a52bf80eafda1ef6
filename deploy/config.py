"""The `validation` and `package` config sections (no heavy imports: every `rakd` command loads them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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


class ShipBudget(StageConfig):
    """What the shipped model must meet: the package takes the artefact it picks among every validated one that
    passed its gates, the teacher's own included, so when no student meets it better than the teacher's own
    quantisation, the teacher's ships (and the package says why)."""

    latency_ms_p50: float | None = Field(None, gt=0, description="at most this latency per problem, p50 (ms)")
    size_mb: float | None = Field(None, gt=0, description="at most this file size (MB)")
    accuracy_loss: float | None = Field(
        None,
        ge=0,
        le=1,
        description="at most this far below the accuracy of the teacher's best artefact (0.03: 3 points), and then "
        "the fastest such artefact; null: the most accurate within the latency and size budgets",
    )

    @model_validator(mode="after")
    def _some_budget(self):
        if self.latency_ms_p50 is None and self.size_mb is None and self.accuracy_loss is None:
            raise ValueError("package.budget: give latency_ms_p50, size_mb or accuracy_loss (or budget: null)")
        return self


class PackageConfig(StageConfig):
    """The shipped bundle: the chosen artefact(s), tokenizer, model card, Modelfile and manifest."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="default: the run name")
    version: str = Field("0.1.0", description="the package's version in its manifest")
    prefer: Literal["gguf", "onnx", "any"] = Field("gguf", description="format to ship when both passed")
    include: Literal["best", "best-per-format"] = Field(
        "best", description="the most accurate artefact that passed, or the best of each format"
    )
    budget: ShipBudget | None = Field(
        None,
        description="pick the artefact a latency, size or accuracy-loss budget allows, among the student's and the "
        "teacher's (export.teacher: true); null: the most accurate of the student's",
    )
