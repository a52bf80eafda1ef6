"""`rakd compare`: planning, the summary's intervals, one job under torchrun and without sampled answers, and the
flow on a 2-worker local Dask cluster (marker `integration`)."""

import dataclasses
import json

import pytest
from conftest import MICRO_RUN

from pipeline.config import load_config
from rakd.compare import (
    CompareConfig,
    Job,
    job_distill_config,
    matched_budget,
    plan_jobs,
    plan_problem,
    reference_variant,
    summary_rows,
)
from rakd.compare.record import JobRow
from rakd.compare.results import pareto_front

MICRO = [
    *MICRO_RUN,
    "distill.warmstart.n_prompts=32",
    "distill.eval.n_problems=24",  # jobs long enough to cover the workers' uneven start-up
    "distill.eval.k_samples=2",
    "distill.rl.zero_adv=kd",  # random micro models: the KD term trains when no group has mixed rewards
    "compare.steps=3",
    "compare.eval_every=1",
    "compare.val_problems=4",
    "compare.methods=[rakd,seqkd_fresh]",
    "compare.seeds=[0,1]",
    "compare.alphas=[]",
    "compare.workers=2",
    "compare.lrs=[1e-4,3e-4]",
    "compare.lr_choice=val",
]


def test_plan_covers_methods_seeds_alphas_and_puts_the_reference_first():
    distill = load_config(None).distill
    jobs = plan_jobs(CompareConfig(), distill)
    rakd = [j for j in jobs if j.method == "rakd"]
    assert {j.alpha for j in rakd} == {0.3, 0.5, 0.7} and len(rakd) == 3 * 3
    assert len(jobs) == 3 * 3 + 6 * 3 and {j.method for j in jobs} >= {"seqkd_fresh", "sft"}
    assert reference_variant(jobs) == "rakd/a0.5" and {j.label for j in jobs[:3]} == {"rakd (α=0.5)"}
    clamp = plan_jobs(CompareConfig(clamp_off=True, methods=["rakd"], seeds=[0]), distill)
    assert sum(j.teacher_clamp is None for j in clamp) == 1
    alone = plan_jobs(CompareConfig(methods=["rakd"], seeds=[0], alphas=[0.0, 1.0]), distill)
    assert sorted(j.alpha for j in alone) == [0.0, 0.5, 1.0]  # α = 1 runs when no grpo job stands for it
    assert Job("rakd", 0, 1e-4, 0.5, None).label == "rakd (α=0.5, no clamp)"
    assert Job("rakd", 0, 1e-4, 0.5, None).variant == "rakd/a0.5/noclamp"
    assert Job("sft", 0, 1e-4, 0.5, 1.0).label == "sft_continue" and Job("sft", 0, 1e-4, 0.5, 1.0).variant == "sft"
    swept = Job("grpo", 0, 1e-4, 0.5, 1.0, lr_in_variant=True)
    assert (swept.variant, swept.label) == ("grpo/lr0.0001", "grpo (lr 0.0001)")


def test_sft_continue_is_refused_where_the_warm_start_has_no_traces(tmp_path):
    from flows.compare import compare_flow
    from rakd.schema import ConfigError

    base = load_config("configs/compare-base.yaml")
    assert base.distill.warmstart.n_prompts == 0 and plan_problem(base.compare, base.distill) is None
    assert plan_problem(CompareConfig(), load_config(None).distill) is None
    scored = load_config(None, ["distill.teacher_scorer.kind=llama_cpp", "distill.teacher_scorer.gguf=t.gguf"])
    assert "compare.methods has 'gkd'" in plan_problem(scored.compare, scored.distill)  # each method's own checks
    path = tmp_path / "c.yaml"
    path.write_text("distill: {warmstart: {n_prompts: 0, stop: null}}\ncompare: {methods: [rakd, sft]}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: compare.methods has 'sft'.*n_prompts=0"):
        compare_flow(str(path))  # refused before any cluster starts or any stage runs


