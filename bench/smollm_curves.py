"""The learning curves of prune-and-heal runs: val greedy accuracy against step for the teacher's tuning, each
student's healing and each RL learning rate `distill.rl_lr` tried, with the tokens each phase trained on, read from
run folders (`runs/smollm`, made by `bench/smollm.py` or `make smollm`, and a size sweep's `runs/smollm-l10` ...),
so they outlive them in the results folder.

    .venv/bin/python bench/smollm_curves.py --run runs/smollm --out bench/results/smollm-<date>
    .venv/bin/python bench/smollm_curves.py --run l15=runs/smollm --run l10=runs/smollm-l10 --out <sweep folder>

--run NAME=DIR (repeatable; NAME defaults to the folder's name): the teacher's curve is the first run's (a sweep's
points share it). Writes `curves.json` (every check: run, step, accuracy; each phase's steps and trained tokens
where its log has them) and `curves.png` (a panel per phase: the teacher, the healing of every run, RL at every
rate of every run) into --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rakd.io import atomic_write_json, read_jsonl
from rakd.layout import EVAL, METRICS, METRICS_WARMSTART


def sft_curve(metrics: Path, name: str) -> dict | None:
    """The val checks of an SFT log (`val_check_accuracy` rows) and the completion tokens it trained on (None where
    a row does not say: logs older than the `tokens` column)."""
    if not metrics.is_file():
        return None
    rows = read_jsonl(metrics)
    checks = [[r["step"], r["val_check_accuracy"]] for r in rows if "val_check_accuracy" in r]
    tokens = sum(r["tokens"] for r in rows) if rows and all("tokens" in r for r in rows) else None
    return {"name": name, "steps": len(rows), "checks": checks, "tokens": tokens}


def rl_curves(student: Path) -> list[dict]:
    """Each RL learning rate's val curve (`rl_lr` in the student's eval.json), or the one RL run's (its metrics)."""
    evaluation = json.loads((student / EVAL).read_text()) if (student / EVAL).is_file() else {}
    sweep = evaluation.get("rl_lr")
    if sweep:
        return [
            {
                "name": f"RL lr {c['lr']:g}" + (" (kept)" if c["lr"] == sweep["chosen"] else ""),
                "steps": c["steps"],
                "checks": c.get("val_curve", []),
                "chosen_on": c["val_greedy_accuracy"],
            }
            for c in sweep["candidates"]
            if c["lr"] is not None
        ]
    rows = read_jsonl(student / METRICS) if (student / METRICS).is_file() else []
    checks = [[r["step"], r["val_greedy_accuracy"]] for r in rows if r.get("val_greedy_accuracy") is not None]
    return [{"name": "RL", "steps": len(rows), "checks": checks}] if rows else []


def curves(run: Path, name: str | None = None, teacher: bool = True) -> list[dict]:
    """The phases of one run folder, each with `run` (`name`) and `kind` (teacher, healing, RL)."""
    phases = [("teacher", sft_curve(run / "teacher" / METRICS, "teacher tuning")) if teacher else ("teacher", None),
              ("healing", sft_curve(run / "student" / METRICS_WARMSTART, "student healing"))]  # fmt: skip
    found = [{**p, "kind": kind} for kind, p in phases if p] + [{**p, "kind": "RL"} for p in rl_curves(run / "student")]
    return [{**p, "run": name or run.name} for p in found]


TITLES = {"teacher": "teacher tuning", "healing": "student healing", "RL": "RL (each learning rate)"}


def plot(phases: list[dict], path: Path) -> None:
    """A panel per kind of phase; a line per run (and per RL rate), labelled by run when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len({p["run"] for p in phases}) > 1
    panels = [(kind, [p for p in phases if p["kind"] == kind and p["checks"]]) for kind in TITLES]
    panels = [(kind, lines) for kind, lines in panels if lines]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (kind, lines) in zip(axes[0], panels):
        for line in lines:
            steps, values = zip(*line["checks"])
            label = " ".join(x for x in (line["run"] if several else "", line["name"] if kind == "RL" else "") if x)
            ax.plot(steps, [100 * v for v in values], marker="o", markersize=3, label=label or None)
        ax.set_title(TITLES[kind])
        ax.set_xlabel("step")
        ax.set_ylabel("val greedy accuracy (%)")
        ax.grid(alpha=0.3)
        if len(lines) > 1 or kind == "RL":
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_run(spec: str) -> tuple[str, Path]:
    """`l15=runs/smollm` -> ("l15", runs/smollm); `runs/smollm-l10` -> ("smollm-l10", runs/smollm-l10)."""
    name, sep, folder = spec.partition("=")
    return (name, Path(folder)) if sep else (Path(spec).name, Path(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="[NAME=]DIR, repeatable (default runs/smollm)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [parse_run(spec) for spec in args.run or ["runs/smollm"]]
    phases = [p for i, (name, folder) in enumerate(runs) for p in curves(folder, name, teacher=i == 0)]
    if not phases:
        raise SystemExit(f"{', '.join(str(f) for _, f in runs)}: no teacher/metrics.jsonl or student logs to read")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "curves.json", {"runs": {n: str(f) for n, f in runs}, "phases": phases})
    plot(phases, args.out / "curves.png")
    for phase in phases:
        points = ", ".join(f"{s}: {100 * v:.1f}%" for s, v in phase["checks"])
        tokens = f", {phase['tokens']:,} completion tokens" if phase.get("tokens") else ""
        print(f"{phase['run']} {phase['name']} ({phase['steps']} steps{tokens}): {points or 'no val checks'}")
    print(f"written to {args.out}/curves.json and curves.png")


if __name__ == "__main__":
    main()
