"""The `rakd` command line: one subcommand per stage, plus `demo`.

Every subcommand takes `--config FILE` and repeated `--set key=value`
overrides (dotted keys into the config's sections).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from rakd.config import ConfigError, PipelineConfig, dump_config, load_config
from rakd.data.loaders import DataError
from rakd.io import atomic_write_text
from rakd.models.load import ModelLoadError
from rakd.plugins import plugin_stages
from rakd.schema import StageError

USER_ERRORS = (ConfigError, DataError, ModelLoadError, StageError, FileNotFoundError, FileExistsError)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set prep.generator.n_items=200 (repeatable)",
    )


def _config(args: argparse.Namespace, extra: Sequence[str] = ()) -> PipelineConfig:
    return load_config(args.config, [*args.overrides, *extra])


def cmd_prep(args: argparse.Namespace) -> int:
    from rakd.data.prep import format_card, run_prep

    cfg = _config(args, ["prep.skip_invalid=true"] if args.skip_invalid else [])
    result = run_prep(cfg.prep, cfg.run.dir)
    print(format_card(result.card))
    print(f"\ndata written to {result.data_dir}/ (card: {result.data_dir / 'card.json'})")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from rakd.evaluate import format_eval
    from rakd.teacher import run_teacher

    cfg = _config(args)
    result = run_teacher(cfg.teacher, cfg.run.dir)
    print(format_eval("teacher", result.eval))
    print(f"teacher written to {result.teacher_dir}/ in {result.seconds:.0f}s")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from rakd.distill import run_distill

    cfg = _config(args)
    result = run_distill(cfg.distill, cfg.run.dir)
    print(f"student written to {result.student_dir}/ in {result.seconds['total']:.0f}s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Every stage that exists so far, on the given config, with a summary at the end."""
    from rakd.data.prep import format_card, run_prep
    from rakd.distill import run_distill
    from rakd.evaluate import format_eval
    from rakd.teacher import run_teacher

    cfg = _config(args)
    run_dir = cfg.run.dir
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    times = {}
    started = time.perf_counter()
    print(f"[prep] {cfg.prep.source} -> {run_dir / 'data'}")
    print(format_card(run_prep(cfg.prep, run_dir).card))
    times["prep"] = time.perf_counter() - started
    print(f"[teacher] training {cfg.teacher.model.preset or cfg.teacher.model.path}")
    teacher = run_teacher(cfg.teacher, run_dir)
    times["teacher"] = teacher.seconds
    print(format_eval("teacher", teacher.eval))
    print(f"[distill] warm start, then {cfg.distill.method} for {cfg.distill.rl.steps} steps")
    student = run_distill(cfg.distill, run_dir)
    times["warm start"], times[f"distill ({cfg.distill.method})"] = student.seconds["warmstart"], student.seconds["rl"]
    exported = {}
    for stage in (stage for stage in plugin_stages() if stage.demo is not None):
        stage_started = time.perf_counter()
        print(f"[{stage.name}]")
        exported[stage.name] = stage.demo(cfg, run_dir)
        times[stage.name] = time.perf_counter() - stage_started
        print(exported[stage.name])
    print("\n== summary (test split) ==")
    print(format_eval("teacher", teacher.eval))
    print(format_eval("student (warm start)", student.eval_warmstart))
    print(format_eval(f"student ({cfg.distill.method})", student.eval))
    for name, summary in exported.items():
        print(f"\n{name}:\n{summary}")
    print("\nwall time: " + ", ".join(f"{name} {secs:.0f}s" for name, secs in times.items()))
    folders = ["config.yaml", "data/", "tokenizer/", "teacher/", "student/", *(f"{name}/" for name in exported)]
    print(f"\nresults are in {run_dir}/ ({', '.join(folders)})")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "prep": (cmd_prep, "prepare tasks: generate or load, deduplicate, split, write the data card"),
    "teacher": (cmd_teacher, "train the from-scratch teacher on CoT traces (or load a checkpoint) and evaluate it"),
    "distill": (cmd_distill, "warm-start the student on teacher traces, then RL-aware distillation"),
    "demo": (cmd_demo, "run the pipeline's stages on a config (default: the embedded tiny one)"),
}


def _plugin_commands() -> dict[str, tuple[Callable[[argparse.Namespace], int], str]]:
    return {stage.name: (lambda args, stage=stage: stage.command(args, _config(args)), stage.help) for stage in plugin_stages()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rakd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = {stage.name: stage for stage in plugin_stages()}
    for name, (_, help_text) in {**COMMANDS, **_plugin_commands()}.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(command)
        if name == "prep":
            command.add_argument("--skip-invalid", action="store_true", help="skip bad rows and count them in the card")
        if name in plugins:
            plugins[name].add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler, _ = {**COMMANDS, **_plugin_commands()}[args.command]
    try:
        return handler(args)
    except USER_ERRORS as err:
        print(f"rakd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