def test_every_other_job_gets_what_the_reference_jobs_spent():
    reference = [
        {"seconds": 10.0, "seconds_compute": 8.0, "flops_total": 3e12},
        {"seconds": 20.0, "seconds_compute": 12.0, "flops_total": 5e12},
    ]
    assert matched_budget(CompareConfig(budget="flops"), reference) == {"flops_budget": 4e12, "readout_seconds": 10.0}
    assert matched_budget(CompareConfig(budget="flops", flops=1e12), reference)["flops_budget"] == 1e12
    assert matched_budget(CompareConfig(budget="seconds"), reference) == {"time_budget_s": 15.0}
    assert matched_budget(CompareConfig(budget="steps"), reference) == {}
    distill = load_config(None).distill
    job = Job("grpo", 0, 1e-4, 0.5, 1.0)
    capped = job_distill_config(distill, CompareConfig(steps=10), job, {"flops_budget": 4e12, "readout_seconds": 9.0})
    assert capped.rl.flops_budget == 4e12 and capped.rl.time_budget_s is None and capped.rl.steps == 500
    assert capped.rl.readout_steps == 10 and capped.rl.readout_seconds == 9.0
    assert job_distill_config(distill, CompareConfig(steps=10), job).rl.steps == 10


def test_the_pareto_front_keeps_what_nothing_beats_on_cost_and_accuracy():
    points = [(1.0, 50.0), (2.0, 40.0), (2.0, 60.0), (3.0, 55.0), (4.0, 70.0), (0.5, 10.0)]
    assert pareto_front(points) == [(0.5, 10.0), (1.0, 50.0), (2.0, 60.0), (4.0, 70.0)]


def _run(variant, seed, correct):
    accuracy = correct.count("1") / len(correct)
    return {
        "variant": variant,
        "greedy_accuracy": accuracy,
        "sampled_accuracy": accuracy,
        "pass_at_k": accuracy,
        "steps": 10,
        "seconds": 1.0,
        "greedy_correct": correct,
        "seed": seed,
    }


def test_the_summary_ranks_and_reads_each_variant_per_budget_and_per_step():
    better = [_run("a", s, "1" * 60 + "0" * 40 if s else "1" * 62 + "0" * 38) for s in range(3)]
    worse = [_run("b", s, "1" * 40 + "0" * 60 if s != 1 else "1" * 41 + "0" * 59) for s in range(3)]
    for row in better:  # read out at the reference's step count too: 10 points lower
        row["at_reference_steps"] = {"greedy_accuracy": row["greedy_accuracy"] - 0.1, "steps": 5,
                                     "greedy_correct": "0" * 10 + row["greedy_correct"][10:]}  # fmt: skip
    assert "greedy at reference seconds" not in summary_rows(worse + better, "b")[0]  # an older comparison
    for row in better:  # and at the reference's compute seconds: 5 points lower
        row["at_reference_seconds"] = {"greedy_accuracy": row["greedy_accuracy"] - 0.05, "steps": 4,
                                       "greedy_correct": "0" * 5 + row["greedy_correct"][5:]}  # fmt: skip
    for row in worse:  # tables name a variant by its label, not its key
        row["label"] = "B"
    rows = summary_rows(worse + better, "b")  # ranked by mean greedy accuracy, whatever the order of runs
    assert [(r["rank"], r["method"]) for r in rows] == [(1, "a"), (2, "B")]
    assert rows[0]["greedy"] == "60.7 ± 1.2" and rows[0]["greedy at reference steps"] == "50.7 ± 1.2"
    assert rows[0]["greedy at reference seconds"] == "55.7 ± 1.2"
    assert rows[0]["vs B at equal budget"].startswith("+20.3 [")
    assert rows[0]["vs B at equal steps"].startswith("+10.3 [")
    assert rows[0]["vs B at equal seconds"].startswith("+15.3 [")
    assert rows[1]["greedy at reference steps"] == "-" and "vs B at equal budget" not in rows[1]


