import dataclasses
import json
import math

import pytest
import torch
from conftest import MICRO_RUN
from tiers import heavy_fixture

import rakd.train.collect as collect
import rakd.train.rl as rl
from pipeline.config import load_config
from rakd.evaluate import EvalResult
from rakd.io import read_jsonl, to_jsonl
from rakd.losses import LOSSES
from rakd.models.load import ModelLoadError, load_causal_lm
from rakd.models.zoo import build_model, preset_config
from rakd.stages.config import WarmStartConfig
from rakd.stages.distill import InjectedFault, run_distill
from rakd.stages.prep import run_prep
from rakd.stages.teacher import run_teacher
from rakd.stages.traces import warmstart_prompts
from rakd.stages.warmstart import check_same_tokenizer, distill_records
from rakd.train.config import LossParams, RLConfig
from rakd.train.rl import RLTrainer

FAST = [
    *MICRO_RUN,
    "distill.rl.steps=4",
    "distill.checkpoint_every=2",
    "distill.method=opd",
    "distill.eval_every=2",
    "distill.val_problems=4",
]


@heavy_fixture(scope="module")
def prepared(tmp_path_factory):
    """A run folder with data, tokenizer and a (barely) trained micro teacher."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config("configs/smoke.yaml", [f"run.root={root}", *FAST])
    run_prep(cfg.prep, cfg.run.dir)
    run_teacher(cfg.teacher, cfg.run.dir)
    return cfg


def fresh_run(prepared, tmp_path, name, extra=()):
    import shutil

    cfg = load_config("configs/smoke.yaml", [f"run.root={tmp_path}", f"run.name={name}", *FAST, *extra])
    for part in ("data", "tokenizer", "teacher"):
        shutil.copytree(prepared.run.dir / part, cfg.run.dir / part)
    return cfg


def test_distill_sees_no_solutions(prepared):
    rows = distill_records(prepared.run.layout, "train")
    assert rows and all(set(row) == {"id", "question", "answer", "ops"} for row in rows)


def test_distill_stage_writes_outputs_with_finite_metrics(prepared, tmp_path, monkeypatch):
    seen = {}
    original = RLTrainer.__init__

    def spy(self, student, teacher, tokenizer, records, *args, **kw):
        seen["records"] = records
        original(self, student, teacher, tokenizer, records, *args, **kw)

    monkeypatch.setattr(RLTrainer, "__init__", spy)
    cfg = fresh_run(prepared, tmp_path, "outputs")
    result = run_distill(cfg.distill, cfg.run.dir, log=lambda *_: None)
    assert all("solution" not in row for row in seen["records"])
    out = cfg.run.dir / "student"
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "eval.json",
        "eval_warmstart.json",
        "metrics.jsonl",
        "traces.jsonl",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert not (cfg.run.dir / "student.work").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert all(v == v and abs(v) != float("inf") for v in row.values() if isinstance(v, float))
        assert {
            "reward_mean",
            "accuracy",
            "loss",
            "entropy",
            "response_length",
            "tokens_per_s",
            "seconds_sample",
            "seconds_teacher",
            "seconds_update",
            "reverse_kl",
        } <= set(row)
    assert {"greedy_accuracy", "sampled_accuracy", "greedy_stderr", "no_answer_rate"} <= set(result.eval)
    assert {"val_greedy_accuracy", "val_sampled_accuracy"} <= set(rows[1]) and "val_greedy_accuracy" not in rows[0]


def test_crash_and_resume_gives_the_same_weights(prepared, tmp_path):
    straight = fresh_run(prepared, tmp_path, "straight")
    run_distill(straight.distill, straight.run.dir, log=lambda *_: None)
    broken = fresh_run(prepared, tmp_path, "broken", ["distill.fail_after_step=2"])
    with pytest.raises(InjectedFault):
        run_distill(broken.distill, broken.run.dir, log=lambda *_: None)
    assert not (broken.run.dir / "student").exists()
    resumed = fresh_run(prepared, tmp_path, "broken2")
    (broken.run.dir / "student.work").rename(resumed.run.dir / "student.work")
    run_distill(resumed.distill, resumed.run.dir, log=lambda *_: None)
    from safetensors.torch import load_file

    a = load_file(straight.run.dir / "student/model.safetensors")
    b = load_file(resumed.run.dir / "student/model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    rows = (resumed.run.dir / "student/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]


def test_a_changed_config_never_resumes_another_configs_checkpoints(prepared, tmp_path):
    broken = fresh_run(prepared, tmp_path, "changed", ["distill.fail_after_step=2"])
    with pytest.raises(InjectedFault):
        run_distill(broken.distill, broken.run.dir, log=lambda *_: None)
    work = broken.run.dir / "student.work"
    assert [p.name for p in (work / "checkpoints").iterdir()]  # RL checkpoints of the first config
    lr = 3 * broken.distill.rl.optim.lr  # another RL learning rate: the RL checkpoints are not this config's
    changed = load_config("configs/smoke.yaml", [f"run.root={tmp_path}", "run.name=changed", *FAST,
                                                 f"distill.rl.optim.lr={lr}"])  # fmt: skip
    lines = []
    run_distill(changed.distill, changed.run.dir, log=lines.append)
    # the warm start, whose own config did not change, is kept; the RL checkpoints are set aside
    assert any("held another config's work" in line and "kept: warmstart" in line for line in lines), lines
    assert not any("resumed from checkpoint" in line for line in lines)
    assert not any(line.startswith("[warmstart]") for line in lines)  # no traces sampled again
    rows = (changed.run.dir / "student/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]
    assert (changed.run.dir / "student/model.safetensors").is_file()


def test_rl_lr_runs_each_rate_from_the_warm_start_and_keeps_the_best_on_val(prepared, tmp_path):
    lrs = "distill.rl_lr={lrs: [1.0e-4, 3.0e-3], problems: 6}"
    cfg = fresh_run(prepared, tmp_path, "lr", [lrs, "distill.fail_after_step=3"])
    with pytest.raises(InjectedFault):  # in the first rate's run: its checkpoint at step 2 is kept
        run_distill(cfg.distill, cfg.run.dir, log=lambda *_: None)
    record = json.loads((cfg.run.dir / "student.work/rl_lr.json").read_text())
    assert [c["lr"] for c in record["candidates"]] == [None]  # the warm start read once, before any rate
    lines = []
    resumed = fresh_run(prepared, tmp_path, "lr2", [lrs])
    (cfg.run.dir / "student.work").rename(resumed.run.dir / "student.work")
    result = run_distill(resumed.distill, resumed.run.dir, log=lines.append)
    assert any("lr 0.0001 resumed from checkpoint step 2" in line for line in lines), lines
    sweep = result.eval["rl_lr"]
    candidates = {c["lr"]: c for c in sweep["candidates"]}
    assert list(candidates) == [None, 1e-4, 3e-3] and [c["steps"] for c in candidates.values()] == [0, 4, 4]
    assert [step for step, _ in candidates[3e-3]["val_curve"]] == [2, 4]  # eval_every=2: each rate's curve is kept
    best = max(c["val_greedy_accuracy"] for c in candidates.values())
    assert candidates[sweep["chosen"]]["val_greedy_accuracy"] == best
    # the student written is the chosen candidate's: read on the same val problems it gives the same accuracy
    from rakd.flops import Ledger
    from rakd.stages.distill import final_val

    student, tokenizer = load_causal_lm(resumed.run.dir / "student")
    again = final_val(resumed.distill.model_copy(update={"val_problems": 6}), student, tokenizer,
                      resumed.run.layout, "fp32")  # fmt: skip
    assert again["val_greedy_accuracy"] == best
    # the metrics are the kept rate's (none: the warm start kept); the ledger holds both rates' RL steps
    metrics = resumed.run.dir / "student/metrics.jsonl"
    kept = read_jsonl(metrics) if metrics.exists() else []
    assert len(kept) == (0 if sweep["chosen"] is None else 4)
    assert result.eval["flops"]["student_update"] > Ledger.of_rows(kept).student_update
    assert not (resumed.run.dir / "student.work").exists()


def test_rl_lr_refuses_what_it_cannot_combine_with():
    with pytest.raises(Exception, match="distill.rl.steps=0"):
        load_config("configs/smoke.yaml", ["distill.rl_lr={lrs: [1.0e-4, 1.0e-3]}", "distill.rl.steps=0"])
    with pytest.raises(Exception, match="flops_budget"):
        load_config("configs/smoke.yaml", ["distill.rl_lr={lrs: [1.0e-4, 1.0e-3]}", "distill.rl.flops_budget=1e9"])
    with pytest.raises(Exception, match="given once"):
        load_config("configs/smoke.yaml", ["distill.rl_lr={lrs: [1.0e-4, 1.0e-4]}"])


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_one_step_changes_every_student_parameter_and_no_teacher_parameter(
    method, tokenizer, tiny_records, monkeypatch, tmp_path
):
    # Mixed rewards so that every group carries an RL signal.
    monkeypatch.setattr("rakd.train.collect.reward", lambda text, answer: float(len(text) % 2))
    teacher = build_model(preset_config("test-micro", tokenizer), seed=0).requires_grad_(False)
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:8]]
    traces = [
        {"question": r["question"], "answer": r["answer"], "completion": r["solution"]} for r in tiny_records[:32]
    ]
    cfg = RLConfig(prompts_per_step=4, group_size=8, max_new_tokens=16, minibatch_size=64)
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    metrics = RLTrainer(student, teacher, tokenizer, records, traces, method, LossParams(), cfg, tmp_path, seed=0).step(
        0
    )
    assert metrics["updates"] >= 1
    unchanged = [k for k, v in student.state_dict().items() if torch.equal(v, before_s[k])]
    assert unchanged == []
    assert all(torch.equal(v, before_t[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("backend", ["generate", "static", "graph"])
def test_an_rl_step_runs_on_every_sampler(backend, tokenizer, tiny_records, monkeypatch, tmp_path):
    """`distill.rl.backend`: the `generate` and `static` samplers feed a `rakd` step that updates the student
    (`loop`, the default, is every other test's; the samplers' agreement is tests/test_rollout.py's)."""
    monkeypatch.setattr("rakd.train.collect.reward", lambda text, answer: float(len(text) % 2))
    teacher = build_model(preset_config("test-micro", tokenizer), seed=0).requires_grad_(False)
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:8]]
    cfg = RLConfig(prompts_per_step=4, group_size=4, max_new_tokens=12, minibatch_size=64, backend=backend)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    metrics = RLTrainer(student, teacher, tokenizer, records, [], "rakd", LossParams(), cfg, tmp_path, seed=0).step(0)
    assert metrics["updates"] == 1 and metrics["rows_in_loss"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_tokenizer_mismatch_names_both(tokenizer, tmp_path, tiny_records):
    from transformers import AutoTokenizer

    from rakd.models.tokenizer import TokenizerConfig, train_tokenizer

    train_tokenizer(tiny_records[:50], TokenizerConfig(vocab_size=270), tmp_path / "other")
    other = AutoTokenizer.from_pretrained(tmp_path / "other")
    with pytest.raises(ModelLoadError, match="teacher tokenizer .* and student tokenizer .*other.* differ"):
        check_same_tokenizer(tokenizer, other)


@pytest.mark.parametrize("zero_adv, expect_update", [("skip", False), ("kd", True)])
def test_all_equal_groups_are_skipped_or_distilled(
    zero_adv, expect_update, tokenizer, tiny_records, monkeypatch, tmp_path
):
    monkeypatch.setattr("rakd.train.collect.reward", lambda text, answer: 0.0)  # every group degenerate
    teacher = build_model(preset_config("test-micro", tokenizer), seed=0).requires_grad_(False)
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:4]]
    cfg = RLConfig(prompts_per_step=4, group_size=4, max_new_tokens=8, zero_adv=zero_adv)
    before = student.model.embed_tokens.weight.clone()
    metrics = RLTrainer(student, teacher, tokenizer, records, [], "rakd", LossParams(), cfg, tmp_path, seed=0).step(0)
    assert metrics["degenerate_frac"] == 1.0
    assert (metrics["updates"] > 0) == expect_update
    assert (not torch.equal(before, student.model.embed_tokens.weight)) == expect_update
    if expect_update:
        assert metrics["kd/kl_student_teacher"] > 0


