"""The `rakd` command line: one subcommand per registry stage, plus `demo`, `run`, `compare`, `verify-package` and
`serve`.

Every subcommand takes `--config FILE` and repeated `--set key=value`
overrides (dotted keys into the config's sections).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from deploy.cli import add_serve_arguments, add_verify_arguments, serve_command, verify_command
from pipeline.cache import run_stage, stage_keys
from pipeline.config import ConfigError, PipelineConfig, dump_config, load_config
from pipeline.registry import STAGES, Stage
from pipeline.summary import summary_sections
from rakd.io import atomic_write_text
from rakd.schema import DataError, ModelLoadError, StageError
from rakd.tables import text_table

USER_ERRORS = (ConfigError, DataError, ModelLoadError, StageError, FileNotFoundError, FileExistsError)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set prep.generator.n_items=200 (repeatable)",
    )


def stage_command(stage: Stage) -> Callable[[argparse.Namespace, PipelineConfig], int]:
    """`rakd <stage>`: the stage's own command, else run it on the config and print its rows."""
    if stage.command is not None:
        return stage.command

    def command(args: argparse.Namespace, cfg: PipelineConfig) -> int:
        summary = run_stage(stage, cfg)
        print(text_table(stage.rows(summary)))
        print(f"\n{stage.name} written to {summary['path']}/ in {summary['seconds']:.0f}s")
        return 0

    return command


def render_sections(sections: list[tuple[str, list[dict]]]) -> str:
    return "\n\n".join(f"== {title} ==\n{text_table(rows)}" for title, rows in sections if rows)


def cmd_demo(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    """Every registry stage as plain function calls (no Prefect), with the run's summary at the end."""
    atomic_write_text(cfg.run.layout.config, dump_config(cfg))
    results, keys = {}, stage_keys(cfg)
    for stage in STAGES:
        print(f"[{stage.name}]", flush=True)
        results[stage.name] = run_stage(stage, cfg, keys[stage.name])
        print(text_table(stage.rows(results[stage.name])), flush=True)
    print("\n" + render_sections(summary_sections(results)))
    print(f"\nresults are in {cfg.run.dir}/")
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-name", default=None, help="run name (default: run.name of the config)")
    parser.add_argument("--refresh", action="store_true", help="run every stage even when its result is cached")


def cmd_run(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    """The registry's stages as the Prefect flow `rakd-pipeline` (cached and resumable)."""
    from flows.pipeline import rakd_pipeline

    outcome = rakd_pipeline(config=cfg.model_dump(mode="json"), run_name=args.run_name, refresh=args.refresh)
    print("== pipeline (Prefect flow rakd-pipeline) ==\n")
    print(render_sections(summary_sections(outcome["results"], outcome["states"])))
    print(f"\nresults are in {outcome['run_dir']}/; flow runs and artifacts in the Prefect UI when a server is set")
    return 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dask-address", default=None, help="an existing Dask scheduler (default: a local cluster)")
    parser.add_argument("--workers", type=int, default=None, help="local Dask workers (default: one per core)")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="each job a plain call in this process, one at a time (no Prefect, no Dask)",
    )


def cmd_compare(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    """Methods × seeds × α from one warm start, as the Prefect flow `rakd-compare` on Dask, or with `--plain` as
    plain calls in this process (the same policy: rakd.compare.policy)."""
    if args.plain:
        from pipeline.compare import compare_plain

        outcome = compare_plain(cfg.model_dump(mode="json")).as_json()
    else:
        from flows.compare import compare_flow

        update = {k: v for k, v in (("dask_address", args.dask_address), ("workers", args.workers)) if v is not None}
        cfg = cfg.model_copy(update={"compare": cfg.compare.model_copy(update=update)})
        outcome = compare_flow(cfg.model_dump(mode="json"))
    print(render_sections([("methods (test split)", outcome["tables"]["methods"]), ("α", outcome["tables"]["alpha"])]))
    print(f"\nresults in {outcome['results']}/ (results.json, results.md, curves.png)")
    for row in outcome["failed"]:
        print(f"failed: {row['name']}: {row['error']}", file=sys.stderr)
    return 1 if outcome["failed"] else 0  # the rows that finished are kept and read; a re-run retries the rest


# name -> (help, add_arguments, command(args, config) -> exit code)
EXTRA_COMMANDS = {
    "demo": ("run every stage on a config as plain function calls (default: the embedded tiny config)", None, cmd_demo),
    "run": (
        "run the whole pipeline as a Prefect flow (cached and resumable; see the README for the UI)",
        add_run_arguments,
        cmd_run,
    ),
    "compare": (
        "compare distillation methods (x seeds, x alpha) from one warm start, fanned out on Dask",
        add_compare_arguments,
        cmd_compare,
    ),
    "verify-package": (
        "recompute every sha256 of a package against its manifest",
        add_verify_arguments,
        verify_command,
    ),
    "serve": (
        "serve a package's GGUF model over HTTP, OpenAI-compatible (/v1/chat/completions), as it was validated",
        add_serve_arguments,
        serve_command,
    ),
}


def commands() -> dict[str, tuple[str, Callable | None, Callable]]:
    stages = {s.name: (s.help, s.add_arguments, stage_command(s)) for s in STAGES}
    return {**stages, **EXTRA_COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rakd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in commands().items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(command)
        if add_arguments:
            add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, _, handler = commands()[args.command]
    try:
        return handler(args, load_config(args.config, args.overrides))
    except USER_ERRORS as err:
        print(f"rakd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