def test_learning_rates_are_chosen_on_val_and_close_variants_get_more_seeds():
    from rakd.compare import choose_lrs, extra_jobs, seed_jobs, sweep_jobs

    cfg = CompareConfig(methods=["rakd", "grpo"], alphas=[], seeds=[0, 1], lrs=[1e-4, 3e-4], lr_choice="val",
                        extra_seeds=[2, 0], close_points=2.0)  # fmt: skip
    jobs = plan_jobs(cfg, load_config(None).distill)
    assert {j.variant for j in jobs} == {"rakd/a0.5", "grpo"} and len(jobs) == 8  # lr is no variant of its own
    first = sweep_jobs(cfg, jobs)
    assert {(j.method, j.lr, j.seed) for j in first} == {(m, lr, 0) for m in ("rakd", "grpo") for lr in (1e-4, 3e-4)}
    sweep = [{"name": j.name, "variant": j.variant, "lr": j.lr, "val_at_budget": 0.5} for j in first]
    sweep[0]["val_at_budget"] = sweep[3]["val_at_budget"] = 0.6  # rakd at 1e-4, grpo at 3e-4
    assert choose_lrs(sweep) == {"rakd/a0.5": 1e-4, "grpo": 3e-4}
    assert choose_lrs([{**r, "val_at_budget": 0.5} for r in sweep]) == {"rakd/a0.5": 1e-4, "grpo": 1e-4}  # ties
    rest = seed_jobs(cfg, jobs, choose_lrs(sweep))
    assert {(j.method, j.lr, j.seed) for j in rest} == {("rakd", 1e-4, 1), ("grpo", 3e-4, 1)}
    rows = [{"variant": "rakd/a0.5", "lr": 1e-4, "greedy_accuracy": 0.60},
            {"variant": "grpo", "lr": 3e-4, "greedy_accuracy": 0.615}]  # fmt: skip
    extra = extra_jobs(cfg, jobs, rows)  # 1.5 points apart: both get seed 2 (seed 0 ran already)
    assert {(j.method, j.lr, j.seed) for j in extra} == {("rakd", 1e-4, 2), ("grpo", 3e-4, 2)}
    rows[1]["greedy_accuracy"] = 0.63
    assert extra_jobs(cfg, jobs, rows) == []
    with pytest.raises(ValueError, match="no val accuracy"):
        choose_lrs([{**sweep[0], "val_at_budget": None}])


def test_a_method_sweeps_its_own_learning_rates():
    from rakd.compare import sweep_jobs
    from rakd.schema import ConfigError

    cfg = CompareConfig(methods=["rakd", "sft"], alphas=[], seeds=[0, 1], lrs=[2e-6], lr_choice="val",
                        method_lrs={"sft": [2e-5, 1e-4]})  # fmt: skip
    jobs = plan_jobs(cfg, load_config(None).distill)
    assert sorted((j.method, j.lr, j.seed) for j in sweep_jobs(cfg, jobs)) == [
        ("rakd", 2e-6, 0), ("sft", 2e-5, 0), ("sft", 1e-4, 0)]  # fmt: skip
    assert {j.variant for j in jobs} == {"rakd/a0.5", "sft"} and len(jobs) == 6
    with pytest.raises((ConfigError, ValueError), match="method_lrs names \\['gkd'\\]"):
        CompareConfig(methods=["rakd"], method_lrs={"gkd": [1e-4]})
    with pytest.raises((ConfigError, ValueError), match="not above 0, for \\['sft'\\]"):
        CompareConfig(methods=["sft"], method_lrs={"sft": []})
    with pytest.raises((ConfigError, ValueError), match="not above 0, for \\['sft'\\]"):
        CompareConfig(methods=["sft"], method_lrs={"sft": [1e-4, 0.0]})