def test_minibatches_are_cut_from_the_world_rows_alike_for_any_number_of_ranks():
    """The world's loss rows (named by position) shuffled by seed and cut into equal parts: one process and two
    ranks holding every other row get the same parts; the order differs between steps and epochs (the shuffle
    was once seeded with the epoch only, so every step used the same order)."""
    from rakd.train.distributed import World
    from rakd.train.plan import minibatch_chunks

    class Two(World):  # two ranks in one process: the other rank's positions are added by hand
        def __init__(self, rank, other):
            super().__init__(rank, 2)
            object.__setattr__(self, "other", other)

        def max(self, value):
            return max(value, int(self.other.max()) + 1)

        def sum_tensor(self, tensor):
            extra = torch.zeros_like(tensor)
            extra[self.other] = 1.0
            return tensor + extra

    positions = torch.tensor([0, 2, 3, 5, 6, 7, 9, 11, 12, 13])  # the loss rows of 14 drawn
    alone = [positions[c].tolist() for c in minibatch_chunks(positions, 3, seed=5, world=World())]
    assert sorted(sum(alone, [])) == positions.tolist() and [len(c) for c in alone] == [4, 3, 3]
    even, odd = positions[positions % 2 == 0], positions[positions % 2 == 1]
    ranks = [[p[c].tolist() for c in minibatch_chunks(p, 3, seed=5, world=Two(r, q))] for r, p, q in
             ((0, even, odd), (1, odd, even))]  # fmt: skip
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(c) for c in alone]
    assert minibatch_chunks(positions, 3, seed=6, world=World())[0].tolist() != alone[0]
    assert minibatch_chunks(positions[:0], 0, seed=5, world=World()) == []


