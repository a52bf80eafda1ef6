"""Does RL-aware distillation pay off on every seed? The distill stage over seeds and thread counts (another float
order stands in for another CPU), each run from the same data and teacher, and what each gave.

    python bench/robust.py --base runs/tiny --seeds 0 1 2 3 --threads 1 2 --jobs 2 --out bench/results/robust-DATE

`--base` is a finished `rakd teacher` run (e.g. after `make demo`); each run gets its own folder under
`<base>-robust/` with the base's data, tokenizer and teacher linked in, and runs `rakd distill` with
`distill.seed` and `distill.threads` set (plus any `--set`). A finished run is read, not re-run. Writes
`runs.json` (a row per run: seed, threads, target_reached, warmstart_step, warmstart_greedy, final_greedy, gain,
gain_se, n, flops), `runs.md` and `runs.png` into `--out`, with `meta.json` (command, commit, machine).
`--add NAME=DIR` takes in a finished pipeline run (its `student/`), e.g. the `make demo` run itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import ROOT, results_dir, write_meta


def prepare(base: Path, run: Path) -> None:
    """A run folder holding links to the base's data, tokenizer and teacher."""
    run.mkdir(parents=True, exist_ok=True)
    for name in ("data", "tokenizer", "teacher"):
        link = run / name
        if (base / name).exists() and not link.exists():
            link.symlink_to((base / name).resolve())


def run_one(args, seed: int, threads: int) -> Path:
    name = f"s{seed}-t{threads}"
    run = Path(f"{args.base}-robust{'-' + args.tag if args.tag else ''}") / name
    if (run / "student/eval.json").is_file():
        return run
    prepare(Path(args.base), run)
    command = [
        sys.executable, "-m", "pipeline.cli", "distill", "--config", args.config,
        "--set", f"run.root={run.parent}", "--set", f"run.name={name}",
        "--set", f"distill.seed={seed}", "--set", f"distill.threads={threads}",
    ]  # fmt: skip
    for override in args.set:
        command += ["--set", override]
    with open(run / "distill.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return run


def row_of(folder: Path, **labels) -> dict:
    student = folder / "student"
    warm = json.loads((student / "eval_warmstart.json").read_text())
    final = json.loads((student / "eval.json").read_text())
    gain = final["greedy_accuracy"] - warm["greedy_accuracy"]
    se = (final["greedy_stderr"] ** 2 + warm["greedy_stderr"] ** 2) ** 0.5
    target = warm.get("target") or {}
    return {
        **labels,
        "target_reached": target.get("reached"),
        "warmstart_step": warm.get("sft_steps"),
        "warmstart_check": target.get("last"),
        "trace_rounds": target.get("rounds"),
        "warmstart_greedy": warm["greedy_accuracy"],
        "final_greedy": final["greedy_accuracy"],
        "gain": gain,
        "gain_se": se,
        "gain_in_se": gain / se if se else None,
        "n": final["n"],
        "by_difficulty": {
            ops: [warm["by_difficulty"][ops]["greedy_accuracy"], entry["greedy_accuracy"]]
            for ops, entry in final.get("by_difficulty", {}).items()
        },
        "target": target.get("summary"),
        "flops": final.get("flops"),
    }


def by_ops(table: dict, ops: str) -> str:
    return f"{100 * table[ops][0]:.1f} → {100 * table[ops][1]:.1f}" if ops in table else "-"


def table(rows: list[dict]) -> str:
    header = "| run | target reached | SFT steps | warm start greedy | final greedy | gain (s.e.) | 4-step | 5-step |"
    lines = [header + " TFLOP |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = [by_ops(r["by_difficulty"], ops) for ops in ("4", "5")]
        flops = (r.get("flops") or {}).get("total") or 0
        lines.append(
            f"| {r['run']} | {'yes' if r['target_reached'] else 'no'} | {r['warmstart_step']} | "
            f"{100 * r['warmstart_greedy']:.1f} | {100 * r['final_greedy']:.1f} | {100 * r['gain']:+.1f} "
            f"({r['gain_in_se']:.1f}) | {steps[0]} | {steps[1]} | {flops / 1e12:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(rows):
        color = "tab:green" if r["target_reached"] else "tab:red"
        ax.plot([i, i], [100 * r["warmstart_greedy"], 100 * r["final_greedy"]], color=color, lw=2)
        ax.scatter([i], [100 * r["warmstart_greedy"]], color="grey", zorder=3)
        ax.errorbar([i], [100 * r["final_greedy"]], yerr=[100 * r["gain_se"]], fmt="o", color=color, capsize=3)
        ax.annotate(f"{100 * r['gain']:+.1f}", (i, 100 * r["final_greedy"]), textcoords="offset points",
                    xytext=(6, 0), fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(rows)), [r["run"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("greedy test accuracy (%)")
    ax.set_title("warm start (grey) -> after RL; green: warm start reached its target; bar: ±1 combined s.e.")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="runs/tiny")
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (keep jobs x threads <= cores)")
    parser.add_argument("--set", action="append", default=[], help="a config override for every run")
    parser.add_argument("--add", action="append", default=[], help="NAME=RUN_DIR: a finished run to include")
    parser.add_argument("--tag", default="", help="run folders go to <base>-robust-TAG/ (one per regime)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = results_dir("robust", args.out)
    plan = [(seed, threads) for threads in args.threads for seed in args.seeds]
    # one-thread runs side by side (--jobs at a time), the others alone: never more threads than cores
    parallel, alone = [j for j in plan if j[1] == 1], [j for j in plan if j[1] != 1]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        by_job = dict(zip(parallel, pool.map(lambda job: run_one(args, *job), parallel)))
    by_job.update({job: run_one(args, *job) for job in alone})
    rows = [row_of(by_job[(s, t)], run=f"seed {s}, {t} thread{'s' * (t > 1)}", seed=s, threads=t) for s, t in plan]
    for entry in args.add:
        name, path = entry.split("=", 1)
        rows.append(row_of(Path(path), run=name, seed=None, threads=None))
    (out / "runs.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "runs.md").write_text(table(rows))
    plot(rows, out / "runs.png")
    write_meta(out)
    print(table(rows))
    print(f"written to {out}/")


if __name__ == "__main__":
    main()