def test_a_job_reads_out_its_budget_and_the_reference_steps_from_one_run():
    from rakd.compare.run import readouts

    final = {"greedy_accuracy": 0.5, "greedy_stderr": 0.1, "greedy_correct": "10",
             "readouts": [{"steps": 4, "at": "budget", "greedy_accuracy": 0.4, "greedy_correct": "00"}]}  # fmt: skip
    budget, at_steps = readouts(final, 10, 10)
    assert budget == {"steps": 4, "greedy_accuracy": 0.4, "greedy_correct": "00"}
    assert at_steps == {"steps": 10, "greedy_accuracy": 0.5, "greedy_stderr": 0.1, "greedy_correct": "10",
                        "val_greedy_accuracy": None}  # fmt: skip
    assert readouts({**final, "readouts": []}, 7, 10)[1] is None  # the step cap stopped it short of 10
    assert readouts({**final, "readouts": []}, 10, None) == (at_steps, None)  # a reference job: one readout


def test_a_job_keeps_the_mean_of_its_trust_region_metrics():
    from rakd.compare.run import clip_means

    rows = [{"clip_high_frac": 0.1, "teacher_clamp_frac": 0.5}, {"clip_high_frac": 0.3}, {"loss": 1.0}]
    assert clip_means(rows) == pytest.approx({"clip_high_frac": 0.2, "teacher_clamp_frac": 0.5})
    assert clip_means([{"loss": 1.0}]) == {}  # a step with no ratio (no informative group, or a method without one)


def test_a_job_reads_out_the_reference_seconds():
    from rakd.compare.run import seconds_readout

    rows = [{"step": i, "seconds_sample": 1.0, "seconds_update": 0.5} for i in range(1, 5)]  # 6 compute seconds
    final = {"greedy_accuracy": 0.5, "greedy_stderr": 0.1, "greedy_correct": "10",
             "readouts": [{"steps": 2, "at": "seconds", "greedy_accuracy": 0.4, "greedy_correct": "00"}]}  # fmt: skip
    assert seconds_readout(final, rows, 3.0) == {"steps": 2, "greedy_accuracy": 0.4, "greedy_correct": "00"}
    plain = {**final, "readouts": []}
    assert seconds_readout(plain, rows, 6.0)["steps"] == 4  # reached at the last step: the final evaluation
    assert seconds_readout(plain, rows, 7.0) is None  # the step cap stopped it short
    assert seconds_readout(final, rows, None) is None  # a reference job


