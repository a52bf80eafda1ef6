"""Comparing distillation methods from one shared warm start: the jobs, one job, and the results.

A comparison plans one job per (method, seed, lr) plus, for `rakd`, one per α and the teacher clamp switched off.
Every job starts from the same warm-started student (made once), runs the same RL budget (steps × prompts × G)
and evaluates on val every `eval_every` steps and on the test split at the end. `sft` (SeqKD continued on the
teacher's traces) gets the mean wall time of the `rakd` jobs instead of their step count: the compute-matched
baseline. The orchestration (Prefect tasks on a Dask cluster) lives in `flows/compare.py`; this module holds no
Prefect code.

Outputs under `<run>/compare/`: `results.json` (a row per job), `results.md` (mean ± std over seeds, each
method against `rakd` with a paired bootstrap confidence interval), `curves.png`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import Field

from rakd.layout import RunLayout
from rakd.schema import StageConfig
from rakd.train.rl import Method

CLAMP_OFF = 1e9  # a teacher clamp that never binds


class CompareConfig(StageConfig):
    methods: list[Method] = Field(default_factory=lambda: ["rakd", "grpo", "grpo_kl", "opd", "gkd", "fkl", "sft"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.3, 0.5, 0.7, 1.0], description="rakd only")
    clamp_off: bool = Field(True, description="also run rakd with the teacher clamp switched off")
    lrs: list[float] = Field(default_factory=list, description="RL learning rates (default: distill.rl.optim.lr)")
    steps: int | None = Field(None, ge=1, description="RL steps per job (default: distill.rl.steps)")
    eval_every: int = Field(25, ge=1, description="val accuracy every N steps (the curves)")
    val_problems: int = Field(200, ge=1)
    sft_time_matched: bool = Field(True, description="sft gets the rakd jobs' mean wall time, not their steps")
    workers: int = Field(0, ge=0, description="Dask workers of the local cluster (0: one per CPU core)")
    dask_address: str | None = Field(None, description="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for the confidence intervals")


@dataclass(frozen=True)
class Job:
    method: str
    seed: int
    lr: float
    alpha: float
    teacher_clamp: float
    lr_in_variant: bool = False  # when the comparison sweeps learning rates, each lr is a variant of its own

    @property
    def name(self) -> str:
        clamp = "off" if self.teacher_clamp >= CLAMP_OFF else f"{self.teacher_clamp:g}"
        return f"{self.method}-a{self.alpha:g}-c{clamp}-lr{self.lr:g}-s{self.seed}"

    @property
    def variant(self) -> str:
        """The configuration without the seed: what seeds are averaged over."""
        lr = f", lr {self.lr:g}" if self.lr_in_variant else ""
        if self.method != "rakd":
            return f"{self.method} (lr {self.lr:g})" if lr else self.method
        clamp = ", no clamp" if self.teacher_clamp >= CLAMP_OFF else ""
        return f"rakd (α={self.alpha:g}{clamp}{lr})"


def plan_jobs(cfg: CompareConfig, distill) -> list[Job]:
    """Every job of the comparison; `sft` jobs last (their time budget comes from the rakd jobs)."""
    lrs = cfg.lrs or [distill.rl.optim.lr]
    alpha, clamp = distill.loss.alpha, distill.loss.teacher_clamp
    jobs = []
    for method in cfg.methods:
        variants = [(alpha, clamp)]
        if method == "rakd":
            # α = 1 is GRPO exactly (log ρ = log π_θ − log π_old): the grpo jobs stand for it when they run.
            alphas = [a for a in dict.fromkeys([alpha, *cfg.alphas]) if a != 1.0 or "grpo" not in cfg.methods]
            variants = [(a, clamp) for a in alphas]
            variants += [(alpha, CLAMP_OFF)] if cfg.clamp_off else []
        for a, c in variants:
            jobs += [Job(method, seed, lr, a, c, len(lrs) > 1) for lr in lrs for seed in cfg.seeds]
    return sorted(jobs, key=lambda job: job.method == "sft")


def job_distill_config(distill, compare: CompareConfig, job: Job, time_budget_s: float | None = None):
    """The distill config of one job: the shared warm start's config with the job's method and knobs."""
    rl = distill.rl.model_copy(
        update={
            "steps": compare.steps or distill.rl.steps,
            "optim": distill.rl.optim.model_copy(update={"lr": job.lr}),
            "time_budget_s": time_budget_s,
        }
    )
    if time_budget_s is not None:  # sft: as many steps as fit in the time; the cap only guards against runaways
        rl = rl.model_copy(update={"steps": 50 * rl.steps})
    loss = distill.loss.model_copy(update={"alpha": job.alpha, "teacher_clamp": job.teacher_clamp})
    return distill.model_copy(
        update={
            "method": job.method,
            "seed": job.seed,
            "loss": loss,
            "rl": rl,
            "eval_every": compare.eval_every,
            "val_problems": compare.val_problems,
            "eval": distill.eval.model_copy(update={"per_problem": True}),
            "checkpoint_every": 10**9,
            "fail_after_step": None,
            "threads": 1,  # one torch thread per job: the jobs share the machine's cores
        }
    )


def link_base(base: RunLayout, target: Path) -> None:
    """A fresh folder `target` that sees the base run's data, tokenizer and teacher (symlinks, no copies)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ("data", "tokenizer", "teacher"):
        if (base.root / name).exists():
            os.symlink((base.root / name).resolve(), target / name)


