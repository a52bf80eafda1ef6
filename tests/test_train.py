import json

import pytest
import torch

from rakd.models.zoo import build_model, preset_config
from rakd.train.checkpoint import list_checkpoints
from rakd.train.common import OptimConfig, fuses_adamw, lr_factor, make_optimizer
from rakd.train.distributed import load_optimizer_state
from rakd.train.sft import SFTConfig, SFTTrainer, pack_pairs


def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, 20, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 20, cfg) == pytest.approx(1.0)
    assert lr_factor(20, 20, cfg) == pytest.approx(0.1)
    assert lr_factor(12, 20, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(15, 20, OptimConfig(warmup_steps=0, schedule="constant")) == 1.0


def test_the_optimiser_is_fused_adamw_and_steps_as_hand_computed():
    layer = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(layer, OptimConfig(lr=0.1, weight_decay=0.5, betas=(0.9, 0.95)))
    assert optimizer.param_groups[0]["fused"] is True
    before = layer.weight.detach().clone()
    grad = torch.tensor([[1.0, -2.0, 0.5], [-0.25, 3.0, -1.0]])
    layer.weight.grad, layer.bias.grad = grad, torch.zeros(2)
    optimizer.step()
    # step 1: decay by lr * wd, then m_hat = g, v_hat = g^2, so the move is lr * g / (|g| + eps)
    expected = before * (1 - 0.1 * 0.5) - 0.1 * grad / (grad.abs() + 1e-8)
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    assert not fuses_adamw([torch.zeros(2, dtype=torch.float64)])
    state = optimizer.state_dict()
    for group in state["param_groups"]:  # a state written by an unfused optimiser resumes fused
        group["fused"] = None
    load_optimizer_state(layer, optimizer, state)
    assert optimizer.param_groups[0]["fused"] is True  # fused kernels take fp32, bf16 and fp16 only


def test_pack_pairs_masks_completion_and_eos(tokenizer):
    batch = pack_pairs(tokenizer, [("1+1=?", "1+1=2. A: 2"), ("12*3=?", "12*3=36. A: 36")])
    assert batch.prompt_mask[0, 0] == 0  # left padded
    for row in range(2):
        n = int(batch.completion_mask[row].sum())
        assert batch.completion_ids[row, n - 1] == tokenizer.eos_token_id


def sft_weights(tokenizer, records, out_dir, steps, crash_at=None):
    model = build_model(preset_config("test-micro", tokenizer), seed=0)
    pairs = [(r["question"], r["solution"]) for r in records[:40]]
    cfg = SFTConfig(steps=steps, batch_size=8, checkpoint_every=2, optim=OptimConfig(lr=1e-2, warmup_steps=2))
    trainer = SFTTrainer(model, tokenizer, pairs, cfg, out_dir, seed=0, name="t")
    trainer.resume()

    def crash(step, _row):
        if step == crash_at:
            raise KeyboardInterrupt

    trainer.run(on_step=crash)
    return model


def test_sft_resume_matches_uninterrupted(tokenizer, tiny_records, tmp_path):
    straight = sft_weights(tokenizer, tiny_records, tmp_path / "a", steps=6)
    with pytest.raises(KeyboardInterrupt):
        sft_weights(tokenizer, tiny_records, tmp_path / "b", steps=6, crash_at=5)
    assert [p.name for p in list_checkpoints(tmp_path / "b/checkpoints")] == ["step-2", "step-4"]
    resumed = sft_weights(tokenizer, tiny_records, tmp_path / "b", steps=6)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_one_sft_step_changes_every_parameter(tokenizer, tiny_records, tmp_path):
    model = build_model(preset_config("test-micro", tokenizer), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = [(r["question"], r["solution"]) for r in tiny_records[:16]]
    SFTTrainer(model, tokenizer, pairs, SFTConfig(steps=1, batch_size=16), tmp_path, seed=0, name="t").run()
    assert [k for k, v in model.state_dict().items() if torch.equal(v, before[k])] == []


def test_precision_auto_takes_bf16_only_where_the_hardware_has_bf16_units():
    from rakd.train.common import autocast, cpu_bf16_units, resolve_precision

    cpu, amx, plain = torch.device("cpu"), "flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", "flags\t\t: fpu sse2 avx2\n"
    assert cpu_bf16_units(amx) and not cpu_bf16_units(plain)
    assert not cpu_bf16_units("flags : avx512f avx512_bf16\n")  # measured slower than fp32 without AMX
    assert resolve_precision("auto", cpu, amx) == "bf16" and resolve_precision("auto", cpu, plain) == "fp32"
    assert resolve_precision("auto", torch.device("cuda"), plain) == "bf16"
    assert resolve_precision("fp32", cpu, amx) == "fp32" and resolve_precision("bf16", cpu, plain) == "bf16"
    layer = torch.nn.Linear(8, 8)
    with autocast(cpu, "bf16"):
        assert layer(torch.ones(2, 8)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert layer(torch.ones(2, 8)).dtype == torch.float32
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        autocast(cpu, "auto")


def test_a_bf16_sft_step_trains_fp32_weights_close_to_the_fp32_step(tokenizer, tiny_records, tmp_path):
    """bf16 autocast: the matmuls run in bf16, the weights and optimiser state stay fp32; one step lands near the
    fp32 step (bf16 keeps ~3 significant digits of each product)."""
    pairs = [(r["question"], r["solution"]) for r in tiny_records[:16]]
    models = {}
    for precision in ("fp32", "bf16"):
        model = build_model(preset_config("test-micro", tokenizer), seed=0)
        cfg = SFTConfig(steps=1, batch_size=16, optim=OptimConfig(lr=1e-3, warmup_steps=0))
        row = SFTTrainer(model, tokenizer, pairs, cfg, tmp_path / precision, seed=0, name="t", precision=precision)
        row.run()
        models[precision] = model
        assert all(p.dtype == torch.float32 for p in model.parameters())
    fp32, bf16 = (dict(models[p].named_parameters()) for p in ("fp32", "bf16"))
    apart = torch.cat([(bf16[k] - fp32[k]).abs().flatten() for k in fp32])
    # lr 1e-3: Adam's first step moves each weight by about lr in its gradient's sign; under bf16 a few tiny
    # gradients change sign (2e-3 apart at most), almost every weight moves alike
    assert 0 < float(apart.max()) <= 2.01e-3 and float(apart.mean()) < 2e-4


def heal_weights(tokenizer, records, out_dir, steps, crash_at=None, calls=None):
    """Healing by distillation (top-8 and half the cross-entropy) from a fixed random teacher: 40 pairs in batches
    of 8, five steps an epoch; `calls` collects each step's teacher passes."""
    import rakd.train.sft as sft
    from rakd.stages.config import HealKD

    model = build_model(preset_config("test-micro", tokenizer), seed=0)
    teacher = build_model(preset_config("test-micro", tokenizer), seed=9).eval().requires_grad_(False)
    pairs = [(r["question"], r["solution"]) for r in records[:40]]
    cfg = SFTConfig(steps=steps, batch_size=8, checkpoint_every=3, optim=OptimConfig(lr=1e-2, warmup_steps=2))
    trainer = SFTTrainer(model, tokenizer, pairs, cfg, out_dir, seed=0, name="t", teacher=teacher,
                         kd=HealKD(top_k=8, ce_weight=0.5))  # fmt: skip
    trainer.resume()
    real = sft.teacher_targets

    def counted(*args, **kwargs):
        if calls is not None:
            calls.append(1)
        return real(*args, **kwargs)

    def crash(step, _row):
        if step == crash_at:
            raise KeyboardInterrupt

    sft.teacher_targets = counted
    try:
        trainer.run(on_step=crash)
    finally:
        sft.teacher_targets = real
    return model, trainer


def test_healing_scores_each_pair_with_the_teacher_once_and_a_resumed_run_reads_what_an_unbroken_one_read(
    tokenizer, tiny_records, tmp_path
):
    """The teacher runs in the first epoch's steps alone: the second epoch reads the distributions kept from the
    first (each pair's equal, to rounding, to the teacher's on that pair alone), and its steps count no teacher
    FLOPs. A run stopped in the second epoch resumes from a checkpoint that holds them and ends with the unbroken
    run's weights exactly."""
    from rakd.rollout.head import teacher_targets

    calls = []
    straight, trainer = heal_weights(tokenizer, tiny_records, tmp_path / "a", steps=10, calls=calls)
    assert len(calls) == 5  # five batches an epoch, two epochs: the teacher for the first five only
    rows = [json.loads(line) for line in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert [r["flops_teacher_score"] > 0 for r in rows] == [True] * 5 + [False] * 5
    assert len(trainer.targets.kept) == 40
    pair = trainer.pairs[7]
    alone = teacher_targets(trainer.teacher, pack_pairs(tokenizer, [pair]), 8)
    for kept, fresh in zip(trainer.targets.kept[trainer.targets.key(pair)], alone):
        torch.testing.assert_close(kept.to(fresh.dtype), fresh, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyboardInterrupt):
        heal_weights(tokenizer, tiny_records, tmp_path / "b", steps=10, crash_at=8)
    assert (tmp_path / "b/checkpoints/step-6/teacher_targets.safetensors").is_file()
    resumed, _ = heal_weights(tokenizer, tiny_records, tmp_path / "b", steps=10)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
