"""The export stage: HF folder -> ONNX (+ quantised variants) and GGUF (f16 + llama.cpp quants), with parity.

Writes under the output folder: `onnx-fp32/` (model.onnx + config + tokenizer,
loadable by optimum's ORTModelForCausalLM), `onnx-<scheme>/`, `model-f16.gguf`
(`model-f32.gguf` on request), `model-<type>.gguf`, and `parity.json`.
Everything is built in a staging folder and renamed into place only if every
artefact passed parity.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from export.config import ExportConfig
from export.gguf import check_supported, export_gguf
from export.parity import ParityError, build_references, check_isolated, save_references
from export.quantize import (
    default_4bit,
    expected_fallbacks,
    gguf_row_lengths,
    quantize_gguf,
    quantize_onnx,
    tensor_types,
)
from rakd.io import atomic_dir, atomic_write_json
from rakd.layout import RunLayout
from rakd.models.llamacpp import llama_settings
from rakd.models.load import ModelLoadError, load_causal_lm
from rakd.quant import quant
from rakd.schema import Summary
from rakd.tables import num


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    parity: dict
    seconds: float


def export_onnx(hf_dir: Path, out: Path) -> Path:
    """optimum's exporter with the KV cache as input/output (task text-generation-with-past)."""
    import torch
    from optimum.exporters.onnx import main_export
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # optimum's loader passes `torch_dtype`, which transformers calls deprecated
    try:
        with warnings.catch_warnings():  # the tracer's and exporter's notes on code that is not ours: nothing to act on
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r"Exporting aten::index operator")
            main_export(
                str(hf_dir), output=str(out), task="text-generation-with-past", device="cpu", do_validation=False
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    return out


def _onnx_artefacts(cfg: ExportConfig, hf_dir: Path, staging: Path) -> dict[str, Path]:
    fp32 = export_onnx(hf_dir, staging / "onnx-fp32")
    made = {quant("onnx", "fp32").label: fp32}
    for scheme in cfg.onnx_quant:
        kind = quant("onnx", scheme)
        target = staging / kind.file_name
        shutil.copytree(fp32, target, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"))
        quantize_onnx(fp32, target, scheme)
        made[kind.label] = target
    return made


def _gguf_artefacts(cfg: ExportConfig, model, tokenizer, staging: Path) -> tuple[dict[str, Path], dict]:
    f16 = quant("gguf", "f16")
    made = {f16.label: export_gguf(model, tokenizer, staging / f16.file_name, "f16")}
    if cfg.gguf_f32:
        f32 = quant("gguf", "f32")
        made[f32.label] = export_gguf(model, tokenizer, staging / f32.file_name, "f32")
    rows = gguf_row_lengths(model)
    quant_info = {}
    for requested in cfg.gguf_quant:
        kind = quant("gguf", default_4bit(rows) if requested == "4bit" else requested)
        path = quantize_gguf(made[f16.label], staging / kind.file_name, kind.name, cfg.threads)
        stored = tensor_types(path)
        quant_info[kind.label] = {
            "ftype": kind.name,
            "expected_fallbacks": expected_fallbacks(rows, kind.name),
            "tensor_types": stored,
            # Weights stored in another type than the requested one (1-D norms stay F32 by design).
            "other_types": {n: t for n, t in stored.items() if t not in ("F32", kind.tensor_type.name)},
        }
        made[kind.label] = path
    return made, quant_info


def run_export(
    cfg: ExportConfig,
    hf_dir: str | Path,
    out_dir: str | Path,
    questions: list[str],
    teacher_dir: str | Path | None = None,
) -> ExportResult:
    """Export `hf_dir` to every configured artefact under `out_dir` (and, with `teacher_dir`, the teacher to the same
    artefacts under `out_dir/teacher/`, labelled `teacher/<label>`: what validation compares the student with);
    raises ParityError on a failure."""
    for noisy in ("gguf", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # per-tensor INFO lines
    out_dir, started = Path(out_dir), time.perf_counter()
    torch.set_num_threads(cfg.threads)
    models = [("student", Path(hf_dir))] + ([("teacher", Path(teacher_dir))] if teacher_dir is not None else [])
    for _, folder in models:
        if not folder.is_dir():
            raise ModelLoadError(f"{folder}: no such model folder")
    with atomic_dir(out_dir) as staging:
        records, prompts = [], 0
        for model_name, folder in models:
            made, prompts = _model_artefacts(cfg, folder, staging, questions, model_name)
            records += made
        parity = {"source": str(hf_dir), "prompts": prompts, "llama_cpp": llama_settings(), "artefacts": records}
        if teacher_dir is not None:
            parity["teacher_source"] = str(teacher_dir)
        atomic_write_json(staging / "parity.json", parity)
        failed = [r for r in records if not r["passed"]]
        if failed:
            error = ParityError("; ".join(f"{r['artefact']}: {', '.join(r['failures'])}" for r in failed))
            error.parity = parity  # every artefact's record, for callers that show more than the message
            raise error
    return ExportResult(out_dir, parity, time.perf_counter() - started)


def _model_artefacts(
    cfg: ExportConfig, hf_dir: Path, staging: Path, questions: list[str], model_name: str
) -> tuple[list[dict], int]:
    """One model's artefacts in `staging` (the student's at its top, another model's in its own folder, labels
    prefixed with its name), each checked against that model in PyTorch; (parity records, prompts checked)."""
    model, tokenizer = load_causal_lm(hf_dir)
    if "gguf" in cfg.formats:
        check_supported(model.config)
    refs = build_references(model, tokenizer, questions[: cfg.parity_prompts], cfg.parity_max_new_tokens)
    prefix = "" if model_name == "student" else f"{model_name}/"
    folder = staging / prefix if prefix else staging
    folder.mkdir(parents=True, exist_ok=True)
    artefacts, quant_info = {}, {}  # label -> (format, path): the labels validation and packaging use
    if "onnx" in cfg.formats:
        artefacts.update({label: ("onnx", path) for label, path in _onnx_artefacts(cfg, hf_dir, folder).items()})
    if "gguf" in cfg.formats:
        made, quant_info = _gguf_artefacts(cfg, model, tokenizer, folder)
        artefacts.update({label: ("gguf", path) for label, path in made.items()})
    records = []
    del model
    with tempfile.TemporaryDirectory(prefix="rakd-parity-") as tmp:
        references = save_references(refs, Path(tmp) / "references.npz")
        for label, (fmt, path) in artefacts.items():
            record = check_isolated(label, fmt, path, references, cfg.threads)
            record.update(format=fmt, path=str(path.relative_to(staging)), **quant_info.get(label, {}))
            record.update(artefact=prefix + label, model=model_name)
            records.append(record)
    return records, len(refs)


def parity_rows(parity: dict) -> list[dict]:
    """parity.json as table rows, one per artefact."""
    return [
        {
            "artefact": r["artefact"],
            "size MB": num(r["size_bytes"] / 1e6, ".2f"),
            "tokens": {True: "same", False: "DIFFER", None: "-"}[r["tokenization_equal"]],
            "max |Δlogit|": num(r["logits_max_abs_diff"], ".3g"),
            "top-1": num(r["top1_agreement"], ".3f"),
            "result": "pass" if r["passed"] else "FAIL: " + "; ".join(r["failures"]),
        }
        for r in parity["artefacts"]
    ]


# ---------------------------------------------------------------- the stage contract (pipeline.registry)
# (section config, RunLayout) -> summary, a small JSON dict read back from the outputs, so that a run that just
# finished and outputs current under their key give the same summary; the stage's own summary rows.


def done_file(layout: RunLayout) -> Path:
    return layout.parity


def run_stage(cfg: ExportConfig, layout: RunLayout) -> Summary:
    """The student (and with `export.teacher` the teacher), each checked on the run's val questions."""
    from export.parity import parity_questions

    questions = parity_questions(None, layout, cfg.parity_prompts)
    run_export(cfg, layout.student, layout.export, questions, teacher_dir=layout.teacher if cfg.teacher else None)
    return read_stage(cfg, layout)


def read_stage(cfg: ExportConfig, layout: RunLayout) -> Summary:
    return {"path": str(layout.export), "parity": json.loads(layout.parity.read_text())}


def stage_rows(summary: Summary) -> list[dict]:
    return parity_rows(summary["parity"])