def test_opd_and_gkd_train_on_every_group_without_redraws(tokenizer, tiny_records, monkeypatch, tmp_path):
    """A loss that reads no advantage keeps all-equal groups and draws once, whatever dynamic sampling says."""
    monkeypatch.setattr("rakd.train.collect.reward", lambda text, answer: 0.0)  # every group all-wrong
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:40]]
    cfg = RLConfig(prompts_per_step=2, group_size=4, max_new_tokens=6, min_informative_groups=3, max_draws=4)
    for method in ("opd", "gkd"):
        trainer = RLTrainer(student, student, tokenizer, records, [], method, LossParams(), cfg, tmp_path, seed=0)
        collected = trainer.collect(0)
        assert collected.info["draws"] == 1 and len(collected.batch.texts) == 8 and len(trainer.prompt_order(0)) == 2
    grpo = RLTrainer(student, student, tokenizer, records, [], "grpo", LossParams(), cfg, tmp_path, seed=0)
    assert grpo.collect(0).info["draws"] == 4  # an advantage method redraws


def test_dynamic_sampling_draws_until_enough_mixed_groups_and_drops_the_rest(
    tokenizer, tiny_records, monkeypatch, tmp_path
):
    calls = {"n": 0}

    def reward(text, answer):  # draw 1: every group all-wrong; draw 2 onwards: mixed groups
        calls["n"] += 1
        return 0.0 if calls["n"] <= 8 else float(calls["n"] % 2)

    monkeypatch.setattr("rakd.train.collect.reward", reward)
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:40]]
    cfg = RLConfig(prompts_per_step=2, group_size=4, max_new_tokens=6, min_informative_groups=3, max_draws=4)
    trainer = RLTrainer(student, student, tokenizer, records, [], "grpo", LossParams(), cfg, tmp_path, seed=0)
    collected = trainer.collect(0)
    batch, rewards, info = collected.batch, collected.rewards, collected.info
    assert info["draws"] == 3 and info["groups_drawn"] == 6 and info["groups_informative"] == 4
    assert len(rewards) == 16 and len(batch.texts) == 16  # the all-wrong groups of draw 1 were dropped
    assert info["reward_mean"] == pytest.approx(8 / 24)  # over every sampled rollout, kept or not
    prompts = trainer.prompt_order(0)
    assert len({p["question"] for p in prompts}) == len(prompts) == 8  # no prompt twice in one step


def test_log_probs_are_taken_at_the_sampling_temperature(tokenizer, tiny_records, tmp_path):
    from rakd.rollout import forward_completion, sample, score_completions

    model = build_model(preset_config("test-micro", tokenizer), seed=1).eval()
    batch = sample(model, tokenizer, [r["question"] for r in tiny_records[:3]], max_new_tokens=6, temperature=0.5)
    with torch.no_grad():
        logits = forward_completion(
            model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask
        )
    manual = torch.log_softmax(logits / 0.5, -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(score_completions(model, batch, temperature=0.5), manual, atol=1e-5)
    assert not torch.allclose(score_completions(model, batch), manual, atol=1e-3)
    cfg = RLConfig(prompts_per_step=2, group_size=4, max_new_tokens=6, temperature=0.5)
    trainer = RLTrainer(model, model, tokenizer, [], [], "rakd", LossParams(), cfg, tmp_path, seed=0)
    assert trainer.temperature == 0.5
    assert RLTrainer(model, model, tokenizer, [], [], "sft", LossParams(), cfg, tmp_path, seed=0).temperature == 1.0


def test_teacher_scores_only_the_rows_that_enter_the_loss(tokenizer, tiny_records, monkeypatch, tmp_path):
    import rakd.rollout.scoring as scoring
    import rakd.train.collect as collect

    outcomes = iter([1.0, 0.0, 1.0, 0.0] + [0.0] * 4)  # group 1 mixed, group 2 all wrong (no RL signal)
    monkeypatch.setattr(collect, "reward", lambda text, answer: next(outcomes))
    scored, real = [], scoring.score_completions  # every torch scoring pass (teacher and π_old) goes through it
    monkeypatch.setattr(
        scoring,
        "score_completions",
        lambda model, batch, **kw: scored.append(len(batch.texts)) or real(model, batch, **kw),
    )
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    teacher = build_model(preset_config("test-micro", tokenizer), seed=2)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:2]]
    cfg = RLConfig(prompts_per_step=2, group_size=4, max_new_tokens=6, min_informative_groups=0)  # one draw
    metrics = RLTrainer(student, teacher, tokenizer, records, [], "rakd", LossParams(), cfg, tmp_path, seed=0).step(0)
    # The teacher scores the 4 rows; π_old needs no pass of its own when the update is one optimiser step
    # (it is π_θ before that step: the update's own log-probs, detached).
    assert metrics["rows_in_loss"] == 4 and scored == [4]
    assert metrics["degenerate_frac"] == 0.5 and metrics["updates"] == 1

    # Two optimiser steps (two PPO epochs): π_old is scored before the first, on the same 4 rows.
    outcomes = iter([1.0, 0.0, 1.0, 0.0] + [0.0] * 4)
    monkeypatch.setattr(collect, "reward", lambda text, answer: next(outcomes))
    scored.clear()
    cfg = cfg.model_copy(update={"ppo_epochs": 2})
    metrics = RLTrainer(student, teacher, tokenizer, records, [], "rakd", LossParams(), cfg, tmp_path, seed=0).step(0)
    assert scored == [4, 4] and metrics["updates"] == 2


