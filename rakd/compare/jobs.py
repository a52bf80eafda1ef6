"""The comparison's jobs: the plan (one job per method, seed, lr, and for `rakd` per α and clamp), the choices
between its phases (the lr on val, the budget, extra seeds) and each job's distill config. Running one job and
the shared warm start are `rakd.compare.run`'s.

Every job starts from the same warm-started student and evaluates on val every `eval_every` steps and on the test
split at the end. The reference jobs (the default `rakd`) run `compare.steps`; every other job then gets as much
as they spent (`compare.budget`): their steps, their wall seconds, or their training FLOPs from the compute ledger,
teacher generation included, so `seqkd_fresh` pays for the traces it buys and `sft` (sft_continue) reuses the
warm start's for free.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass

from rakd.stages.config import CompareConfig

LABELS = {"sft": "sft_continue"}  # how a method is named in results, where its config name is ambiguous


@dataclass(frozen=True)
class Job:
    method: str
    seed: int
    lr: float
    alpha: float
    teacher_clamp: float | None  # None: the teacher log-ratio unclamped (`compare.clamp_off`)
    lr_in_variant: bool = False  # when the comparison sweeps learning rates, each lr is a variant of its own

    @property
    def name(self) -> str:
        clamp = "off" if self.teacher_clamp is None else f"{self.teacher_clamp:g}"
        return f"{self.method}-a{self.alpha:g}-c{clamp}-lr{self.lr:g}-s{self.seed}"

    @property
    def variant(self) -> str:
        """The configuration without the seed, what seeds are averaged over: a key for grouping and lookups
        (`rakd/a0.5`, `rakd/a0.5/noclamp`, `grpo/lr0.0001`); `label` is how tables and plots name it."""
        parts = [self.method]
        if self.method == "rakd":
            parts += [f"a{self.alpha:g}"] + (["noclamp"] if self.teacher_clamp is None else [])
        return "/".join(parts + ([f"lr{self.lr:g}"] if self.lr_in_variant else []))

    @property
    def label(self) -> str:
        """The variant as results name it: `rakd (α=0.5, no clamp)`, `sft_continue (lr 0.0001)`."""
        lr = f", lr {self.lr:g}" if self.lr_in_variant else ""
        label = LABELS.get(self.method, self.method)
        if self.method != "rakd":
            return f"{label} (lr {self.lr:g})" if lr else label
        clamp = ", no clamp" if self.teacher_clamp is None else ""
        return f"rakd (α={self.alpha:g}{clamp}{lr})"


def job_of(row: dict) -> Job:
    """The job a results row was made by (its fields are the job's), for rows kept by any version of the code."""
    return Job(**{f.name: row[f.name] for f in dataclasses.fields(Job) if f.name in row})


def named(row: dict) -> dict:
    """The row with the variant key and label this code gives its job (rows kept before variants had keys carry
    the label as their variant)."""
    job = job_of(row)
    return {**row, "variant": job.variant, "label": job.label}


def plan_jobs(cfg: CompareConfig, distill) -> list[Job]:
    """Every job of the comparison, the reference jobs first (the others' budget is what they spend)."""
    alpha, clamp = distill.loss.alpha, distill.loss.teacher_clamp
    jobs = []
    for method in cfg.methods:
        lrs = cfg.method_lrs.get(method) or cfg.lrs or [distill.rl.optim.lr]
        variants = [(alpha, clamp)]
        if method == "rakd":
            # α = 1 is GRPO exactly (log ρ = log π_θ − log π_old): the grpo jobs stand for it when they run.
            alphas = [a for a in dict.fromkeys([alpha, *cfg.alphas]) if a != 1.0 or "grpo" not in cfg.methods]
            variants = [(a, clamp) for a in alphas]
            variants += [(alpha, None)] if cfg.clamp_off else []
        for a, c in variants:
            in_variant = len(lrs) > 1 and cfg.lr_choice == "variant"
            jobs += [Job(method, seed, lr, a, c, in_variant) for lr in lrs for seed in cfg.seeds]
    reference = reference_variant(jobs)
    return sorted(jobs, key=lambda job: job.variant != reference)


def sweeps_lr(cfg: CompareConfig) -> bool:
    """Whether each variant's learning rate is chosen on val from a sweep (`compare.lr_choice: val`)."""
    return cfg.lr_choice == "val" and any(len(lrs) > 1 for lrs in [cfg.lrs, *cfg.method_lrs.values()])


def sweep_jobs(cfg: CompareConfig, jobs: list[Job]) -> list[Job]:
    """The jobs that run first: with an lr sweep, every lr on the first seed; else every job."""
    return [job for job in jobs if job.seed == cfg.seeds[0]] if sweeps_lr(cfg) else jobs


def choose_lrs(rows: list[dict]) -> dict[str, float]:
    """Each variant's learning rate: the one whose sweep job reached the highest val greedy accuracy at its budget
    (ties: the smaller lr). Reads val only."""
    best: dict[str, tuple[float, float]] = {}
    for row in sorted(rows, key=lambda r: r["lr"]):
        score = row.get("val_at_budget")
        if score is None:
            raise ValueError(f"job {row['name']}: no val accuracy at its budget to choose a learning rate by")
        if row["variant"] not in best or score > best[row["variant"]][1]:
            best[row["variant"]] = (row["lr"], score)
    return {variant: lr for variant, (lr, _) in best.items()}


def seed_jobs(cfg: CompareConfig, jobs: list[Job], chosen: dict[str, float]) -> list[Job]:
    """After an lr sweep: the other seeds' jobs, at each variant's chosen lr (none for a variant whose sweep jobs
    all failed: it has no lr chosen)."""
    return [job for job in jobs if job.seed != cfg.seeds[0] and job.lr == chosen.get(job.variant)]


def failed_row(job: Job, error: BaseException) -> dict:
    """What the results keep of a job that failed: the job, and why in one line. A job whose process died (a Dask
    worker killed by its memory limit, a native crash) raises `KilledWorker` on the client: the row says so."""
    if type(error).__name__ == "KilledWorker":
        why = "its worker process died while running it (over the worker's memory limit, or a native crash)"
    else:
        why = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return {**asdict(job), "name": job.name, "variant": job.variant, "label": job.label, "error": why}


def gather(jobs: list[Job], submit, slots: int | None = None, done=None, poll: float = 1.0):
    """(the rows of the jobs that finished, in plan order; a `failed_row` for each that raised): `submit(job)`
    returns a future; at most `slots` jobs are out at once, the next submitted when one is `done(future)`, so a
    worker that dies takes only the job it ran with it. One job's failure never ends the others."""
    done = done or (lambda future: future.done())
    results: dict[int, object] = {}
    running: dict[int, object] = {}
    waiting = list(enumerate(jobs))
    while waiting or running:
        while waiting and len(running) < (slots or len(jobs)):
            index, job = waiting.pop(0)
            running[index] = submit(job)
        finished = [index for index, future in running.items() if done(future)]
        if not finished:
            time.sleep(poll)
        for index in finished:
            results[index] = running.pop(index)
    rows, failed = [], []
    for index, job in enumerate(jobs):
        try:
            rows.append(results[index].result())
        except Exception as error:  # noqa: BLE001 - any failure of one job is that job's reported failure
            failed.append(failed_row(job, error))
    return rows, failed


def close_variants(cfg: CompareConfig, rows: list[dict]) -> list[str]:
    """The variants whose mean greedy accuracy at the equal budget lies within `close_points` of another variant's:
    where a few seeds cannot tell two methods apart, each of the two gets `extra_seeds`."""
    means: dict[str, list[float]] = {}
    for row in rows:
        means.setdefault(row["variant"], []).append(row["greedy_accuracy"])
    if not cfg.extra_seeds:
        return []
    mean = {variant: statistics.fmean(values) for variant, values in means.items()}
    return [v for v in mean if any(w != v and abs(mean[v] - mean[w]) * 100 <= cfg.close_points for w in mean)]


def extra_jobs(cfg: CompareConfig, jobs: list[Job], rows: list[dict]) -> list[Job]:
    """`extra_seeds` jobs of the close variants (`close_variants`), each at the lr its rows ran at."""
    lrs = {row["variant"]: row["lr"] for row in rows}
    close = close_variants(cfg, rows)
    first = {job.variant: job for job in jobs if job.seed == cfg.seeds[0] and job.lr == lrs.get(job.variant)}
    seeds = [seed for seed in cfg.extra_seeds if seed not in cfg.seeds]
    return [dataclasses.replace(first[v], seed=seed) for v in close for seed in seeds if v in first]


def plan_problem(cfg: CompareConfig, distill) -> str | None:
    """Why a job of the comparison `cfg` cannot run, naming the keys; None if every one can. Each job's distill
    config is `distill` with the job's method (`job_distill_config` copies it without validation), so every method
    in `compare.methods` goes through the distill config's own checks here, before anything runs."""
    from pydantic import ValidationError

    for method in dict.fromkeys(cfg.methods):
        try:
            type(distill).model_validate({**distill.model_dump(), "method": method})
        except ValidationError as err:
            reason = err.errors()[0]["msg"].removeprefix("Value error, ")
            return f"compare.methods has {method!r}, which this distill config refuses: {reason}"
    return None


def reference_variant(jobs: list[Job]) -> str:
    """The variant every other is measured against and budgeted by: the first rakd one (the default α and
    clamp), else the first planned."""
    return next((job.variant for job in jobs if job.method == "rakd"), jobs[0].variant)


def matched_budget(cfg: CompareConfig, reference_rows: list[dict]) -> dict:
    """The RL budget of every non-reference job, as `job_distill_config` takes it: nothing (budget steps: the
    same steps), the reference jobs' mean wall seconds, or their mean training FLOPs (or `compare.flops`); with a
    FLOP budget each job is also read out at the reference jobs' mean compute seconds (`rl.readout_seconds`)."""
    if cfg.budget == "seconds":
        return {"time_budget_s": statistics.fmean(r["seconds"] for r in reference_rows)}
    if cfg.budget == "flops":
        return {
            "flops_budget": cfg.flops or statistics.fmean(r["flops_total"] for r in reference_rows),
            "readout_seconds": statistics.fmean(r["seconds_compute"] for r in reference_rows),
        }
    return {}


def job_distill_config(distill, compare: CompareConfig, job: Job, budget: dict | None = None):
    """The distill config of one job: the shared warm start's config with the job's method and knobs; with a
    `budget` (`matched_budget`), as many steps as it buys (the step count then only guards against runaways)."""
    steps = compare.steps or distill.rl.steps
    rl = distill.rl.model_copy(
        update={
            "steps": 50 * steps if budget else steps,
            "optim": distill.rl.optim.model_copy(update={"lr": job.lr}),
            "time_budget_s": None,
            "flops_budget": None,
            "readout_steps": steps if budget else None,  # each job read per step too, at the reference's count
            "readout_seconds": None,
            **(budget or {}),
        }
    )
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
