"""Data parallel training under torchrun: 2 CPU processes (gloo) take the step one process takes on the same
global batch, and stay in sync on an on-policy step."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiers import heavy_fixture

from rakd.models.load import save_model
from rakd.models.zoo import build_model, preset_config

HELPER = Path(__file__).parent / "helpers" / "ddp_step.py"


def two_processes(tmp: Path, methods: str) -> None:
    """One step per method in each of 2 processes torchrun starts (gloo)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [str(HELPER), str(tmp / "model"), str(tmp / "traces.json"), str(tmp / "two"), methods]
    env = {**os.environ, "RAKD_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def two_nodes(tmp: Path, methods: str, out: str) -> None:
    """The README's multi-node line on one machine: two torchrun agents (`--nnodes 2`, one process each) meet
    through the c10d rendezvous on a loopback port, as two hosts would."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    launcher += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=rakd-test"]
    args = [str(HELPER), str(tmp / "model"), str(tmp / "traces.json"), str(tmp / out), methods]
    env = {**os.environ, "RAKD_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    agents = [subprocess.Popen([*launcher, *args], env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for agent in agents:
        _, stderr = agent.communicate(timeout=300)
        assert agent.returncode == 0, stderr[-3000:]


def one_process(tmp: Path, method: str) -> None:
    spec = importlib.util.spec_from_file_location("ddp_step", HELPER)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    threads = torch.get_num_threads()
    try:
        helper.main(str(tmp / "model"), str(tmp / "traces.json"), str(tmp / "one"), method)
    finally:
        torch.set_num_threads(threads)  # the helper runs on one thread, like each torchrun rank


def result(tmp: Path, run: str, method: str, rank: int = 0) -> dict:
    return load_file(str(tmp / run / f"{method}-rank-{rank}.safetensors"))


@heavy_fixture(scope="module")
def setup(tokenizer, tiny_records, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    save_model(build_model(preset_config("test-micro", tokenizer), seed=5), tokenizer, tmp / "model")
    traces = [
        {"question": r["question"], "answer": r["answer"], "completion": r["solution"]} for r in tiny_records[:40]
    ]
    (tmp / "traces.json").write_text(json.dumps(traces))
    return tmp


@heavy_fixture(scope="module")
def two_run(setup):
    """One torchrun launch of 2 processes takes every method's step (a launch is about 12 s of process starts and
    imports on 2 cores); the tests below each read their methods' outputs from it."""
    two_processes(setup, "sft,grpo,warmstart,grpo-fixed,sft+fsdp,warmstart+fsdp,grpo+fsdp")
    return setup