def test_warmstart_curriculum_keeps_easy_questions_and_a_seeded_share_of_harder_ones():
    records = [{"question": f"q{i}", "answer": "1", "ops": 1 + i % 3} for i in range(3000)]
    base = WarmStartConfig(n_prompts=2400, max_difficulty=None)
    assert warmstart_prompts(records, base, seed=0) == records[:2400]  # no curriculum: the first n_prompts

    cfg = base.model_copy(update={"max_difficulty": 2, "harder_fraction": 0.25})
    kept = warmstart_prompts(records, cfg, seed=0)
    easy = [r for r in records[:2400] if r["ops"] <= 2]
    harder = [r for r in kept if r["ops"] == 3]
    assert [r for r in kept if r["ops"] <= 2] == easy  # every easy one of the first n_prompts, in order
    assert all(r in records[:2400] for r in harder)
    assert 150 <= len(harder) <= 250  # 25% of 800
    assert warmstart_prompts(records, cfg, seed=0) == kept  # seeded
    assert warmstart_prompts(records, cfg, seed=1) != kept
    assert [r for r in warmstart_prompts(records, cfg.model_copy(update={"harder_fraction": 0.0}), 0)] == easy


def test_warmstart_curriculum_names_the_record_without_a_difficulty():
    records = [{"question": "1+1=?", "answer": "2", "ops": 1}, {"question": "x", "answer": "1"}]
    cfg = WarmStartConfig(n_prompts=10, max_difficulty=1)
    with pytest.raises(ValueError, match=r"max_difficulty.*line 2"):
        warmstart_prompts(records, cfg, seed=0)
    # A source with no difficulty at all (GSM8K, most JSONL files): nothing to filter by, every question is kept.
    plain = [{"question": f"q{i}", "answer": "1"} for i in range(5)]
    assert warmstart_prompts(plain, cfg, seed=0) == plain


def test_the_warm_start_alone_is_a_distill_stage(prepared, tmp_path):
    """rl.steps=0 (SFT on the teacher's traces and nothing else) runs through the stage and its summary."""
    from rakd.stages.distill import run_stage

    cfg = fresh_run(prepared, tmp_path, "sft-only", ["distill.rl.steps=0"])
    summary = run_stage(cfg.distill, cfg.run.layout)
    assert summary["val_by_step"] == [] and not (cfg.run.dir / "student/metrics.jsonl").exists()
    assert summary["eval"]["n"] == summary["eval_warmstart"]["n"] > 0


def leave_traces(cfg, traces: list[dict]) -> None:
    """The traces of a warm start's first round as a crashed run of `cfg` leaves them in its work folder, under its
    key (the teacher's cost made up: the micro teacher solves nothing)."""
    from rakd.keys import claim_work, work_key

    work = cfg.run.layout.student_work
    claim_work(work, work_key(cfg.distill))
    (work / "traces.pending.jsonl").write_text(to_jsonl(traces))
    entry = {"round": 0, "step": 0, "prompts": len(traces), "traces": len(traces), "teacher_generate": 1000}
    (work / "traces.rounds.json").write_text(json.dumps([entry]))


