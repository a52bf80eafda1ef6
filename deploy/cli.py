"""`rakd validate`, `rakd package`, `rakd verify-package`: their arguments and commands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rakd.layout import RunLayout
from rakd.schema import ConfigError, ModelLoadError
from rakd.tables import text_table


def validate_paths(path: Path, data: Path | None, out: Path | None, root: Path) -> tuple[Path, Path]:
    """(data file, report folder) for validating `path`: a run dir brings its test split and validate/ folder."""
    layout = RunLayout(path)
    if data is None:
        if not layout.is_run():
            raise ConfigError(f"rakd validate {path}: --data is required when PATH is not a run directory")
        data = layout.split("test")
    if out is None:
        out = layout.validate if layout.is_run() else root / f"validate-{path.stem}"
    return data, out


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=None,
        help=".gguf file, ONNX folder, HF folder, package, or run directory (default: the config's run)",
    )
    parser.add_argument("--data", type=Path, default=None, help="JSONL problems (default: <run>/data/test.jsonl)")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: validation.threads)")
    parser.add_argument("--limit", type=int, default=None, help="first K problems (default: validation.n_problems)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: <run>/validate)")
    parser.add_argument("--require-pass", action="store_true", help="exit 1 when no exported artefact passed the gates")


def validate_command(args: argparse.Namespace, cfg) -> int:
    from deploy.config import ValidateConfig
    from deploy.report import validation_rows
    from deploy.validate import validate

    update = {k: v for k, v in (("threads", args.threads), ("n_problems", args.limit)) if v is not None}
    try:
        vcfg = ValidateConfig.model_validate({**cfg.validation.model_dump(), **update})
    except ValueError as err:
        raise ConfigError(f"rakd validate --threads/--limit: {err}") from None
    path = args.path or cfg.run.dir
    data, out = validate_paths(path, args.data, args.out, cfg.run.root)
    result = validate(vcfg, path, data, out)
    print(text_table(validation_rows(result.report.artefacts)))
    errors = [r.error for r in result.report.artefacts if r.error]
    if errors and len(errors) == len(result.report.artefacts):
        raise ModelLoadError("; ".join(errors) + f" (report: {out / 'report.json'})")
    print(f"\nreport written to {out}/ (report.json, report.md, accuracy_vs_latency.png)")
    if args.require_pass and not result.report.shippable():
        print("rakd validate: no artefact passed the gates (--require-pass)", file=sys.stderr)
        return 1
    return 0


def add_package_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", type=Path, default=None, help="run directory (default: the config's run)")
    parser.add_argument("--out", type=Path, default=None, help="package folder (default: <run>/package)")
    parser.add_argument("--force", action="store_true", help="replace an existing package")
    parser.add_argument(
        "--prefer", choices=["gguf", "onnx", "any"], default=None, help="format to ship when both passed"
    )


def package_command(args: argparse.Namespace, cfg) -> int:
    from deploy.package import build_package

    pcfg = cfg.package if args.prefer is None else cfg.package.model_copy(update={"prefer": args.prefer})
    result = build_package(pcfg, args.run_dir or cfg.run.dir, args.out, force=args.force)
    models = ", ".join(
        f"{m['path']} ({m['label']}, accuracy {100 * m['metrics']['accuracy']:.1f}%)" for m in result.manifest["models"]
    )
    print(f"package {result.out_dir}/: {models}; {len(result.manifest['files'])} files in manifest.json")
    return 0


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package_dir", type=Path, help="package folder (with manifest.json)")


def verify_command(args: argparse.Namespace, cfg) -> int:
    from deploy.manifest import verify_package

    manifest = verify_package(args.package_dir)
    print(f"{args.package_dir}: ok, {manifest.name} {manifest.version}, {len(manifest.files)} files verified")
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package_dir", type=Path, help="package folder (with manifest.json and a GGUF model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed at start)")
    parser.add_argument("--label", default=None, help="which packaged model (default: the first, the best)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: validation.threads)")
    parser.add_argument("--n-ctx", type=int, default=0, help="context length (0: the model's own)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("RAKD_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every request but /health (default: $RAKD_API_KEY)",
    )
    parser.add_argument(
        "--no-api-key", action="store_true", help="serve an address other than loopback without a key, on purpose"
    )
    parser.add_argument(
        "--max-body", type=int, default=None, help="largest request body in bytes (default: 1 MiB); larger: 413"
    )


def serve_command(args: argparse.Namespace, cfg) -> int:
    from deploy.serve import MAX_BODY_BYTES, serve

    threads = args.threads if args.threads is not None else cfg.validation.threads
    if threads < 1 or not 0 <= args.port < 65536 or (args.max_body is not None and args.max_body < 1):
        raise ConfigError(
            "rakd serve: --threads and --max-body must be >= 1 and --port in 0..65535 "
            f"(got {threads}, {args.max_body}, {args.port})"
        )
    serve(
        args.package_dir,
        host=args.host,
        port=args.port,
        label=args.label,
        threads=threads,
        n_ctx=args.n_ctx,
        api_key=args.api_key or None,
        max_body=args.max_body or MAX_BODY_BYTES,
        open_to_all=args.no_api_key,
    )
    return 0
