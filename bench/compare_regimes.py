"""Keep the method comparison's regimes in bench/results/ and put them side by side.

Each regime's `rakd compare --config configs/compare-<regime>.yaml` leaves its results in
`<run>/compare/<regime>/results/` when it finishes; this copies them to `bench/results/compare-<regime>-<date>/`
(with meta.json). A regime that did not finish is kept from its finished jobs' rows (`jobs/<job>.json`), marked
partial with how many of its planned jobs are in. Then `bench/results/compare-regimes-<date>/` gets one table
(`regimes.md`, `regimes.json`) and one figure (`regimes.png`): every method's test greedy accuracy per regime, its
seeds, and its interval against TRRD (rakd, α 0.5) of the same regime (rakd.compare.stats: Welch t over seed means
plus the paired problem component), at equal training FLOPs and at the reference's step count.

    python bench/compare_regimes.py                      # edge, trace, base
    python bench/compare_regimes.py --regimes edge trace --name 2026-12-03-ledger
    python bench/compare_regimes.py --evidence hard=compare-hard-2026-12-04   # the rule's evidence, recomputed
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchlib import ROOT, results_dir, write_meta

sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from rakd.compare import (  # noqa: E402
    choose_lrs,
    labels,
    named,
    plan_jobs,
    reference_variant,
    summary_rows,
    sweep_jobs,
    sweeps_lr,
    write_results,
)
from rakd.compare.evidence import regime_evidence  # noqa: E402
from rakd.compare.record import context_lines, context_record, read_comparison  # noqa: E402
from rakd.stages.advice import EVIDENCE_FILE  # noqa: E402
from rakd.tables import markdown_table  # noqa: E402

REFERENCE = "rakd/a0.5"  # every regime's reference jobs: what the table's intervals are against
REGIMES = {
    "edge": "the demo's warm start, stopped at its edge-of-competence target",
    "trace": "1000 teacher traces, SFT to its val plateau",
    "base": "no worked solution: SFT on bare final answers only",
    "hard": "the warm start stopped at 10% val: a sparse reward",
    "ways": "several valid chains per problem, a teacher that uses them",
    "ratio-x2": "the edge regime with a teacher 2x the student",
    "ratio-x22": "the edge regime with a teacher 22x the student",
    "real": "SmolLM2-135M tuned, its every-3rd-layer student healed",
}


def regime_rows(cfg) -> tuple[list[dict], dict, Path]:
    """(rows with their per-problem answers, context, the folder they came from) of one regime: its finished
    results, else its finished jobs' kept rows (no context), at each variant's learning rate as the sweep's seed-0
    jobs choose it on val."""
    folder = cfg.run.layout.comparison(cfg.compare.regime)
    results = folder / "results"
    if (results / "results.json").is_file():
        kept = read_comparison(results)
        if not kept.context.get("partial"):
            return [named(row) for row in kept.rows], kept.context, results
    rows = [named(json.loads(p.read_text())["row"]) for p in sorted((folder / "jobs").glob("*.json"))]
    if sweeps_lr(cfg.compare):
        # a variant's learning rate is chosen only once its whole sweep has finished: a part of it would bias it
        planned: dict[str, set[float]] = {}
        for job in sweep_jobs(cfg.compare, plan_jobs(cfg.compare, cfg.distill)):
            planned.setdefault(job.variant, set()).add(job.lr)
        first = [row for row in rows if row["seed"] == cfg.compare.seeds[0]]
        swept = {v for v, lrs in planned.items() if lrs <= {row["lr"] for row in first if row["variant"] == v}}
        lrs = choose_lrs([row for row in first if row["variant"] in swept])
        rows = [row for row in rows if row["lr"] == lrs.get(row["variant"])]
    return rows, {}, folder


def keep(regime: str, config: Path, date: str | None, runs_commit: str | None = None) -> tuple[list[dict], dict]:
    """Copy one regime's results to bench/results/compare-<regime>-<date>/ (`date`: any name, by default
    today's date); returns (rows, context)."""
    cfg = load_config(config)
    jobs = plan_jobs(cfg.compare, cfg.distill)
    planned = len(jobs)
    if sweeps_lr(cfg.compare):  # the sweep on the first seed, then the others at each variant's chosen rate
        planned = len(sweep_jobs(cfg.compare, jobs)) + len({j.variant for j in jobs}) * (len(cfg.compare.seeds) - 1)
    rows, context, source = regime_rows(cfg)
    if not rows:
        raise SystemExit(f"{config}: no finished job under {source}: run `rakd compare --config {config}` first")
    out = results_dir(f"compare-{regime}", f"{ROOT}/bench/results/compare-{regime}-{date}" if date else None)
    partial = None
    if context:
        shutil.copytree(source, out, dirs_exist_ok=True)
    else:
        partial = f"{len(rows)} of {planned} planned jobs finished (extra seeds not counted); the others were not "
        partial += "run to the end"
        reference = reference_variant(jobs)
        rows.sort(key=lambda r: (r["variant"] != reference, r["name"]))
        context = partial_context(cfg, rows, partial)
        with tempfile.TemporaryDirectory() as tmp:
            write_results(rows, Path(tmp), cfg.compare, reference, context)
            shutil.copytree(Path(tmp) / "results", out, dirs_exist_ok=True)
    write_meta(out, command=f"rakd compare --config {config}", partial=partial, runs_commit=runs_commit)
    print(f"{regime}: {len(rows)} jobs at the chosen learning rates -> {out}")
    return rows, context