def test_warmstart_stops_at_its_target_val_accuracy(prepared, tmp_path, monkeypatch):
    """warmstart.stop: SFT checks greedy accuracy on the qualifying val questions every `every` steps and ends
    the warm start once it reaches the target; the checks land in the warm start's metrics."""
    import rakd.stages.stop as valstop

    real, checks = valstop.evaluate_model, []

    def scripted(model, tokenizer, records, cfg, precision):  # the real evaluation, a scripted accuracy
        result = real(model, tokenizer, records, cfg, precision)
        if cfg.n_problems == 7 and cfg.k_samples == 0:
            checks.append(records)
            return dataclasses.replace(result, greedy_accuracy=[0.1, 0.3][len(checks) - 1])
        return result

    monkeypatch.setattr(valstop, "evaluate_model", scripted)
    stop = "distill.warmstart.stop={val_accuracy: 0.25, min_difficulty: 2, every: 2, problems: 7}"
    cfg = fresh_run(prepared, tmp_path, "stop", ["distill.rl.steps=0", "distill.warmstart.sft.steps=12", stop])
    # the micro teacher solves nothing: traces as a crashed run would have left them (the data's own solutions)
    traces = [
        {"question": r["question"], "answer": r["answer"], "completion": " " + r["solution"]}
        for r in read_jsonl(cfg.run.layout.split("train"))[:16]
    ]
    leave_traces(cfg, traces)
    run_distill(cfg.distill, cfg.run.dir)

    assert len(checks) == 2 and all(r["ops"] >= 2 for records in checks for r in records)
    student = cfg.run.dir / "student"
    assert json.loads((student / "eval_warmstart.json").read_text())["sft_steps"] == 4
    rows = [json.loads(line) for line in (student / "metrics_warmstart.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r.get("val_check_accuracy") for r in rows] == [None, 0.1, None, 0.3]


def test_warmstart_stop_names_a_val_split_without_such_questions(prepared, tmp_path):
    stop = "distill.warmstart.stop={val_accuracy: 0.5, min_difficulty: 99}"
    cfg = fresh_run(prepared, tmp_path, "stop-none", ["distill.rl.steps=0", stop])
    with pytest.raises(ValueError, match=r"val\.jsonl has no questions with at least 99 operations"):
        run_distill(cfg.distill, cfg.run.dir)


def test_warmstart_stop_checks_every_val_question_when_the_source_has_no_difficulty(tmp_path, monkeypatch):
    """GSM8K-like data (no `ops`): min_difficulty cannot filter, so the target is checked on all val questions."""
    import rakd.stages.stop as valstop
    import rakd.stages.warmstart as warmstart
    from rakd.layout import RunLayout

    layout = RunLayout(tmp_path)
    layout.split("val").parent.mkdir(parents=True)
    val = [{"id": str(i), "question": f"q{i}", "answer": "1"} for i in range(5)]
    layout.split("val").write_text(to_jsonl(val))
    seen = []
    result = EvalResult(5, greedy_accuracy=0.5, greedy_stderr=0.2, no_answer_rate=0.0, greedy_accuracy_flexible=0.5,
                        mean_response_tokens=9.0, k_samples=0, eval_flops=7)  # fmt: skip
    monkeypatch.setattr(valstop, "evaluate_model", lambda m, t, records, c, p: seen.append(records) or result)
    cfg = load_config(None, ["distill.warmstart.stop={val_accuracy: 0.5, min_difficulty: 4, every: 3}"]).distill
    hook = warmstart.warmstart_stop(cfg, None, None, layout, lambda *_: None, "fp32")
    assert hook(2, {}) is False and seen == []  # not a check step
    row = {}
    assert hook(3, row) is True and row == {"val_check_accuracy": 0.5, "flops_eval": 7}
    assert [r["id"] for r in seen[0]] == list("01234")


def scripted_warmstart(prepared, tmp_path, monkeypatch, name, extra=(), crash_at=None):
    """A warm start whose target checks read a scripted 10% (never reached) and whose teacher answers with the
    data's own solutions (the micro teacher solves nothing), counting its calls; returns (cfg, sampled)."""
    import rakd.stages.stop as valstop
    import rakd.stages.traces as traces

    solutions = {r["question"]: r["solution"] for r in read_jsonl(prepared.run.layout.split("train"))}
    real, sampled = valstop.evaluate_model, []

    def scripted(model, tokenizer, records, cfg, precision):
        result = real(model, tokenizer, records, cfg, precision)
        if cfg.n_problems == 7 and cfg.k_samples == 0:
            return dataclasses.replace(result, greedy_accuracy=0.1)
        return result

    def traces_of(model, tokenizer, records, cfg, seed, precision="fp32"):
        sampled.append([r["question"] for r in records])
        made = [{"question": r["question"], "answer": r["answer"], "completion": " " + solutions[r["question"]]}
                for r in records]  # fmt: skip
        return made, 1000 * len(records)

    monkeypatch.setattr(valstop, "evaluate_model", scripted)
    monkeypatch.setattr(traces, "teacher_traces", traces_of)
    stop = "distill.warmstart.stop={val_accuracy: 0.9, min_difficulty: 2, every: 2, problems: 7}"
    recover = "distill.warmstart.recover={after: 4, add_fraction: 0.4, rounds: 2}"
    overrides = [
        *("distill.rl.steps=0", "distill.warmstart.sft.steps=10", "distill.warmstart.n_prompts=40"),
        *("distill.warmstart.max_difficulty=1", "distill.warmstart.harder_fraction=0.2", stop, recover),
    ]
    cfg = fresh_run(prepared, tmp_path, name, [*overrides, *extra])
    return cfg, sampled


def test_a_warm_start_that_misses_its_target_adds_harder_traces_and_says_so(prepared, tmp_path, monkeypatch):
    """warmstart.recover: while the target is missed, every `after` SFT steps the traces of another share of the
    harder questions join SFT (at most `rounds` times); eval_warmstart.json and the log say what happened."""
    cfg, sampled = scripted_warmstart(prepared, tmp_path, monkeypatch, "recover")
    lines = []
    run_distill(cfg.distill, cfg.run.dir, log=lines.append)
    warm = json.loads((cfg.run.dir / "student/eval_warmstart.json").read_text())
    assert [r["step"] for r in warm["rounds"]] == [0, 4, 8] and len(sampled) == 3
    first = set(sampled[0])
    assert all(not first & set(more) for more in sampled[1:])  # each round adds questions not traced before
    records = read_jsonl(cfg.run.layout.split("train"))[:40]
    assert all(r["ops"] > 1 for r in records if r["question"] in set(sampled[1] + sampled[2]))
    traced = read_jsonl(cfg.run.dir / "student/traces.jsonl")
    assert [t["round"] for t in traced] == sorted(t["round"] for t in traced)
    assert len(traced) == sum(r["traces"] for r in warm["rounds"])
    target = warm["target"]
    assert target["reached"] is False and target["step"] is None and target["best"] == 0.1 and target["rounds"] == 3
    assert "NOT reached in 10 SFT steps" in target["summary"] and "from step 4" in target["summary"]
    assert any("NOT reached" in line for line in lines)
    assert warm["flops"]["teacher_generate"] == 1000 * sum(len(q) for q in sampled)
    from pipeline.summary import summary_sections

    final = json.loads((cfg.run.dir / "student/eval.json").read_text())
    sections = dict(summary_sections({"distill": {"eval_warmstart": warm, "eval": final}}))
    assert sections["warm start"][0]["reached"] is False and "NOT reached" in sections["warm start"][0]["what happened"]
    assert {r["phase"] for r in sections["compute (FLOPs)"]} >= {"teacher_generate", "student_sft", "eval", "total"}
    assert warm["flops"]["total"] == sum(v for k, v in warm["flops"].items() if k != "total")


def test_a_round_of_traces_is_sampled_once_per_teacher_and_read_back_by_a_linked_run(prepared, tmp_path, monkeypatch):
    """A size sweep's points link the base run's teacher: the first to sample a round keeps it beside the teacher
    (`trace-cache/`), and another run of the same teacher, prompts and settings reads it back (same traces, same
    FLOPs charged) instead of sampling; other settings sample their own; without a teacher folder nothing is kept."""
    import rakd.stages.traces as traces
    from rakd.compare.run import link_base
    from rakd.layout import RunLayout

    base = fresh_run(prepared, tmp_path, "base")
    solutions = {r["question"]: r["solution"] for r in read_jsonl(base.run.layout.split("train"))}
    calls, lines = [], []

    def traces_of(model, tokenizer, records, cfg, seed, precision="fp32"):  # the micro teacher verifies nothing
        calls.append(1)
        made = [{"question": r["question"], "answer": r["answer"], "completion": f" {solutions[r['question']]}"}
                for r in records]  # fmt: skip
        return made, 1000 * len(records)

    monkeypatch.setattr(traces, "teacher_traces", traces_of)
    teacher, tokenizer = load_causal_lm(base.run.layout.teacher)
    train = distill_records(base.run.layout, "train")
    cfg = base.distill.warmstart.model_copy(update={"n_prompts": 6, "max_new_tokens": 8})
    first = traces.TraceRounds(tmp_path / "a", cfg, 0, teacher_dir=base.run.layout.teacher)
    entry = first.add(train, teacher, tokenizer, 0, lines.append)
    assert len(calls) == 1 and len(list((base.run.dir / "trace-cache").glob("*.json"))) == 1
    link_base(base.run.layout, tmp_path / "point")  # a sweep point's run folder
    second = traces.TraceRounds(tmp_path / "b", cfg, 0, teacher_dir=RunLayout(tmp_path / "point").teacher)
    again = second.add(train, teacher, tokenizer, 0, lines.append)
    assert len(calls) == 1 and second.traces() == first.traces() and len(first.traces()) == 6 and again == entry
    assert any("sampled once by an earlier run" in line for line in lines)
    hotter = cfg.model_copy(update={"temperature": 0.5})
    traces.TraceRounds(tmp_path / "c", hotter, 0, teacher_dir=base.run.layout.teacher).add(
        train, teacher, tokenizer, 0, lines.append
    )
    assert len(calls) == 2
    traces.TraceRounds(tmp_path / "d", cfg, 0).add(train, teacher, tokenizer, 0, lines.append)
    assert len(calls) == 3 and len(list((base.run.dir / "trace-cache").glob("*.json"))) == 2
    # a round a run sampled before the cache existed: kept when the run resumes, then read back by another
    longer = cfg.model_copy(update={"max_new_tokens": 9})
    traces.TraceRounds(tmp_path / "e", longer, 0).add(train, teacher, tokenizer, 0, lines.append)
    resumed = traces.TraceRounds(tmp_path / "e", longer, 0, teacher_dir=base.run.layout.teacher)
    resumed.keep_cached(train, teacher.device)
    assert len(calls) == 4 and len(list((base.run.dir / "trace-cache").glob("*.json"))) == 3
    other = traces.TraceRounds(tmp_path / "f", longer, 0, teacher_dir=base.run.layout.teacher)
    other.add(train, teacher, tokenizer, 0, lines.append)
    assert len(calls) == 4 and other.traces() == resumed.traces()


def test_a_resumed_warm_start_reuses_the_rounds_it_sampled(prepared, tmp_path, monkeypatch):
    """A crash after a round was sampled: the rerun trains on the recorded rounds from their own first steps and
    samples nothing again, ending where an unbroken run ends."""
    import rakd.train.sft as sft

    cfg, sampled = scripted_warmstart(prepared, tmp_path, monkeypatch, "recover-crash")
    real_step = sft.SFTTrainer.step

    def crashing(self, step):
        if step == 9 and not getattr(crashing, "done", False):
            crashing.done = True
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(sft.SFTTrainer, "step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg.distill, cfg.run.dir, log=lambda *_: None)
    assert len(sampled) == 3  # rounds at steps 0, 4 and 8 were sampled before the crash
    run_distill(cfg.distill, cfg.run.dir, log=lambda *_: None)
    assert len(sampled) == 3
    warm = json.loads((cfg.run.dir / "student/eval_warmstart.json").read_text())
    assert [r["step"] for r in warm["rounds"]] == [0, 4, 8] and warm["sft_steps"] == 10
    rows = read_jsonl(cfg.run.dir / "student/metrics_warmstart.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))  # the crashed attempt's rows are not counted twice

    straight, _ = scripted_warmstart(prepared, tmp_path, monkeypatch, "recover-straight")
    monkeypatch.setattr(sft.SFTTrainer, "step", real_step)
    run_distill(straight.distill, straight.run.dir, log=lambda *_: None)
    a = load_causal_lm_state(cfg.run.dir / "student")
    b = load_causal_lm_state(straight.run.dir / "student")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def load_causal_lm_state(path):
    from rakd.models.load import load_causal_lm

    return load_causal_lm(path)[0].state_dict()


def test_seqkd_fresh_traces_new_questions_each_step_and_pays_for_them(tokenizer, tiny_records, monkeypatch, tmp_path):
    """seqkd_fresh: each step the teacher samples G solutions of questions no earlier step traced; the verifier's
    accepted ones train the student, and every sample is charged to `teacher_generate` at the teacher's size."""
    from rakd.flops import ModelDims, rollout_flops

    traced = []
    real_sample = collect.sample

    def spy(model, tok, questions, **kw):
        batch = real_sample(model, tok, questions, **kw)
        traced.append((questions, rollout_flops(ModelDims.of(model), batch)))
        return batch

    monkeypatch.setattr(collect, "sample", spy)
    monkeypatch.setattr(collect, "reward", lambda text, answer: float(len(text) % 2))
    teacher = build_model(preset_config("test-micro", tokenizer), seed=0).requires_grad_(False)
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:12]]
    cfg = RLConfig(prompts_per_step=3, group_size=2, max_new_tokens=10)
    trainer = RLTrainer(student, teacher, tokenizer, records, [], "seqkd_fresh", LossParams(), cfg, tmp_path, seed=0)
    first, second = trainer.step(0), trainer.step(1)
    (asked_0, flops_0), (asked_1, flops_1) = traced
    assert len(asked_0) == len(asked_1) == 6 and not set(asked_0) & set(asked_1)  # 3 new questions x G each step
    assert first["flops_teacher_generate"] == flops_0 and second["flops_teacher_generate"] == flops_1 > 0
    assert first["flops_student_sample"] == 0 and first["flops_teacher_score"] == 0  # SFT reads no teacher log-probs
    assert 0 < first["rows_in_loss"] < 6  # the accepted samples only


def test_an_rl_flops_budget_stops_the_run_once_spent(tokenizer, tiny_records, tmp_path):
    """`rl.flops_budget` counts RL's training phases (evaluation left out) and stops before the step that would
    start past it; `steps` stays the cap."""
    teacher = build_model(preset_config("test-micro", tokenizer), seed=0).requires_grad_(False)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:8]]
    cfg = RLConfig(
        steps=10, prompts_per_step=2, group_size=4, max_new_tokens=8, min_informative_groups=0, zero_adv="kd"
    )

    def make(rl_cfg, folder):
        student = build_model(preset_config("test-micro", tokenizer), seed=1)
        return RLTrainer(student, teacher, tokenizer, records, [], "rakd", LossParams(), rl_cfg, folder, seed=0)

    one_step = rl.step_flops_of(make(cfg, tmp_path / "probe").step(0), training_only=True)
    trainer = make(cfg.model_copy(update={"flops_budget": 1.5 * one_step}), tmp_path / "run")
    trainer.run()
    rows = trainer.log.rows()
    spent = [rl.step_flops_of(r, training_only=True) for r in rows]
    assert rows[0]["flops_student_update"] > 0 and spent[0] == one_step  # the same first step
    assert 1 < len(rows) < 10 and sum(spent[:-1]) < 1.5 * one_step <= sum(spent)
    assert rl.step_flops_of({"flops_eval": 5, "flops_total": 9, "flops_student_update": 2}, training_only=True) == 2


