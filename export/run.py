"""The export stage: HF folder -> ONNX (+ quantised variants) and GGUF (f16 + llama.cpp quants), with parity.

Writes under the output folder: `onnx-fp32/` (model.onnx + config + tokenizer,
loadable by optimum's ORTModelForCausalLM), `onnx-<scheme>/`, `model-f16.gguf`
(`model-f32.gguf` on request), `model-<type>.gguf`, and `parity.json`.
Everything is built in a staging folder and renamed into place only if every
artefact passed parity.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from export.gguf import check_supported, export_gguf
from export.parity import ParityError, build_references, check_isolated, save_references
from export.quantize import default_4bit, expected_fallbacks, gguf_row_lengths, quantize_gguf, quantize_onnx, tensor_types
from rakd.io import atomic_dir, atomic_write_json
from rakd.models.llamacpp import llama_settings
from rakd.models.load import ModelLoadError, load_causal_lm
from rakd.schema import StageConfig


class ExportConfig(StageConfig):
    formats: list[Literal["onnx", "gguf"]] = Field(default_factory=lambda: ["onnx", "gguf"])
    onnx_quant: list[Literal["w8", "w4", "int8-dynamic"]] = Field(
        default_factory=lambda: ["w8"], description="w8 held parity here; int8-dynamic changed greedy answers")
    gguf_quant: list[str] = Field(default_factory=lambda: ["q8_0", "4bit"], description="llama.cpp types; 4bit = q4_k_m or q4_0")
    gguf_f32: bool = False
    parity_prompts: int = Field(16, ge=1)
    parity_max_new_tokens: int = Field(32, ge=1)
    threads: int = Field(1, ge=1)


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    parity: dict
    seconds: float


def export_onnx(hf_dir: Path, out: Path) -> Path:
    """optimum's exporter with the KV cache as input/output (task text-generation-with-past)."""
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), output=str(out), task="text-generation-with-past", device="cpu", do_validation=False)
    return out


def _onnx_artefacts(cfg: ExportConfig, hf_dir: Path, staging: Path) -> dict[str, Path]:
    fp32 = export_onnx(hf_dir, staging / "onnx-fp32")
    made = {"onnx-fp32": fp32}
    for scheme in cfg.onnx_quant:
        target = staging / f"onnx-{scheme}"
        shutil.copytree(fp32, target, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"))
        quantize_onnx(fp32, target, scheme)
        made[f"onnx-{scheme}"] = target
    return made


def _gguf_artefacts(cfg: ExportConfig, model, tokenizer, staging: Path) -> tuple[dict[str, Path], dict]:
    made = {"gguf-f16": export_gguf(model, tokenizer, staging / "model-f16.gguf", "f16")}
    if cfg.gguf_f32:
        made["gguf-f32"] = export_gguf(model, tokenizer, staging / "model-f32.gguf", "f32")
    rows = gguf_row_lengths(model)
    quant_info = {}
    for requested in cfg.gguf_quant:
        ftype = default_4bit(rows) if requested == "4bit" else requested.lower()
        path = quantize_gguf(made["gguf-f16"], staging / f"model-{ftype}.gguf", ftype, cfg.threads)
        stored = tensor_types(path)
        quant_info[f"gguf-{ftype}"] = {
            "ftype": ftype,
            "expected_fallbacks": expected_fallbacks(rows, ftype),
            "tensor_types": stored,
            # Weights stored in another type than the requested one (1-D norms stay F32 by design).
            "other_types": {n: t for n, t in stored.items() if t not in ("F32", main_type(ftype))},
        }
        made[f"gguf-{ftype}"] = path
    return made, quant_info


def main_type(ftype: str) -> str:
    """The tensor type a llama.cpp ftype is named after: q4_k_m -> Q4_K, q8_0 -> Q8_0."""
    name = ftype.upper()
    return name[:-2] if name.endswith(("_M", "_S", "_L")) and "_K" in name else name


def run_export(cfg: ExportConfig, hf_dir: str | Path, out_dir: str | Path, questions: list[str]) -> ExportResult:
    """Export `hf_dir` to every configured artefact under `out_dir`; raises ParityError on a failure."""
    for noisy in ("gguf", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # per-tensor INFO lines
    hf_dir, out_dir, started = Path(hf_dir), Path(out_dir), time.perf_counter()
    if not hf_dir.is_dir():
        raise ModelLoadError(f"{hf_dir}: no such model folder")
    torch.set_num_threads(cfg.threads)
    model, tokenizer = load_causal_lm(hf_dir)
    if "gguf" in cfg.formats:
        check_supported(model.config)
    refs = build_references(model, tokenizer, questions[: cfg.parity_prompts], cfg.parity_max_new_tokens)
    with atomic_dir(out_dir) as staging:
        artefacts, quant_info = {}, {}
        if "onnx" in cfg.formats:
            artefacts.update(_onnx_artefacts(cfg, hf_dir, staging))
        if "gguf" in cfg.formats:
            made, quant_info = _gguf_artefacts(cfg, model, tokenizer, staging)
            artefacts.update(made)
        records = []
        with tempfile.TemporaryDirectory(prefix="rakd-parity-") as tmp:
            references = save_references(refs, Path(tmp) / "references.npz")
            for label, path in artefacts.items():
                record = check_isolated(label, path, references, cfg.threads)
                record["path"] = str(path.relative_to(staging))
                record.update(quant_info.get(label, {}))
                records.append(record)
        parity = {"source": str(hf_dir), "prompts": len(refs), "llama_cpp": llama_settings(), "artefacts": records}
        atomic_write_json(staging / "parity.json", parity)
        failed = [r for r in records if not r["passed"]]
        if failed:
            error = ParityError("; ".join(f"{r['artefact']}: {', '.join(r['failures'])}" for r in failed))
            error.parity = parity  # every artefact's record, for callers that show more than the message
            raise error
    return ExportResult(out_dir, parity, time.perf_counter() - started)


def format_parity(parity: dict) -> str:
    lines = [f"{'artefact':<20} {'size':>9} {'tok':>4} {'max|Δlogit|':>12} {'top-1':>6}  status"]
    for r in parity["artefacts"]:
        tok = {True: "ok", False: "NO", None: "-"}[r["tokenization_equal"]]
        diff = "-" if r["logits_max_abs_diff"] is None else format(r["logits_max_abs_diff"], ".3g")
        agree = "-" if r["top1_agreement"] is None else format(r["top1_agreement"], ".3f")
        status = "pass" if r["passed"] else "FAIL " + "; ".join(r["failures"])
        lines.append(f"{r['artefact']:<20} {r['size_bytes'] / 1e6:8.2f}M {tok:>4} {diff:>12} {agree:>6}  {status}")
    return "\n".join(lines)
