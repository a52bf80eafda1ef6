"""The comparison's results: per-variant statistics over seeds, intervals against the reference (`stats`: Welch t over
seed means plus the paired per-problem component), each row read at the equal budget and at the reference's step
count, the α table, the val curves, and `results.{json,md}` + `curves.png` under `<run>/compare/results/`."""

from __future__ import annotations

import statistics
from pathlib import Path

from rakd.compare.record import context_lines
from rakd.compare.stats import correctness, difference_interval
from rakd.flops import format_flops
from rakd.stages.config import CompareConfig


def variants_in_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows))


def labels(rows: list[dict]) -> dict[str, str]:
    """Each variant key's display label (rows kept before variants had keys: the variant is its own label)."""
    return {r["variant"]: r.get("label", r["variant"]) for r in rows}


def summary_rows(rows: list[dict], reference: str, level: float = 0.95) -> list[dict]:
    """Mean ± std over seeds per variant, ranked by mean greedy accuracy at the equal budget, with the mean steps,
    training FLOPs and seconds, the greedy accuracy at the reference jobs' step count, and the interval of
    (variant − reference) at `level` both ways."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    has_seconds = any("at_reference_seconds" in r for r in rows)  # comparisons from before that reading lack it
    named = labels(rows)
    versus = f"vs {named.get(reference, reference)}"
    table = []
    for variant in variants_in_order(rows):
        runs = by_variant[variant]
        greedy = [r["greedy_accuracy"] for r in runs]
        entry = {
            "method": named[variant],
            "seeds": len(runs),
            "greedy": _mean_std(greedy),
            "sampled": _mean_std([r.get("sampled_accuracy") for r in runs]),
            "pass@k": _mean_std([r.get("pass_at_k") for r in runs]),
            "steps": f"{statistics.fmean(r['steps'] for r in runs):.0f}",
            "FLOPs": format_flops(statistics.fmean(r.get("flops_total", 0) for r in runs)),
            "seconds": f"{statistics.fmean(r.get('seconds_compute', r['seconds']) for r in runs):.0f}",
        }
        at_steps = [r["at_reference_steps"] for r in runs if r.get("at_reference_steps")]
        at_seconds = [r["at_reference_seconds"] for r in runs if r.get("at_reference_seconds")]
        entry["greedy at reference steps"] = _mean_std([a["greedy_accuracy"] for a in at_steps])
        if has_seconds:
            entry["greedy at reference seconds"] = _mean_std([a["greedy_accuracy"] for a in at_seconds])
        if variant != reference and reference in by_variant:
            theirs = [correctness(r) for r in by_variant[reference]]
            budget = difference_interval([correctness(r) for r in runs], theirs, level)
            entry[f"{versus} at equal budget"] = budget.format()
            for readings, what in ((at_steps, "steps"), (at_seconds, "seconds")):
                if readings and len(readings) == len(runs):
                    interval = difference_interval([correctness(a) for a in readings], theirs, level)
                    entry[f"{versus} at equal {what}"] = interval.format()
        table.append((statistics.fmean(greedy), entry))
    ranked = sorted(table, key=lambda pair: -pair[0])
    return [{"rank": rank, **entry} for rank, (_, entry) in enumerate(ranked, 1)]


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def alpha_rows(rows: list[dict]) -> list[dict]:
    """The α curve of rakd (clamp on): mean ± std greedy and sampled accuracy per α."""
    runs = [r for r in rows if r["method"] == "rakd" and r["teacher_clamp"] is not None]
    if not any(r["alpha"] == 1.0 for r in runs):  # α = 1 is GRPO: its jobs stand for that point
        runs += [{**r, "alpha": 1.0} for r in rows if r["method"] == "grpo"]
    table = []
    for alpha in sorted({r["alpha"] for r in runs}):
        chosen = [r for r in runs if r["alpha"] == alpha]
        label = f"{alpha:g}" + (" (the grpo runs)" if chosen[0]["method"] == "grpo" else "")
        table.append(
            {
                "α": label,
                "seeds": len(chosen),
                "greedy": _mean_std([r["greedy_accuracy"] for r in chosen]),
                "sampled": _mean_std([r["sampled_accuracy"] for r in chosen]),
            }
        )
    return table


def mean_curve(curves: list[list[dict]], key: str) -> tuple[list[float], list[list[float]]]:
    """x (the mean of `key` at each curve point, over seeds) and the val accuracies (%) at each point."""
    length = min(len(c) for c in curves)
    xs = [statistics.fmean(c[i][key] for c in curves) for i in range(length)]
    return xs, [[100 * c[i]["val"] for c in curves] for i in range(length)]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both cost (x, lower is better) and accuracy (y, higher is better), by x."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_curves(rows: list[dict], path: Path) -> None:
    """Val accuracy against RL step, training FLOPs (the Pareto front of every method's points marked) and
    wall-clock seconds: mean and min-max band per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), sharey=True)
    colours = plt.cm.tab20.colors  # more variants than tab10 has colours
    points = []
    named = labels(rows)
    for index, variant in enumerate(variants_in_order(rows)):
        curves = [r["curve"] for r in rows if r["variant"] == variant and r["curve"]]
        if not curves:
            continue
        colour = colours[(2 * index) % len(colours) + (2 * index) // len(colours)]
        for ax, key in zip(axes, ("step", "flops", "seconds")):
            if any(key not in point for curve in curves for point in curve):
                continue  # rows of an older comparison without FLOPs
            xs, values = mean_curve(curves, key)
            means = [statistics.fmean(v) for v in values]
            ax.plot(xs, means, label=named[variant], color=colour, marker="o", markersize=3)
            ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], alpha=0.12, color=colour)
            if key == "flops":
                points += list(zip(xs, means))
    front = pareto_front(points)
    if front:
        axes[1].plot(
            *zip(*front), color="black", linestyle="--", linewidth=1, drawstyle="steps-post", label="Pareto front"
        )
        axes[1].scatter(*zip(*front), facecolors="none", edgecolors="black", s=60, zorder=3)
    axes[0].set_xlabel("RL step")
    axes[1].set_xlabel("training FLOPs of the job (ledger, evaluation left out)")
    axes[1].set_xscale("log")
    axes[2].set_xlabel("wall-clock seconds of RL (sampling + teacher + update)")
    axes[0].set_ylabel("val greedy accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("distillation methods from one warm start (mean over seeds, band: min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lr_rows(sweep: list[dict], rows: list[dict]) -> list[dict]:
    """The learning-rate sweep: per variant, each lr's val greedy accuracy at the budget (first seed), the chosen
    one marked."""
    chosen = {row["variant"]: row["lr"] for row in rows}
    named = labels([*rows, *sweep])
    table: dict[str, dict] = {}
    for row in sorted(sweep, key=lambda r: r["lr"]):
        mark = " (chosen)" if chosen.get(row["variant"]) == row["lr"] else ""
        val = row.get("val_at_budget")
        cell = ("-" if val is None else f"{100 * val:.1f}") + mark
        table.setdefault(row["variant"], {"method": named[row["variant"]]})[f"lr {row['lr']:g}"] = cell
    return list(table.values())


def write_results(
    rows: list[dict],
    out: Path,
    cfg: CompareConfig,
    reference: str,
    context: dict,
    sweep: list[dict] | None = None,
    failed: list[dict] | None = None,
) -> dict:
    """results.json, per_problem.json, results.md and curves.png in `out/results/` (atomically); returns the
    summary tables. `reference` is the variant every other is compared with (the default rakd); `failed` holds the
    jobs that failed (`failed_row`), listed in both files and left out of every reading."""
    from rakd.io import atomic_dir, atomic_write_json, atomic_write_text
    from rakd.tables import markdown_table

    tables = {"methods": summary_rows(rows, reference, cfg.interval_level), "alpha": alpha_rows(rows)}
    tables["learning rates"] = lr_rows(sweep or [], rows)
    readings = ("at_reference_steps", "at_reference_seconds")

    def slim_row(row: dict) -> dict:
        slim = {k: v for k, v in row.items() if k != "greedy_correct"}
        for key in readings:
            if row.get(key):
                slim[key] = {k: v for k, v in row[key].items() if k != "greedy_correct"}
        return slim

    slim = [slim_row(r) for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "results") as staging:
        sweep_slim = [{k: v for k, v in r.items() if k not in ("greedy_correct", *readings)} for r in sweep or []]
        saved = {"context": context, "runs": slim, "lr_sweep": sweep_slim, "failed": failed or []}
        atomic_write_json(staging / "results.json", saved)
        atomic_write_json(staging / "per_problem.json", {r["name"]: r["greedy_correct"] for r in rows})
        for key in readings:
            per_problem = {r["name"]: r[key]["greedy_correct"] for r in rows if r.get(key)}
            atomic_write_json(staging / f"per_problem_{key}.json", per_problem)
        lines = [
            "# Distillation methods compared",
            "",
            *[f"- {line}" for line in context_lines(context)],
            "",
            "## Methods, ranked (test greedy / sampled accuracy and pass@k, mean ± std over seeds)",
            "",
            "Each job is read at the equal budget (greedy, and the interval at equal budget), at the reference "
            "jobs' step count (greedy at reference steps, and the interval at equal steps) and, with a FLOP budget, "
            "at the reference jobs' mean compute seconds (greedy at reference seconds, and the interval at equal "
            "seconds), all from one run.",
            "",
            markdown_table(tables["methods"]),
            "",
            "## α (rakd, teacher clamp on)",
            "",
            markdown_table(tables["alpha"]),
            "",
        ]
        if tables["learning rates"]:
            lines += [
                "## Learning rates (val greedy accuracy at the budget, first seed; the chosen lr ran every seed)",
                "",
                markdown_table(tables["learning rates"]),
                "",
            ]
        if failed:
            lines += ["## Jobs that failed (not in any reading above)", ""]
            lines += [f"- {row['name']}: {row['error']}" for row in failed] + [""]
        atomic_write_text(staging / "results.md", "\n".join(lines))
        plot_curves(rows, staging / "curves.png")
    return tables