def test_plateau_is_no_new_best_in_patience_checks():
    from rakd.stages.stop import plateaued

    assert not plateaued([0.1, 0.3], 2) and not plateaued([0.1, 0.3, 0.2], 2)
    assert plateaued([0.1, 0.3, 0.2, 0.3], 2)  # equalling the best is no new best
    assert not plateaued([0.1, 0.3, 0.2, 0.31], 2) and not plateaued([0.5, 0.1, 0.1], None)


def scripted_stop_run(prepared, tmp_path, monkeypatch, name: str, accuracies: list[float], stop: str):
    """A warm start of SFT alone (20 steps at most, RL off) on 16 train solutions, stopped by `stop` (checks on 7
    val problems) whose val checks read `accuracies` in turn; returns the config and the warm start's record."""
    import rakd.stages.stop as valstop

    real, scripted_values = valstop.evaluate_model, iter(accuracies)

    def scripted(model, tokenizer, records, cfg, precision):
        result = real(model, tokenizer, records, cfg, precision)
        if cfg.n_problems == 7 and cfg.k_samples == 0:
            return dataclasses.replace(result, greedy_accuracy=next(scripted_values))
        return result

    monkeypatch.setattr(valstop, "evaluate_model", scripted)
    cfg = fresh_run(prepared, tmp_path, name, ["distill.rl.steps=0", "distill.warmstart.sft.steps=20", stop])
    traces = [
        {"question": r["question"], "answer": r["answer"], "completion": " " + r["solution"]}
        for r in read_jsonl(cfg.run.layout.split("train"))[:16]
    ]
    leave_traces(cfg, traces)
    run_distill(cfg.distill, cfg.run.dir)
    return cfg, json.loads((cfg.run.dir / "student" / "eval_warmstart.json").read_text())