@pytest.mark.integration
def test_compare_flow_budgets_flops_runs_jobs_in_parallel_and_resumes(prefect_harness, tmp_path):
    """The reference rakd's learning-rate sweep (seed 0 at two lrs) side by side on two Dask workers, the choice
    on val, seed 1 at the chosen lr; then seqkd_fresh the same way with the reference jobs' mean training FLOPs as
    its budget; a re-run of the comparison trains nothing again."""
    from flows.compare import compare_flow

    overrides = [f"run.root={tmp_path}", "run.name=cmp", *MICRO]
    outcome = compare_flow("configs/smoke.yaml", overrides)
    rows = {r["name"]: r for r in outcome["rows"]}
    reference = sorted((r for r in rows.values() if r["method"] == "rakd"), key=lambda r: r["seed"])
    fresh = [r for r in rows.values() if r["method"] == "seqkd_fresh"]
    assert [r["seed"] for r in reference] == [0, 1] and sorted(r["seed"] for r in fresh) == [0, 1]
    results = tmp_path / "cmp" / "compare" / "results"
    sweep = json.loads((results / "results.json").read_text())["lr_sweep"]
    assert sorted((r["method"], r["lr"], r["seed"]) for r in sweep) == [
        (m, lr, 0) for m in ("rakd", "seqkd_fresh") for lr in (1e-4, 3e-4)
    ]
    for method in ("rakd", "seqkd_fresh"):  # the chosen lr is the sweep's best on val, and every seed ran at it
        tried = sorted((r for r in sweep if r["method"] == method), key=lambda r: (-r["val_at_budget"], r["lr"]))
        assert {r["lr"] for r in rows.values() if r["method"] == method} == {tried[0]["lr"]}
    a, b = (r for r in sweep if r["method"] == "rakd")
    assert a["worker"] != b["worker"], "the two jobs ran in one worker process, not side by side"
    assert all(r["steps"] == 3 and [p["step"] for p in r["curve"]] == [1, 2, 3] for r in reference)
    assert all(isinstance(r["clip"], dict) for r in rows.values())  # the trust region's metrics (clip_means)
    budget = sum(r["flops_total"] for r in reference) / 2
    for row in fresh:  # it reads out at the first step that reaches the budget: no step short of it, none past it
        spent = {p["step"]: p["flops"] for p in row["curve"]}
        assert spent[row["steps"]] == row["flops_total"] >= budget and spent.get(row["steps"] - 1, 0) < budget
        assert row["flops"]["teacher_generate"] > 0 and "student_sample" not in row["flops"]
        assert row["at_reference_steps"]["steps"] == 3
        # also read at the reference jobs' compute seconds (a wall-clock reading: where it lands varies, but the run
        # goes on to the last of its three readings and no further)
        seconds = row["at_reference_seconds"]
        assert seconds is not None and row["steps_run"] == max(3, row["steps"], seconds["steps"])
        assert len(row["greedy_correct"]) == len(row["at_reference_steps"]["greedy_correct"]) > 0
        if row["steps"] == 3:  # one run read out once: both readings are the same evaluation
            assert row["at_reference_steps"]["greedy_correct"] == row["greedy_correct"]
    assert all(r["at_reference_steps"] is None and r["at_reference_seconds"] is None for r in reference)
    assert all(r["flops"]["student_sample"] > 0 and r["flops"]["teacher_score"] > 0 for r in reference)
    saved = json.loads((results / "results.json").read_text())
    assert {r["name"] for r in saved["runs"]} == set(rows)
    # every key of a job row, and no other (its answers are kept beside it)
    assert all(set(r) == set(JobRow.__annotations__) - {"greedy_correct"} for r in saved["runs"])
    context = saved["context"]  # numbers: the ratio, the step-0 diagnostic, the budget each job got
    assert context["budget"] == "flops" and context["budget_per_job"]["flops_budget"] > 0
    params = context["parameters"]
    assert params["teacher"] >= params["student"] > 0 and params["ratio"] == params["teacher"] / params["student"]
    assert 0 <= context["step0"]["pass_rate"] <= 1 and context["step0"]["prompts"] > 0
    assert context["jobs"] == len(rows) and context["failed_jobs"] == 0
    assert (tmp_path / "cmp" / "compare" / "diagnostic.json").is_file()
    expected = {
        "method",
        "alpha",
        "teacher_clamp",
        "seed",
        "lr",
        "steps",
        "greedy_accuracy",
        "greedy_stderr",
        "sampled_accuracy",
        "sampled_stderr",
        "by_difficulty",
        "seconds",
        "flops_total",
        "flops",
        "seconds_sample",
        "seconds_teacher",
        "seconds_update",
    }
    assert expected <= set(saved["runs"][0])
    markdown = (results / "results.md").read_text()
    assert "vs rakd (α=0.5) at equal budget" in markdown and "| rank |" in markdown
    assert "vs rakd (α=0.5) at equal steps" in markdown and context["interval"]["level"] == 0.95
    assert "- interval: 95%, Welch t" in markdown and "- teacher:student non-embedding parameters: " in markdown
    assert "vs rakd (α=0.5) at equal seconds" in markdown
    assert (results / "per_problem_at_reference_seconds.json").is_file()
    assert (results / "curves.png").read_bytes()[:4] == b"\x89PNG"
    from pipeline.cache import stage_keys
    from rakd.compare import shared_warmstart

    warmstart = tmp_path / "cmp" / "compare" / "warmstart"
    made = (warmstart / "model.safetensors").stat().st_mtime_ns
    cfg = load_config("configs/smoke.yaml", overrides)
    assert shared_warmstart(cfg.distill, cfg.run.layout, stage_keys(cfg)["teacher"]) == warmstart  # reused
    assert (warmstart / "model.safetensors").stat().st_mtime_ns == made
    # A re-run (as after a kill): every finished job's row comes back as it was, nothing trains again.
    again = {r["name"]: r for r in compare_flow("configs/smoke.yaml", overrides)["rows"]}
    assert again == json.loads(json.dumps(rows))  # the kept rows, as JSON keeps them