def partial_context(cfg, rows: list[dict], partial: str) -> dict:
    """What a finished comparison's context says that its finished jobs and its folder still tell: the warm start's
    accuracy, the step-0 diagnostic, the teacher:student ratio, the group shape."""
    from rakd.compare.run import parameter_ratio

    layout = cfg.run.layout
    warmstart = layout.comparison_warmstart(cfg.compare.regime)
    diagnostic = layout.comparison(cfg.compare.regime) / "diagnostic.json"
    return context_record(
        config=f"{cfg.run.name}, regime {cfg.compare.regime}",
        jobs=len(rows),
        budget=cfg.compare.budget,
        budget_per_job=None,
        reference=reference_variant(plan_jobs(cfg.compare, cfg.distill)),
        reference_steps=cfg.compare.steps or cfg.distill.rl.steps,
        prompts_per_step=cfg.distill.rl.prompts_per_step,
        group_size=cfg.distill.rl.group_size,
        level=cfg.compare.interval_level,
        warmstart_greedy=rows[0]["warmstart_greedy_accuracy"],
        parameters=parameter_ratio(layout.teacher, warmstart) if warmstart.is_dir() else None,
        step0=json.loads(diagnostic.read_text())["diagnostic"] if diagnostic.is_file() else None,
        partial=partial,
    )


def regime_table(kept: dict[str, tuple[list[dict], dict]]) -> list[dict]:
    """One row per method: its greedy accuracy (mean ± std over seeds) and interval against TRRD α 0.5, per
    regime, at equal training FLOPs and at the reference's step count."""
    table: dict[str, dict] = {}
    for regime, (rows, _) in kept.items():
        for entry in summary_rows(rows, REFERENCE):
            line = table.setdefault(entry["method"], {"method": entry["method"]})
            budget = next((v for k, v in entry.items() if k.endswith("at equal budget")), "reference")
            steps = next((v for k, v in entry.items() if k.endswith("at equal steps")), "reference")
            line[regime] = f"{entry['greedy']} (n={entry['seeds']}, #{entry['rank']})"
            line[f"{regime} vs TRRD α 0.5, equal FLOPs"] = budget
            line[f"{regime} at equal steps"] = f"{entry['greedy at reference steps']}, {steps}"
            if "greedy at reference seconds" in entry:
                seconds = next((v for k, v in entry.items() if k.endswith("at equal seconds")), "reference")
                line[f"{regime} at equal seconds"] = f"{entry['greedy at reference seconds']}, {seconds}"
    return list(table.values())


