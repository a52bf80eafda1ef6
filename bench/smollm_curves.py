"""The learning curves of a prune-and-heal run: val greedy accuracy against step for the teacher's tuning, the
student's healing and each RL learning rate `distill.rl_lr` tried, with the tokens each phase trained on, read from
a run folder (`runs/smollm`, made by `bench/smollm.py` or `make smollm`), so they outlive it in the results folder.

    .venv/bin/python bench/smollm_curves.py --run runs/smollm --out bench/results/smollm-<date>

Writes `curves.json` (every check: step, accuracy; each phase's steps and trained tokens where its log has them) and
`curves.png` (one panel per phase with val checks; the RL rates in one) into --out.
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


def curves(run: Path) -> list[dict]:
    phases = [sft_curve(run / "teacher" / METRICS, "teacher tuning"),
              sft_curve(run / "student" / METRICS_WARMSTART, "student healing")]  # fmt: skip
    return [p for p in phases if p] + rl_curves(run / "student")


def plot(phases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = [p for p in phases if not p["name"].startswith("RL") and p["checks"]]
    rl = [p for p in phases if p["name"].startswith("RL") and p["checks"]]
    panels = sft + ([{"name": "RL (each learning rate)", "lines": rl}] if rl else [])
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in panel.get("lines", [panel]):
            if line["checks"]:
                steps, values = zip(*line["checks"])
                ax.plot(steps, [100 * v for v in values], marker="o", label=line["name"])
        ax.set_title(panel["name"])
        ax.set_xlabel("step")
        ax.set_ylabel("val greedy accuracy (%)")
        ax.grid(alpha=0.3)
        if "lines" in panel:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/smollm"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    phases = curves(args.run)
    if not phases:
        raise SystemExit(f"{args.run}: no teacher/metrics.jsonl or student logs to read")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "curves.json", {"run": str(args.run), "phases": phases})
    plot(phases, args.out / "curves.png")
    for phase in phases:
        points = ", ".join(f"{s}: {100 * v:.1f}%" for s, v in phase["checks"])
        tokens = f", {phase['tokens']:,} completion tokens" if phase.get("tokens") else ""
        print(f"{phase['name']} ({phase['steps']} steps{tokens}): {points or 'no val checks'}")
    print(f"written to {args.out}/curves.json and curves.png")


if __name__ == "__main__":
    main()