@pytest.mark.integration
def test_the_plain_comparison_ends_with_its_rows_under_torchrun_and_without_sampled_answers(tmp_path):
    """The comparison without Prefect or Dask (`rakd compare --plain`: the same policy, each job a call in this
    process), with jobs of `distill.nproc: 2` (each a torchrun of 2 gloo processes; rank 0's stage times come back
    through eval.json) and `eval.k_samples: 0` (no sampled accuracy: the α table says '-'): every job's row."""
    from pipeline.compare import compare_plain

    overrides = [
        f"run.root={tmp_path}",
        "run.name=cmp2",
        *MICRO,
        "distill.nproc=2",
        "distill.eval.k_samples=0",
        "compare.methods=[rakd]",
        "compare.seeds=[0]",
        "compare.alphas=[0.3]",
        "compare.steps=2",
        "compare.workers=1",
        "compare.lrs=[]",
    ]
    outcome = compare_plain("configs/smoke.yaml", overrides)
    rows = {r["name"]: r for r in outcome.rows}
    assert set(rows) == {"rakd-a0.5-c1-lr0.0001-s0", "rakd-a0.3-c1-lr0.0001-s0"}
    assert all(r["seconds"] > 0 and r["sampled_accuracy"] is None and r["steps_run"] >= 2 for r in rows.values())
    assert not outcome.failed and len({r["worker"] for r in rows.values()}) == 1  # both jobs in this one process
    alpha = {r["α"]: r for r in outcome.tables["alpha"]}
    assert alpha["0.3"]["sampled"] == "-" and alpha["0.3"]["greedy"] != "-"
    assert (tmp_path / "cmp2" / "compare" / "results" / "results.md").is_file()


def test_a_killed_shared_warm_start_resumes_and_another_configs_is_set_aside(tmp_path, monkeypatch):
    """The comparison's warm start keeps its traces and checkpoints when the comparison is killed, so the next run
    resumes them; a run of another warm-start config sets them aside instead."""
    import rakd.stages.warmstart as warmstart
    from rakd.compare.run import shared_warmstart
    from rakd.layout import RunLayout

    base = RunLayout(tmp_path / "run")
    for name in ("data", "teacher"):
        (base.root / name).mkdir(parents=True)
    seen = []

    def prepare(cfg, run_dir, log=print):  # a warm start killed after its traces, then resumed
        layout = RunLayout(run_dir)
        pending = layout.student_work / "traces.pending.jsonl"
        seen.append(pending.is_file())
        if not pending.is_file():
            pending.write_text('{"question": "1+1", "completion": " 2"}\n')
            raise KeyboardInterrupt("killed while sampling traces")
        layout.warmstart.mkdir()
        (layout.warmstart / "eval_warmstart.json").write_text("{}")
        return layout.warmstart

    monkeypatch.setattr(warmstart, "prepare_warmstart", prepare)
    distill = load_config(None).distill
    with pytest.raises(KeyboardInterrupt):
        shared_warmstart(distill, base, "teacher-key")
    made = shared_warmstart(distill, base, "teacher-key")  # its links to the base run are made again
    assert seen == [False, True] and (made / "eval_warmstart.json").is_file()
    assert not base.comparison_warmstart_work().exists()  # finished: the work folder is gone
    # another config's leftover work is not resumed
    with pytest.raises(KeyboardInterrupt):
        shared_warmstart(distill.model_copy(update={"seed": 7}), base, "teacher-key")
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        shared_warmstart(distill.model_copy(update={"seed": 8}), base, "teacher-key")
    assert seen == [False]