def plot(kept: dict[str, tuple[list[dict], dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kept), figsize=(5.2 * len(kept), 4.2), sharex=False, squeeze=False)
    for ax, (regime, (rows, _)) in zip(axes[0], kept.items()):
        by_variant: dict[str, list[float]] = {}
        at_steps: dict[str, list[float]] = {}
        at_seconds: dict[str, list[float]] = {}
        for row in rows:
            by_variant.setdefault(row["variant"], []).append(100 * row["greedy_accuracy"])
            for key, kept in (("at_reference_steps", at_steps), ("at_reference_seconds", at_seconds)):
                if row.get(key):
                    kept.setdefault(row["variant"], []).append(100 * row[key]["greedy_accuracy"])
        order = sorted(by_variant, key=lambda v: statistics.fmean(by_variant[v]))
        label = labels(rows)
        for y, variant in enumerate(order):
            values = by_variant[variant]
            colour = "tab:red" if variant.startswith("rakd") else "tab:blue"
            ax.barh(y, statistics.fmean(values), color=colour, alpha=0.35)
            ax.plot(values, [y] * len(values), "o", color=colour, markersize=4)
            steps = at_steps.get(variant, [])
            ax.plot(steps, [y + 0.25] * len(steps), "x", color="black", markersize=4, label="at the reference's steps")
            seconds = at_seconds.get(variant, [])
            ax.plot(seconds, [y - 0.25] * len(seconds), "+", color="tab:green", markersize=5)
        warm = statistics.fmean(100 * r["warmstart_greedy_accuracy"] for r in rows)
        ax.axvline(warm, color="grey", linestyle="--", linewidth=1)
        ax.text(warm, -0.7, " warm start", color="grey", fontsize=8, va="bottom")
        ax.set_yticks(range(len(order)), [label[v] for v in order], fontsize=8)
        ax.set_ylim(-0.8, len(order) - 0.4)
        ax.set_xlabel(
            "test greedy accuracy (%)\ndots: equal training FLOPs; x: the reference's step count; +: its seconds",
            fontsize=8,
        )
        ax.set_title(f"{regime}\n{REGIMES.get(regime, '')}", fontsize=9)
        low = min(min(v) for v in [*by_variant.values(), *at_steps.values(), *at_seconds.values()])
        ax.set_xlim(max(0.0, min(low, warm) - 5), None)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_evidence(pairs: list[str]) -> Path:
    """Recompute the rule's evidence (rakd/stages/evidence.json): every regime it holds, from its committed folder,
    plus each REGIME=FOLDER of `pairs` (a folder under bench/results/), added or replacing that regime's record."""
    from rakd.io import atomic_write_json

    current = json.loads(EVIDENCE_FILE.read_text())["regimes"] if EVIDENCE_FILE.is_file() else []
    folders = {record["regime"]: record["results"] for record in current}
    for pair in pairs:
        regime, sep, folder = pair.partition("=")
        if not sep or not (ROOT / "bench" / "results" / folder / "results.json").is_file():
            raise SystemExit(f"--evidence {pair}: expected REGIME=FOLDER, a comparison kept under bench/results/")
        folders[regime] = folder
    records = [regime_evidence(regime, ROOT / "bench" / "results" / folder) for regime, folder in folders.items()]
    atomic_write_json(EVIDENCE_FILE, {"regimes": records})
    for record in records:
        print(f"{record['regime']}: pass {100 * record['pass_rate']:.1f}%, {record['ratio']:.1f}x, best "
              f"{record['best']}, level {', '.join(record['level']) or '-'} ({record['results']})")  # fmt: skip
    print(f"wrote {EVIDENCE_FILE.relative_to(ROOT)}")
    return EVIDENCE_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", nargs="+", default=["edge", "trace", "base"], help=f"of {list(REGIMES)}")
    parser.add_argument("--name", "--date", dest="date", help="the results folders' suffix (default: today's date)")
    parser.add_argument(
        "--runs-commit",
        help="the commit whose code ran the comparison's jobs, when it is not the one this script runs at (meta.json "
        "names both; the jobs take hours, this script seconds)",
    )
    parser.add_argument(
        "--side-by-side-only",
        action="store_true",
        help="write only the table and figure of the regimes side by side, without copying each regime's results "
        "(those kept earlier, with the commit their jobs ran at, stay as they are)",
    )
    parser.add_argument(
        "--evidence",
        nargs="*",
        metavar="REGIME=FOLDER",
        help="only recompute the which-method-when rule's evidence (rakd/stages/evidence.json) from the committed "
        "results: every regime it holds, plus each REGIME=FOLDER given (a folder under bench/results/)",
    )
    args = parser.parse_args(argv)
    if args.evidence is not None:
        write_evidence(args.evidence)
        return 0
    kept = {}
    for regime in args.regimes:
        config = Path("configs") / f"compare-{regime}.yaml"
        if args.side_by_side_only:
            rows, context, _ = regime_rows(load_config(config))
            kept[regime] = (rows, context)
        else:
            kept[regime] = keep(regime, config, args.date, args.runs_commit)
    out = results_dir("compare-regimes", f"{ROOT}/bench/results/compare-regimes-{args.date}" if args.date else None)
    table = regime_table(kept)
    contexts = {regime: context for regime, (_, context) in kept.items()}
    (out / "regimes.json").write_text(json.dumps({"contexts": contexts, "methods": table}, indent=1) + "\n")
    lines = ["# Methods at equal training FLOPs, per regime", ""]
    for regime, (rows, context) in kept.items():
        lines.append(
            f"- **{regime}** ({REGIMES.get(regime, '')}): {len(rows)} jobs; "
            + "; ".join(line for line in context_lines(context) if not line.startswith(("config:", "jobs:")))
        )
    lines += ["", markdown_table(table), ""]
    (out / "regimes.md").write_text("\n".join(lines))
    plot(kept, out / "regimes.png")
    write_meta(out, regimes=list(kept), runs_commit=args.runs_commit)
    print((out / "regimes.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
