"""Edge validation: accuracy and latency of every artefact on the runtime a device uses, against gates.

`validate(cfg, path, data, out)` takes a `.gguf` file, an ONNX folder, a Hugging
Face folder, a package, or a run directory (then: the PyTorch student as the
reference plus everything in `export/`). Each artefact runs in its own fresh
Python process (`rakd.isolated`), so its peak resident memory is its own and a runtime that crashes
(a corrupt file can take llama.cpp down) fails that artefact only.

Writes `report.json`, `report.md` and `accuracy_vs_latency.png` atomically.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.artefacts import Artefact, discover
from deploy.config import ValidateConfig
from deploy.measure import machine_info, run_artefact, size_mb
from deploy.record import ArtefactRecord, ValidationReport
from deploy.report import apply_gates, format_report_md, plot_accuracy_vs_latency, reference_of
from rakd.data.loaders import load_task_file
from rakd.io import atomic_dir, atomic_write_json, atomic_write_text, sha256_file
from rakd.isolated import ChildCrashed, ChildFailed, run_isolated
from rakd.layout import RunLayout
from rakd.progress import Progress, is_terminal
from rakd.schema import DataError, ModelLoadError, Summary


def load_problems(path: str | Path, limit: int) -> list[dict]:
    """Problems (question, answer) of a prepared split or any GSM8K-style/generic JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    with open(path, encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: empty data file")
    fmt = "gsm8k" if "####" in first and '"solution"' not in first else "jsonl"
    return load_task_file(path, fmt).records[:limit]


def _isolated(artefact: Artefact, problems: list[dict], cfg: ValidateConfig) -> dict:
    """`run_artefact` in a fresh process: its own imports, memory and crashes."""
    live = is_terminal(sys.stderr)  # a bar fed by the child's progress lines; else the lines themselves
    config = cfg.model_copy(update={"progress_every": 1}) if live else cfg
    spec = {
        "artefact": {**asdict(artefact), "path": str(artefact.path)},
        "problems": problems,
        "config": config.model_dump(mode="json"),
    }
    progress = Progress(f"validate {artefact.label}", len(problems), unit="problem") if live else None
    try:
        return run_isolated(
            "deploy.measure:run_artefact_spec",
            spec,
            progress_prefix="[validate]",
            what=f"{artefact.path}: the {artefact.format} runtime",
            on_progress=_progress_bar(progress) if progress else None,
        )
    except (ChildFailed, ChildCrashed) as err:
        raise ModelLoadError(str(err)) from err


_PROGRESS_LINE = re.compile(r": (\d+)/(\d+) accuracy ([\d.]+)%")


def _progress_bar(progress: Progress):
    def feed(line: str) -> None:
        if found := _PROGRESS_LINE.search(line):
            progress.update(int(found[1]) - 1, accuracy=float(found[3]))

    return feed


def compare_with_reference(
    records: list[ArtefactRecord], reference: ArtefactRecord | None, sequences: list | None, cfg: ValidateConfig
) -> None:
    """Each artefact against the fp32 reference: answer flips per problem, and the token agreement (KL divergence,
    top-1) over the reference's own completions (`sequences`: its token ids and prompt lengths). The reference's
    distributions are computed once (its top `kld_top_k` tokens and the tail's mass at every completion position,
    deploy.agreement) and each artefact is compared with them in a fresh process as its run was. Records the seconds
    of each part."""
    others = [r for r in records if not r.error and r is not reference]
    if not (sequences and others):
        return
    with tempfile.TemporaryDirectory(prefix="rakd-reference-") as tmp:
        distribution: Path | None = Path(tmp) / "reference.npz"
        started = time.perf_counter()
        spec = {
            "reference": {"format": reference.format, "path": reference.path},
            "sequences": sequences,
            "threads": cfg.threads,
            "top_k": cfg.kld_top_k,
            "out": str(distribution),
        }
        print(f"[validate] {reference.label}: reference distributions", file=sys.stderr, flush=True)
        try:
            _child("deploy.agreement:reference_spec", spec, cfg.isolate, f"{reference.path}: the reference")
            reference.seconds_reference_distributions = time.perf_counter() - started
        except Exception as err:  # noqa: BLE001 - reported; the gates see no KLD
            message = str(err) if isinstance(err, ModelLoadError) else f"{type(err).__name__}: {err}"
            for record in others:
                record.agreement_error = f"the reference's distributions: {message}"
            print(f"[validate] {reference.label}: reference FAILED: {message}", file=sys.stderr)
            distribution = None
        for record in others:
            _compare_one(record, reference, distribution, sequences, cfg)


def _compare_one(
    record: ArtefactRecord, reference: ArtefactRecord, distribution: Path | None, sequences, cfg: ValidateConfig
) -> None:
    ours, theirs = record.correct, reference.correct
    record.flips_to_wrong = sum(r and not a for r, a in zip(theirs, ours))
    record.flips_to_right = sum(a and not r for r, a in zip(theirs, ours))
    if distribution is None:
        return
    spec = {
        "distribution": str(distribution),
        "artefact": {"format": record.format, "path": record.path},
        "sequences": sequences,
        "threads": cfg.threads,
    }
    print(f"[validate] {record.label}: token agreement with {reference.label}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        record.update(_child("deploy.agreement:agreement_spec", spec, cfg.isolate, f"{record.path}: the agreement"))
        record.seconds_agreement = time.perf_counter() - started
    except Exception as err:  # noqa: BLE001 - reported; the gates see no KLD
        record.agreement_error = str(err) if isinstance(err, ModelLoadError) else f"{type(err).__name__}: {err}"
        print(f"[validate] {record.label}: token agreement FAILED: {record.agreement_error}", file=sys.stderr)


def _child(target: str, spec: dict, isolate: bool, what: str) -> dict:
    """`target` (module:function) on `spec`, in a fresh process unless `isolate` is off."""
    if not isolate:
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)(spec)
    try:
        return run_isolated(target, spec, what=what)
    except (ChildFailed, ChildCrashed) as err:
        raise ModelLoadError(str(err)) from err


@dataclass(frozen=True)
class ValidateResult:
    out_dir: Path
    report: ValidationReport


def validate(cfg: ValidateConfig, path: str | Path, data: str | Path, out_dir: str | Path) -> ValidateResult:
    """Validate every artefact behind `path` on `data`; write the report under `out_dir`."""
    artefacts = discover(path)
    problems = load_problems(data, cfg.n_problems)
    records, sequences = [], {}
    for artefact in artefacts:
        record = ArtefactRecord(
            label=artefact.label,
            format=artefact.format,
            path=str(artefact.path),
            reference=artefact.reference,
            model=artefact.model,
            size_mb=size_mb(artefact.path),
            threads=cfg.threads,
        )
        print(
            f"[validate] {artefact.label} ({artefact.format}, {record.size_mb:.2f} MB): {len(problems)} problems",
            file=sys.stderr,
            flush=True,
        )
        try:
            runner = _isolated if cfg.isolate else run_artefact
            started = time.perf_counter()
            measured = runner(artefact, problems, cfg)
            sequences[artefact.label] = measured.pop("sequences", None)  # for the token agreement; not kept
            record.update(measured)
            record.seconds_run = time.perf_counter() - started
        except Exception as err:  # noqa: BLE001 - one bad artefact must not stop the others
            record.error = str(err) if isinstance(err, (ModelLoadError, DataError)) else f"{type(err).__name__}: {err}"
            print(f"[validate] {artefact.label}: FAILED to run: {record.error}", file=sys.stderr, flush=True)
        records.append(record)
    references = {}  # each model's artefacts against its own fp32 reference (the student's, the teacher's)
    for model in dict.fromkeys(r.model for r in records):
        own = [r for r in records if r.model == model]
        references[model] = reference = reference_of(own)
        compare_with_reference(own, reference, sequences.get(reference.label) if reference else None, cfg)
        reference_accuracy = reference.accuracy if reference else None
        for record in own:
            record.failed_gates = apply_gates(record, cfg.gates, reference_accuracy)
            record.passed = not record.failed_gates
            # a pass says nothing about answers when no gate looked at accuracy
            record.accuracy_gated = cfg.gates.min_accuracy > 0 or (
                cfg.gates.max_accuracy_drop is not None and reference_accuracy is not None and not record.reference
            )
            if reference_accuracy is not None and record.accuracy is not None:
                record.accuracy_drop = reference_accuracy - record.accuracy
    reference = references.get("student")
    report = ValidationReport(
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source=str(path),
        data={"path": str(data), "n": len(problems), "sha256": sha256_file(data)},
        machine=machine_info(),
        threads=cfg.threads,
        max_new_tokens=cfg.max_new_tokens,
        gates=cfg.gates.model_dump(),
        reference=reference.label if reference else None,
        references={model: ref.label if ref else None for model, ref in references.items()},
        artefacts=records,
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        atomic_write_json(staging / "report.json", report.as_json())
        atomic_write_text(staging / "report.md", format_report_md(report))
        plot_accuracy_vs_latency(report, staging / "accuracy_vs_latency.png")
    return ValidateResult(out_dir, report)


# ---------------------------------------------------------------- the stage contract (pipeline.registry)
# (section config, RunLayout) -> summary, a small JSON dict read back from the outputs, so that a run that just
# finished and outputs current under their key give the same summary; the stage's own summary rows.


def done_file(layout: RunLayout) -> Path:
    return layout.report


def run_stage(cfg: ValidateConfig, layout: RunLayout) -> Summary:
    validate(cfg, layout.root, layout.split("test"), layout.validate)
    return read_stage(cfg, layout)


def read_stage(cfg: ValidateConfig, layout: RunLayout) -> Summary:
    return {"path": str(layout.validate), "report": json.loads(layout.report.read_text())}


def stage_rows(summary: Summary) -> list[dict]:
    from deploy.report import validation_rows

    return validation_rows(ValidationReport.from_json(summary["report"]).artefacts)