def test_a_shared_warm_start_is_made_again_under_another_precision(tmp_path, monkeypatch):
    """A comparison re-run under another `distill.precision` makes its own warm start: the key it is kept under is
    the distill stage's (`warmstart_work_key`), which holds the precision."""
    import rakd.stages.warmstart as warmstart
    from rakd.compare.run import shared_warmstart, warmstart_key
    from rakd.layout import RunLayout

    base = RunLayout(tmp_path / "run")
    made = []

    def prepare(cfg, run_dir, log=print):
        layout = RunLayout(run_dir)
        layout.warmstart.mkdir(parents=True)
        (layout.warmstart / "eval_warmstart.json").write_text("{}")
        made.append(cfg.precision)
        return layout.warmstart

    monkeypatch.setattr(warmstart, "prepare_warmstart", prepare)
    distill = load_config(None).distill
    first = warmstart_key(shared_warmstart(distill, base, "teacher-key"))
    shared_warmstart(distill, base, "teacher-key")  # the same config: kept
    other = distill.model_copy(update={"precision": "bf16" if distill.precision != "bf16" else "fp32"})
    second = warmstart_key(shared_warmstart(other, base, "teacher-key"))
    assert made == [distill.precision, other.precision] and first != second


def _exits(code):
    import os

    os._exit(code)  # the worker process dies as a native crash or the memory limit's kill would end it


def _raises(message):
    raise ValueError(message)


def test_a_job_that_kills_its_worker_is_reported_failed_and_the_others_finish(tmp_path):
    """On the comparison's local cluster a job whose process dies is not retried on another worker (it would die
    the same way): it comes back as a failed row, the other jobs' rows come back, and the results list it."""
    from dask.distributed import Client

    from flows.compare import dask_address
    from rakd.compare import choose_lrs, gather, seed_jobs, write_results

    cfg = CompareConfig(methods=["rakd", "sft", "grpo"], alphas=[], seeds=[0, 1], lrs=[1e-4, 3e-4],
                        lr_choice="val", workers=1)  # fmt: skip
    jobs = plan_jobs(cfg, load_config(None).distill)
    dies, raises, runs = [job for job in jobs if job.seed == 0 and job.lr == 1e-4]
    with dask_address(cfg) as address, Client(address) as client:
        calls = {dies: (_exits, 3), raises: (_raises, "no traces\nat all"), runs: (abs, -2)}
        rows, failed = gather([dies, raises, runs], lambda job: client.submit(*calls[job]), slots=1, poll=0.1)
    assert rows == [2], failed
    assert [row["name"] for row in failed] == [dies.name, raises.name]
    assert "worker process died" in failed[0]["error"] and failed[1]["error"] == "ValueError: no traces"
    assert failed[0]["variant"] == dies.variant and failed[0]["seed"] == 0
    # a variant whose sweep failed has no learning rate chosen: its other seeds do not run
    sweep = [{"name": j.name, "variant": j.variant, "lr": j.lr, "val_at_budget": 0.5} for j in jobs[:2]]
    assert {j.variant for j in seed_jobs(cfg, jobs, choose_lrs(sweep))} == {jobs[0].variant}
    kept = [{**dataclasses.asdict(j), **_run(j.variant, j.seed, "1" * 6 + "0" * 4), "name": j.name, "curve": []}
            for j in jobs if j.method == "rakd" and j.lr == 1e-4]  # fmt: skip
    write_results(kept, tmp_path, cfg, "rakd/a0.5", {}, failed=failed)
    saved = json.loads((tmp_path / "results" / "results.json").read_text())
    assert [row["name"] for row in saved["failed"]] == [dies.name, raises.name]
    markdown = (tmp_path / "results" / "results.md").read_text()
    assert "## Jobs that failed" in markdown and f"- {raises.name}: ValueError: no traces" in markdown
