"""`rakd run`: the pipeline as a Prefect flow run (plugged into the core CLI through rakd.plugins)."""

from __future__ import annotations

import argparse

from flows.settings import OrchestrationConfig
from rakd.plugins import Stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-name", default=None, help="run name (default: run.name of the config)")
    parser.add_argument("--refresh", action="store_true", help="run every stage even when its result is cached")


def format_summary(outcome: dict) -> str:
    from deploy.validate import format_table
    from export.run import format_parity
    from rakd.evaluate import format_eval

    results, states = outcome["results"], outcome["states"]
    lines = ["== pipeline (Prefect flow rakd-pipeline) ==",
             f"{'stage':<10} {'state':<10} {'seconds':>8}  (a cached stage shows the time of the run that made it)"]
    lines += [f"{s:<10} {states[s]:<10} {results[s].get('seconds', 0):8.0f}" for s in results]
    distill = results["distill"]
    lines += ["", "== accuracy (test split) ==", format_eval("teacher", results["teacher"]["eval"]),
              format_eval("student (warm start)", distill["eval_warmstart"]),
              format_eval(f"student ({distill['eval'].get('method', '')})", distill["eval"]),
              "", "== export parity ==", format_parity(results["export"]["parity"]),
              "", "== validation ==", format_table(results["validate"]["report"]),
              "", "== package =="]
    package = results["package"]
    lines += [f"{package['path']}/: " + ", ".join(f"{m['path']} ({m['label']})" for m in package["models"])
              + f"; {package['files']} files, sha256 verified"]
    lines.append(f"\nresults are in {outcome['run_dir']}/; flow runs and artifacts in the Prefect UI when a server is set")
    return "\n".join(lines)


def command(args: argparse.Namespace, cfg) -> int:
    from flows.pipeline import rakd_pipeline

    outcome = rakd_pipeline(config=cfg.model_dump(mode="json"), run_name=args.run_name, refresh=args.refresh)
    print(format_summary(outcome))
    return 0


RUN = Stage(name="run", section="orchestration", config_class=OrchestrationConfig, order=50,
            help="run the whole pipeline as a Prefect flow (cached and resumable; see the README for the UI)",
            add_arguments=add_arguments, command=command)