def test_warmstart_stops_at_its_plateau_without_a_target(prepared, tmp_path, monkeypatch):
    """warmstart.stop with patience and no target: SFT ends once `patience` checks in a row bring no new best
    (early stopping, the trace-budget regime's SFT), and the summary says so."""
    stop = "distill.warmstart.stop={val_accuracy: null, patience: 2, every: 2, problems: 7}"
    _, warm = scripted_stop_run(prepared, tmp_path, monkeypatch, "plateau", [0.1, 0.3, 0.2, 0.3, 0.9], stop)
    assert warm["sft_steps"] == 8 and warm["target"]["plateau_step"] == 8 and warm["target"]["best_step"] == 4
    assert warm["target"]["summary"].startswith("plateau at SFT step 8: no new best in 2 checks")


def test_a_plateau_with_decay_steps_anneals_the_rate_to_zero_then_stops(prepared, tmp_path, monkeypatch):
    """stop.decay_steps: at the plateau SFT goes on for that many steps with the rate falling linearly to 0 (checks
    during the decay only record), checks val at its last step and stops there; a resumed hook finds the decay."""
    import rakd.stages.stop as valstop
    from rakd.train.common import lr_factor

    stop = "distill.warmstart.stop={val_accuracy: null, patience: 2, every: 2, problems: 7, decay_steps: 3}"
    values = [0.1, 0.3, 0.2, 0.3, 0.9, 0.95]
    cfg, warm = scripted_stop_run(prepared, tmp_path, monkeypatch, "decay", values, stop)
    # checks at 2, 4, 6, 8 (plateau: 0.2 and 0.3 after the best 0.3), then 10 during the decay and 11, its end
    assert warm["sft_steps"] == 11 and warm["target"]["plateau_step"] == 8 and warm["target"]["decay_steps"] == 3
    assert "then the learning rate fell to 0 over 3 steps: 95.0% at step 11" in warm["target"]["summary"]
    rows = read_jsonl(cfg.run.dir / "student" / "metrics_warmstart.jsonl")
    assert [r["step"] for r in rows if "val_check_accuracy" in r] == [2, 4, 6, 8, 10, 11]
    sft = cfg.distill.warmstart.sft
    plain = [sft.optim.lr * lr_factor(r["step"], sft.steps, sft.optim) for r in rows]  # a row logs the next rate
    scale = [1.0] * 8 + [2 / 3, 1 / 3, 0.0]
    assert [r["lr"] for r in rows] == pytest.approx([p * f for p, f in zip(plain, scale)], rel=1e-6, abs=1e-12)
    hook = valstop.ValCheck.resuming(
        cfg.run.dir / "student" / "metrics_warmstart.jsonl", stop=cfg.distill.warmstart.stop, model=None,
        tokenizer=None, records=[{"question": "q"}], eval_cfg=cfg.distill.eval, name="warmstart",
    )  # fmt: skip
    assert hook.decay_from == 8 and hook.lr_scale(9) == pytest.approx(2 / 3) and hook.lr_scale(7) == 1.0


