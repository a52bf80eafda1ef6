"""`rakd export` and the export step of `rakd demo`, plugged into the core CLI (rakd.plugins)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from export.run import ExportConfig, ExportResult, format_parity, run_export
from rakd.data.generator import GeneratorConfig, generate
from rakd.io import read_jsonl
from rakd.plugins import Stage
from rakd.schema import ConfigError


def parity_questions(data: Path | None, run_dir: Path, n: int) -> list[str]:
    """Validation questions of the run (or `--data`), else generated arithmetic prompts."""
    source = data or run_dir / "data" / "val.jsonl"
    if source.is_file():
        return [row["question"] for row in read_jsonl(source)][:n]
    return [item["question"] for item in generate(GeneratorConfig(n_items=n, seed=99))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", nargs="?", default=None, help="HF model folder (default: <run dir>/student)")
    parser.add_argument("--out", default=None, help="output folder (default: <run dir>/export)")
    parser.add_argument("--formats", default=None, help="comma-separated: onnx,gguf")
    parser.add_argument("--quant", default=None, help="comma-separated quantisations, e.g. w8,q8_0,4bit")
    parser.add_argument("--data", type=Path, default=None, help="JSONL whose questions are the parity prompts")


def _overrides(args: argparse.Namespace, cfg: ExportConfig) -> ExportConfig:
    update = {}
    if args.formats:
        update["formats"] = [f.strip() for f in args.formats.split(",") if f.strip()]
    if args.quant:
        names = [q.strip() for q in args.quant.split(",") if q.strip()]
        update["onnx_quant"] = [q for q in names if q in ("w8", "w4", "int8-dynamic")]
        update["gguf_quant"] = [q for q in names if q not in ("w8", "w4", "int8-dynamic")]
    try:
        return ExportConfig.model_validate({**cfg.model_dump(), **update})
    except ValidationError as err:
        raise ConfigError(f"rakd export --formats/--quant: {err.errors()[0]['msg']} (got {update})") from None


def command(args: argparse.Namespace, cfg) -> int:
    export_cfg = _overrides(args, cfg.export)
    hf_dir = Path(args.hf_dir) if args.hf_dir else cfg.run.dir / "student"
    out = Path(args.out) if args.out else cfg.run.dir / "export"
    result = run_export(export_cfg, hf_dir, out, parity_questions(args.data, cfg.run.dir, export_cfg.parity_prompts))
    print(format_parity(result.parity))
    print(f"\nexports written to {out}/ (parity: {out / 'parity.json'}) in {result.seconds:.0f}s")
    return 0


def export_run(cfg: ExportConfig, run_dir: Path) -> ExportResult:
    """The pipeline's export stage: the run's student to `<run>/export`, parity on its val questions."""
    questions = parity_questions(None, run_dir, cfg.parity_prompts)
    return run_export(cfg, run_dir / "student", run_dir / "export", questions)


def demo(cfg, run_dir: Path) -> str:
    return format_parity(export_run(cfg.export, run_dir).parity)


STAGE = Stage(
    name="export",
    config_class=ExportConfig,
    help="export a HF model to ONNX and GGUF (+ quantised variants) and check parity with PyTorch",
    add_arguments=add_arguments,
    command=command,
    demo=demo,
    order=10,
)