def link_run(base: RunLayout, warmstart: Path, target: RunLayout) -> None:
    """A job's run folder: the base run's data, tokenizer and teacher (links) and a copy of the warm start."""
    link_base(base, target.root)
    shutil.copytree(warmstart, target.student_work / "warmstart")


def run_job(distill_cfg, job: Job, base: RunLayout, warmstart: Path, out: Path) -> dict:
    """One job from the shared warm start; returns its results row (the job folder is removed after)."""
    from rakd.distill import run_distill
    from rakd.io import read_jsonl

    layout = RunLayout(out / job.name)
    link_run(base, warmstart, layout)
    started = time.time()
    result = run_distill(distill_cfg, layout.root, log=lambda *_: None)
    finished = time.time()
    rows = read_jsonl(layout.student / "metrics.jsonl")
    final = result.eval
    row = {
        **asdict(job),
        "name": job.name,
        "variant": job.variant,
        "steps": len(rows),
        "greedy_accuracy": final["greedy_accuracy"],
        "greedy_stderr": final["greedy_stderr"],
        "sampled_accuracy": final.get("sampled_accuracy"),
        "sampled_stderr": final.get("sampled_stderr"),
        "pass_at_k": final.get("pass_at_k"),
        "by_difficulty": final.get("by_difficulty"),
        "warmstart_greedy_accuracy": result.eval_warmstart["greedy_accuracy"],
        "seconds": result.seconds["rl"],
        "started": started,
        "finished": finished,
        "greedy_correct": final.get("greedy_correct"),
        "curve": [
            {"step": r["step"], "seconds": _elapsed(rows, r["step"]), "val": r["val_greedy_accuracy"]}
            for r in rows
            if "val_greedy_accuracy" in r
        ],
    }
    for part in ("sample", "teacher", "update"):
        row[f"seconds_{part}"] = sum(r.get(f"seconds_{part}", 0.0) for r in rows)
    shutil.rmtree(layout.root, ignore_errors=True)
    return row


def _elapsed(rows: list[dict], step: int) -> float:
    return sum(
        r.get("seconds_sample", 0) + r.get("seconds_teacher", 0) + r.get("seconds_update", 0)
        for r in rows
        if r["step"] <= step
    )


# ---------------------------------------------------------------- results


def variants_in_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows))


