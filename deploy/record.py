"""The validation record: one `ArtefactRecord` per artefact, in one `ValidationReport`.

A record is filled in three steps, each by its own module: what the artefact's runtime measured
(deploy.measure.run_artefact), how it agrees with its model's fp32 reference (deploy.agreement, answer flips), and
which gates it fails (deploy.report.apply_gates). `report.json` is `ValidationReport.as_json()`; a package's
manifest keeps each record's `summary()`; every table of one is deploy.report.validation_rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class ArtefactRecord:
    # what was validated (deploy.artefacts.Artefact) and how big it is
    label: str
    format: str
    path: str | None = None
    reference: bool = False  # the fp32 PyTorch model its model's other artefacts are compared with
    model: str = "student"  # the student's, or the teacher's (validated beside it, never shipped)
    size_mb: float | None = None
    threads: int | None = None
    error: str | None = None  # why it could not run (it then fails the `loads` gate)
    # what its runtime measured on the problems (deploy.measure.run_artefact)
    n: int | None = None
    accuracy: float | None = None
    accuracy_flexible: float | None = None  # the last number when no answer is marked; never gated
    no_answer_rate: float | None = None
    ttft_ms_p50: float | None = None
    ttft_ms_p95: float | None = None
    decode_tok_s_p50: float | None = None
    decode_tok_s_p95: float | None = None
    latency_ms_p50: float | None = None  # None for the batched reference: it has no latency
    latency_ms_p95: float | None = None
    mean_new_tokens: float | None = None
    truncation_rate: float | None = None
    loop_rate: float | None = None
    load_s: float | None = None
    peak_rss_mb: float | None = None
    rss_before_load_mb: float | None = None
    runtime_rss_mb: float | None = None  # what loading and running the model added
    per_problem: dict[str, list] | None = None  # correct, new_tokens, loop: one entry per problem
    samples: list[dict] | None = None  # the first outputs with their questions and answers
    seconds_run: float | None = None
    # against its model's fp32 reference (deploy.agreement): answers, and tokens over the reference's completions
    flips_to_wrong: int | None = None
    flips_to_right: int | None = None
    kld_mean: float | None = None
    kld_p95: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None
    kld_tokens: int | None = None
    agreement_error: str | None = None
    seconds_agreement: float | None = None
    seconds_reference_distributions: float | None = None  # on the reference's record: computing them once
    # the gates (deploy.report.apply_gates)
    accuracy_drop: float | None = None  # the reference's accuracy minus this one's
    failed_gates: list[str] = field(default_factory=list)
    passed: bool = False
    accuracy_gated: bool = True  # whether a gate looked at accuracy at all (min_accuracy, or the drop)

    def update(self, values: Mapping[str, Any]) -> None:
        """Fill in what a step measured; a key the record does not have is an error that names it."""
        unknown = set(values) - NAMES
        if unknown:
            raise KeyError(f"not fields of a validation record: {sorted(unknown)}")
        for key, value in values.items():
            setattr(self, key, value)

    @property
    def correct(self) -> list[bool]:
        """Whether each problem was answered right (empty when it did not run)."""
        return list((self.per_problem or {}).get("correct", []))

    def as_json(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """What a package's manifest keeps: the record without its path, per-problem results and samples."""
        return {k: v for k, v in self.as_json().items() if k not in ("path", "per_problem", "samples")}

    @classmethod
    def from_json(cls, data: Mapping) -> ArtefactRecord:
        """A stored record (report.json's, or a manifest's summary); keys of other versions are left out."""
        return cls(**{k: v for k, v in data.items() if k in NAMES})


NAMES = frozenset(f.name for f in fields(ArtefactRecord))


@dataclass
class ValidationReport:
    created_at: str
    source: str  # what was validated: a run, a package, a model file or folder
    data: dict  # path, n, sha256 of the problems
    machine: dict  # deploy.measure.machine_info
    threads: int
    max_new_tokens: int
    gates: dict
    reference: str | None  # the student's fp32 reference's label
    references: dict[str, str | None]  # each model's reference label (the student's, the teacher's)
    artefacts: list[ArtefactRecord]

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> ValidationReport:
        values = {f.name: data.get(f.name) for f in fields(cls)}
        values["references"] = values["references"] or {"student": values["reference"]}
        values["artefacts"] = [ArtefactRecord.from_json(r) for r in data.get("artefacts", [])]
        return cls(**values)

    def shippable(self) -> list[ArtefactRecord]:
        """Artefacts that passed their gates and could be shipped (not a PyTorch reference, not the teacher's: those
        are validated beside the student to compare with)."""
        return [r for r in self.artefacts if r.passed and not r.reference and r.model != "teacher"]

    def failures(self) -> str:
        """Each artefact's failed gates, in one line."""
        return "; ".join(f"{r.label}: {', '.join(r.failed_gates) or 'reference only'}" for r in self.artefacts)
