import json

import pytest
import torch

from rakd.models.zoo import build_model, preset_config
from rakd.train.checkpoint import list_checkpoints
from rakd.train.common import OptimConfig, lr_factor
from rakd.train.sft import SFTConfig, SFTTrainer, pack_pairs


def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, 20, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 20, cfg) == pytest.approx(1.0)
    assert lr_factor(20, 20, cfg) == pytest.approx(0.1)
    assert lr_factor(12, 20, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(15, 20, OptimConfig(warmup_steps=0, schedule="constant")) == 1.0


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
