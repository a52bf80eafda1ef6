"""`rakd compare`: planning, the paired bootstrap, and the flow on a 2-worker local Dask cluster (marker
`integration`)."""

import json

import pytest
from conftest import MICRO_RUN

from rakd.compare import CLAMP_OFF, CompareConfig, Job, paired_bootstrap, plan_jobs, summary_rows
from rakd.config import load_config

MICRO = [
    *MICRO_RUN,
    "distill.warmstart.n_prompts=32",
    "distill.eval.n_problems=24",  # jobs long enough to cover the workers' uneven start-up
    "distill.eval.k_samples=2",
    "compare.steps=4",
    "compare.eval_every=2",
    "compare.val_problems=4",
    "compare.methods=[rakd,grpo]",
    "compare.seeds=[0]",
    "compare.alphas=[]",
    "compare.clamp_off=false",
    "compare.workers=2",
    "compare.bootstrap=200",
]


def test_plan_covers_methods_seeds_alphas_and_the_clamp():
    distill = load_config(None).distill
    jobs = plan_jobs(CompareConfig(), distill)
    rakd = [j for j in jobs if j.method == "rakd"]
    assert {j.alpha for j in rakd} == {0.0, 0.3, 0.5, 0.7}  # α = 1 is GRPO: the grpo jobs stand for it
    assert sum(j.teacher_clamp >= CLAMP_OFF for j in rakd) == 3  # clamp off, one per seed
    assert len(rakd) == 3 * 5 and len(jobs) == 3 * 5 + 6 * 3
    alone = plan_jobs(CompareConfig(methods=["rakd"], seeds=[0], clamp_off=False), distill)
    assert sorted(j.alpha for j in alone) == [0.0, 0.3, 0.5, 0.7, 1.0]
    assert jobs[-1].method == "sft" and {j.method for j in jobs[-3:]} == {"sft"}  # sft last: it needs rakd's time
    assert Job("rakd", 0, 1e-4, 0.5, CLAMP_OFF).variant == "rakd (α=0.5, no clamp)"


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


def test_paired_bootstrap_brackets_the_difference_and_sees_no_difference_between_equals():
    better = [_run("a", s, "1" * 60 + "0" * 40) for s in range(3)]
    worse = [_run("b", s, "1" * 40 + "0" * 60) for s in range(3)]
    low, mid, high = paired_bootstrap(better, worse, 500, seed=0)
    assert mid == pytest.approx(0.2) and 0.1 < low < 0.2 < high < 0.3
    low, mid, high = paired_bootstrap(worse, worse, 500, seed=0)
    assert mid == 0 and low <= 0 <= high
    rows = summary_rows(better + worse, "b", 500)
    assert (
        rows[0]["method"] == "a" and rows[0]["greedy"] == "60.0 ± 0.0" and "+20.0 [" in rows[0]["vs b (greedy, 95% CI)"]
    )


@pytest.mark.integration
def test_compare_flow_runs_jobs_in_parallel_on_two_dask_workers(prefect_harness, tmp_path):
    from flows.compare import compare_flow

    overrides = [f"run.root={tmp_path}", "run.name=cmp", *MICRO]
    outcome = compare_flow("configs/smoke.yaml", overrides)
    rows = {r["name"]: r for r in outcome["rows"]}
    assert set(rows) == {"rakd-a0.5-c1-lr0.0001-s0", "grpo-a0.5-c1-lr0.0001-s0"}
    a, b = rows.values()
    assert a["started"] < b["finished"] and b["started"] < a["finished"], "the two jobs did not overlap"
    assert all(r["steps"] == 4 and [p["step"] for p in r["curve"]] == [2, 4] for r in rows.values())
    results = tmp_path / "cmp" / "compare" / "results"
    saved = json.loads((results / "results.json").read_text())
    assert {r["name"] for r in saved["runs"]} == set(rows)
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
        "seconds_sample",
        "seconds_teacher",
        "seconds_update",
    }
    assert expected <= set(saved["runs"][0])
    assert "vs rakd (α=0.5)" in (results / "results.md").read_text()
    assert (results / "curves.png").read_bytes()[:4] == b"\x89PNG"
    from rakd.compare import shared_warmstart
    from rakd.registry import stage_keys

    warmstart = tmp_path / "cmp" / "compare" / "warmstart"
    made = (warmstart / "model.safetensors").stat().st_mtime_ns
    cfg = load_config("configs/smoke.yaml", overrides)
    assert shared_warmstart(cfg.distill, cfg.run.layout, stage_keys(cfg)["teacher"]) == warmstart  # reused
    assert (warmstart / "model.safetensors").stat().st_mtime_ns == made