def test_two_processes_take_the_one_process_step_and_stay_in_sync(two_run):
    """sft draws its global batch from traces (no sampling), so both runs see the same 16 rows (rank 0 takes
    rows 0, 2, 4, ..., rank 1 the others): summed gradients and weights after the step match one process. grpo:
    each rank samples its share of the prompts, and the ranks still end the step with identical weights."""
    setup = two_run
    for method in ("warmstart", "sft"):  # the warm start's SFT trainer, and the RL trainer's offline step
        one_process(setup, method)
        alone, rank0 = result(setup, "one", method), result(setup, "two", method)
        rank1 = result(setup, "two", method, 1)
        for key in alone:
            torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)  # the ranks agree exactly
            assert float((rank0[key] - alone[key]).abs().max()) <= 1e-5, (method, key)
    before = load_file(str(setup / "model" / "model.safetensors"))
    assert max(float((alone[f"weight.{name}"] - value).abs().max()) for name, value in before.items()) > 1e-4

    rank0, rank1 = result(setup, "two", "grpo"), result(setup, "two", "grpo", 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(float(v.abs().max()) > 0 for k, v in rank0.items() if k.startswith("grad."))


def test_minibatches_below_a_ranks_rows_take_the_one_process_step_with_pi_old(two_run):
    """grpo on a fixed global batch cut into minibatches of 4 rows (each rank holds more): the decisions that must
    agree across ranks (a π_old pass of its own, the number of optimiser steps) are taken once for the world, and
    two processes take the one-process step (a rank that skipped π_old trained its later minibatches on a ratio of
    exactly 1, never clipped)."""
    setup = two_run
    one_process(setup, "grpo-fixed")
    alone, rank0, rank1 = (result(setup, run, "grpo-fixed", r) for run, r in (("one", 0), ("two", 0), ("two", 1)))
    rows = [
        json.loads((setup / run / f"grpo-fixed-rank-{r}.json").read_text())
        for run, r in (("one", 0), ("two", 0), ("two", 1))
    ]
    assert all(row["old_pass"] and row["updates"] >= 2 for row in rows)
    assert rows[0]["updates"] == rows[1]["updates"] == rows[2]["updates"]
    for key in alone:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
        assert float((rank0[key] - alone[key]).abs().max()) <= 1e-5, key


@heavy_fixture(scope="module")
def micro_run(tmp_path_factory):
    """A prepared micro run trained in one process: data, tokenizer and teacher (a 3-step teacher)."""
    from conftest import MICRO_RUN

    from pipeline.config import load_config
    from rakd.stages.prep import run_prep
    from rakd.stages.teacher import run_teacher

    root = tmp_path_factory.mktemp("micro-runs")
    overrides = [f"run.root={root}", *MICRO_RUN, "teacher.threads=1", "teacher.train.steps=3"]
    cfg = load_config("configs/smoke.yaml", [*overrides, "run.name=one"])
    run_prep(cfg.prep, cfg.run.dir)
    run_teacher(cfg.teacher, cfg.run.dir)
    return cfg, overrides


def copy_run(micro_run, name: str, parts: tuple[str, ...], extra: tuple[str, ...] = ()):
    import shutil

    from pipeline.config import load_config

    one, overrides = micro_run
    cfg = load_config("configs/smoke.yaml", [*overrides, f"run.name={name}", *extra])
    for part in parts:
        shutil.copytree(one.run.dir / part, cfg.run.dir / part)
    return cfg


def test_the_teacher_stage_under_torchrun_trains_the_one_process_teacher(micro_run):
    """`teacher.nproc=2`: a from-scratch teacher trained in 2 processes (gloo) has the weights of the one-process
    teacher within 1e-5; rank 0 alone evaluates and writes teacher/, and teacher.work/ is gone."""
    from rakd.stages.teacher import run_teacher

    one = micro_run[0]
    two = copy_run(micro_run, "two", ("data", "tokenizer"), ("teacher.nproc=2",))
    said = []
    result = run_teacher(two.teacher, two.run.dir, log=said.append)
    assert said and said[0].startswith("[teacher] 2 processes") and "torch.distributed.run" in said[0]
    alone, parallel = (load_file(str(cfg.run.dir / "teacher" / "model.safetensors")) for cfg in (one, two))
    assert max(float((alone[k] - parallel[k]).abs().max()) for k in alone) <= 1e-5
    assert (
        result.eval == json.loads((two.run.dir / "teacher" / "eval.json").read_text())
        and "greedy_accuracy" in result.eval
    )
    assert not (two.run.dir / "teacher.work").exists()
    rows = (two.run.dir / "teacher" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == len((one.run.dir / "teacher" / "metrics.jsonl").read_text().splitlines()) > 0


def test_a_sharded_student_distills_and_resumes_under_torchrun(micro_run):
    """`distill.fsdp` end to end in 2 processes: warm start, RL with val checks and checkpoints (gathered to
    rank 0, marked sharded), a crash after step 3, a resume from step 2 to the end; rank 0 writes the student."""
    from rakd.stages.distill import run_distill
    from rakd.train.checkpoint import list_checkpoints

    fast = ("distill.rl.steps=4", "distill.checkpoint_every=2", "distill.eval_every=2", "distill.val_problems=4")
    fast += ("distill.nproc=2", "distill.fsdp=true", "distill.threads=1")
    cfg = copy_run(micro_run, "fsdp", ("data", "tokenizer", "teacher"), (*fast, "distill.fail_after_step=3"))
    with pytest.raises(RuntimeError, match="distill under torchrun"):
        run_distill(cfg.distill, cfg.run.dir, log=lambda *_: None)
    saved = list_checkpoints(cfg.run.dir / "student.work" / "checkpoints")
    assert [p.name for p in saved] == ["step-2"] and not (cfg.run.dir / "student").exists()
    assert torch.load(saved[0] / "trainer_state.pt", weights_only=True)["sharded"] is True
    resumed = cfg.distill.model_copy(update={"fail_after_step": None})
    result = run_distill(resumed, cfg.run.dir, log=lambda *_: None)
    assert "greedy_accuracy" in result.eval and (cfg.run.dir / "student" / "model.safetensors").exists()
    rows = [json.loads(r) for r in (cfg.run.dir / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "val_greedy_accuracy" in rows[-1]


def test_two_nodes_through_the_rendezvous_take_the_two_process_step(two_run):
    """Two torchrun agents joined by the c10d rendezvous (the several-nodes setup, here on one machine) take the
    step a standalone 2-process run takes: the same SFT weights within 1e-5, ranks in sync."""
    setup = two_run
    two_nodes(setup, "sft", "nodes")
    rank0, rank1 = result(setup, "nodes", "sft"), result(setup, "nodes", "sft", 1)
    standalone = result(setup, "two", "sft")
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
        assert float((rank0[key] - standalone[key]).abs().max()) <= 1e-5, key


def test_a_sharded_student_takes_the_one_process_step(two_run):
    """distill.fsdp: the student sharded across 2 processes (FSDP2, gloo) takes the step one process takes on the
    same global batch (gradients and weights within 1e-5), for the RL trainer's offline step and the warm
    start's SFT; an on-policy grpo step runs on the gathered weights and updates the shards."""
    setup = two_run
    for method in ("warmstart", "sft"):
        if not (setup / "one" / f"{method}-rank-0.safetensors").exists():
            one_process(setup, method)
        alone, sharded = result(setup, "one", method), result(setup, "two", f"{method}+fsdp")
        assert set(sharded) == set(alone)
        for key in alone:
            assert float((sharded[key] - alone[key]).abs().max()) <= 1e-5, (method, key)
        assert not (setup / "two" / f"{method}+fsdp-rank-1.safetensors").exists()  # rank 0 alone writes
    grpo = result(setup, "two", "grpo+fsdp")
    before = load_file(str(setup / "model" / "model.safetensors"))
    assert max(float((grpo[f"weight.{name}"] - value).abs().max()) for name, value in before.items()) > 1e-4
