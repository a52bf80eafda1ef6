"""`rakd export`: a HF folder (default: the run's student) to ONNX and GGUF, with parity."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from export.config import ONNX_QUANTS, ExportConfig
from rakd.schema import ConfigError
from rakd.tables import text_table


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
        update["onnx_quant"] = [q for q in names if q in ONNX_QUANTS]
        update["gguf_quant"] = [q for q in names if q not in ONNX_QUANTS]
    try:
        return ExportConfig.model_validate({**cfg.model_dump(), **update})
    except ValidationError as err:
        item = err.errors()[0]
        raise ConfigError(f"rakd export --formats/--quant: {item['msg']} (got {item['input']!r})") from None


def command(args: argparse.Namespace, cfg) -> int:
    from export.parity import parity_questions
    from export.run import parity_rows, run_export

    export_cfg = _overrides(args, cfg.export)
    layout = cfg.run.layout
    hf_dir = Path(args.hf_dir) if args.hf_dir else layout.student
    out = Path(args.out) if args.out else layout.export
    result = run_export(export_cfg, hf_dir, out, parity_questions(args.data, layout, export_cfg.parity_prompts))
    print(text_table(parity_rows(result.parity)))
    print(f"\nexports written to {out}/ (parity: {out / 'parity.json'}) in {result.seconds:.0f}s")
    return 0