def test_a_base_start_trains_on_bare_answers_before_any_trace(prepared, tmp_path):
    """warmstart.base: the student's first SFT sees every train question with its final answer only; its steps
    count in the warm start's ledger and log, and no teacher trace is sampled."""
    base = "distill.warmstart.base={steps: 3, batch_size: 4, log_every: 1}"
    sets = ["distill.rl.steps=0", "distill.warmstart.n_prompts=0", "distill.warmstart.stop=null", base]
    cfg = fresh_run(prepared, tmp_path, "base", sets)
    run_distill(cfg.distill, cfg.run.dir)
    student = cfg.run.dir / "student"
    rows = [json.loads(line) for line in (student / "metrics_base.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["flops"] > 0 for r in rows)
    warm = json.loads((student / "eval_warmstart.json").read_text())
    assert warm["flops"]["student_sft"] == sum(r["flops"] for r in rows) and warm["flops"]["teacher_generate"] == 0
    assert not (student / "traces.jsonl").read_text().strip()


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        # budget (4 training units per step, 10 units) spent after step 3, the seconds readout (1.5 s per step) at
        # 6 s reached after step 4, the steps readout at 5: the run stops there, its final evaluation that reading
        (6.0, [(3, "budget"), (4, "seconds")]),
        # seconds reached after step 7, past the others: the final evaluation at 7 stands for them
        (10.0, [(3, "budget"), (5, "steps")]),
        (None, [(3, "budget")]),
    ],
)
def test_a_budgeted_run_reads_out_at_its_budget_its_steps_and_its_seconds(tokenizer, tmp_path, seconds, expected):
    model = build_model(preset_config("test-micro", tokenizer), seed=1)
    cfg = RLConfig(steps=20, flops_budget=10, readout_steps=5, readout_seconds=seconds)
    trainer = RLTrainer(model, model, tokenizer, [], [], "grpo", LossParams(), cfg, tmp_path, seed=0)
    trainer.step = lambda step: {"reward_mean": 0.0, "flops_student_update": 4, "seconds_sample": 1.0,
                                 "seconds_update": 0.5}  # fmt: skip
    trainer.save = lambda step: None
    readouts = []
    trainer.run(on_readout=lambda steps, reason: readouts.append((steps, reason)))
    ran = len(trainer.log.rows())
    assert readouts == expected
    assert ran == max([5, *([math.ceil(seconds / 1.5)] if seconds else [])])


@pytest.mark.parametrize("method", ["rakd", "sft", "gkd"])
def test_a_minibatch_in_pieces_has_the_gradient_of_one_pass(method, tokenizer, tiny_records, monkeypatch, tmp_path):
    """The update's forward and backward go over pieces of rows when their logits would exceed LOGITS_PER_PASS (a
    large vocabulary's memory): the gradient and the metrics are the whole minibatch's. `rakd` with its KD term on
    some rows (two losses, seq_mean), `sft` (token_mean), `gkd` (the teacher's logits, per piece)."""
    import copy

    from rakd.rollout import sample, score_completions

    teacher = build_model(preset_config("test-micro", tokenizer), seed=0).requires_grad_(False)
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    questions = [r["question"] for r in tiny_records[:3] for _ in range(4)]
    batch = sample(student, tokenizer, questions, max_new_tokens=8, seed=3)
    is_kd = torch.arange(12) >= (8 if method == "rakd" else 12)
    advantages = torch.randn(12, generator=torch.Generator().manual_seed(0)) * (~is_kd)
    teacher_lp = score_completions(teacher, batch) if LOSSES[method].teacher == "logprobs" else None
    cfg = RLConfig(prompts_per_step=3, group_size=4, max_new_tokens=8, zero_adv="kd")

    def update(budget: int):
        monkeypatch.setattr(rl, "LOGITS_PER_PASS", budget)
        model = copy.deepcopy(student)
        trainer = RLTrainer(model, teacher, tokenizer, [], [], method, LossParams(), cfg, tmp_path, seed=0)
        metrics = trainer.minibatch(batch, is_kd, advantages, None, teacher_lp)
        return metrics, {name: p.grad.clone() for name, p in model.named_parameters()}

    width = batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]
    assert len(rl.row_pieces(12, width, student.config.vocab_size, budget=5 * width * student.config.vocab_size)) == 3
    whole, whole_grads = update(2**40)
    pieces, piece_grads = update(5 * width * student.config.vocab_size)  # 5, 5 and 2 rows
    assert whole_grads.keys() == piece_grads.keys() and any(g.abs().sum() > 0 for g in whole_grads.values())
    for name, grad in whole_grads.items():
        assert torch.allclose(piece_grads[name], grad, rtol=1e-4, atol=1e-6), name
    assert pieces.keys() == whole.keys() and (method != "rakd" or any(k.startswith("kd/") for k in whole)), whole
    near = {"kd/pg_loss", "kd/kl_student_teacher"}  # a seq_mean loss's own value, token-weighted over the pieces
    for key, value in whole.items():
        assert pieces[key] == pytest.approx(value, rel=0.1 if key in near else 1e-4, abs=1e-6), key