def summary_rows(rows: list[dict], reference: str, resamples: int, seed: int = 0) -> list[dict]:
    """Mean ± std over seeds per variant, and the paired bootstrap 95% interval of (variant − reference)."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    table = []
    for variant in variants_in_order(rows):
        runs = by_variant[variant]
        greedy = [r["greedy_accuracy"] for r in runs]
        sampled = [r["sampled_accuracy"] for r in runs if r["sampled_accuracy"] is not None]
        entry = {
            "method": variant,
            "seeds": len(runs),
            "greedy": _mean_std(greedy),
            "sampled": _mean_std(sampled),
            "pass@k": _mean_std([r["pass_at_k"] for r in runs if r["pass_at_k"] is not None]),
            "steps": f"{statistics.fmean(r['steps'] for r in runs):.0f}",
            "seconds": f"{statistics.fmean(r['seconds'] for r in runs):.0f}",
        }
        if variant != reference and reference in by_variant:
            low, mid, high = paired_bootstrap(runs, by_variant[reference], resamples, seed)
            entry[f"vs {reference} (greedy, 95% CI)"] = f"{100 * mid:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
        table.append(entry)
    return table


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def paired_bootstrap(runs: list[dict], reference: list[dict], resamples: int, seed: int) -> tuple[float, float, float]:
    """(2.5%, mean, 97.5%) of mean greedy accuracy difference, resampling seeds and test problems (paired by
    problem: both sides see the same resampled problems)."""
    ours = [[c == "1" for c in r["greedy_correct"]] for r in runs]
    theirs = [[c == "1" for c in r["greedy_correct"]] for r in reference]
    n = len(ours[0])
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        problems = [rng.randrange(n) for _ in range(n)]
        a = [ours[rng.randrange(len(ours))] for _ in ours]
        b = [theirs[rng.randrange(len(theirs))] for _ in theirs]
        mean_a = sum(run[i] for run in a for i in problems) / (len(a) * n)
        mean_b = sum(run[i] for run in b for i in problems) / (len(b) * n)
        diffs.append(mean_a - mean_b)
    diffs.sort()
    point = statistics.fmean(r["greedy_accuracy"] for r in runs) - statistics.fmean(
        r["greedy_accuracy"] for r in reference
    )
    return diffs[int(0.025 * resamples)], point, diffs[min(resamples - 1, math.ceil(0.975 * resamples))]


def alpha_rows(rows: list[dict]) -> list[dict]:
    """The α curve of rakd (clamp on): mean ± std greedy and sampled accuracy per α."""
    runs = [r for r in rows if r["method"] == "rakd" and r["teacher_clamp"] < CLAMP_OFF]
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


def plot_curves(rows: list[dict], path: Path) -> None:
    """Val accuracy against RL step and against wall-clock seconds: mean and min-max band per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.cm.tab20.colors  # more variants than tab10 has colours
    for index, variant in enumerate(variants_in_order(rows)):
        curves = [r["curve"] for r in rows if r["variant"] == variant and r["curve"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        for ax, key in zip(axes, ("step", "seconds")):
            xs = [statistics.fmean(c[i][key] for c in curves) for i in range(length)]
            values = [[100 * c[i]["val"] for c in curves] for i in range(length)]
            colour = colours[(2 * index) % len(colours) + (2 * index) // len(colours)]
            ax.plot(xs, [statistics.fmean(v) for v in values], label=variant, color=colour, marker="o", markersize=3)
            ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], alpha=0.12, color=colour)
    axes[0].set_xlabel("RL step")
    axes[1].set_xlabel("wall-clock seconds of RL (sampling + teacher + update)")
    axes[0].set_ylabel("val greedy accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("distillation methods from one warm start (mean over seeds, band: min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows: list[dict], out: Path, cfg: CompareConfig, reference: str, context: dict) -> dict:
    """results.json, per_problem.json, results.md and curves.png in `out/results/` (atomically); returns the
    summary tables. `reference` is the variant every other is compared with (the default rakd)."""
    from rakd.io import atomic_dir, atomic_write_json, atomic_write_text
    from rakd.tables import markdown_table

    tables = {"methods": summary_rows(rows, reference, cfg.bootstrap), "alpha": alpha_rows(rows)}
    slim = [{k: v for k, v in r.items() if k != "greedy_correct"} for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "results") as staging:
        atomic_write_json(staging / "results.json", {"context": context, "runs": slim})
        atomic_write_json(staging / "per_problem.json", {r["name"]: r["greedy_correct"] for r in rows})
        lines = [
            "# Distillation methods compared",
            "",
            *[f"- {k}: {v}" for k, v in context.items()],
            "",
            "## Methods (test greedy / sampled accuracy and pass@k, mean ± std over seeds)",
            "",
            markdown_table(tables["methods"]),
            "",
            "## α (rakd, teacher clamp on)",
            "",
            markdown_table(tables["alpha"]),
            "",
        ]
        atomic_write_text(staging / "results.md", "\n".join(lines))
        plot_curves(rows, staging / "curves.png")
    return tables


def load_rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["runs"]
