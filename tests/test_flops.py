"""The compute ledger (rakd.flops): counts against hand-computed ones on the test-micro model."""

import pytest
import torch

from rakd.flops import PHASES, ModelDims, add, format_flops, merge, rollout_flops, sequences_flops, with_total
from rakd.models.zoo import build_model, preset_config
from rakd.rollout import Rollouts
from rakd.train.sft import SFTConfig, SFTTrainer, pack_pairs

# test-micro: hidden 32, 2 layers, 2 query heads of 16 (d_attn 32), 1 key-value head (width 16), MLP 64.
# Per layer: q 32*32 + k 32*16 + v 32*16 + o 32*32 = 3072, MLP 3*32*64 = 6144, two RMSNorms 2*32 = 64: 9280.
# Two layers and the final norm: 2*9280 + 32 = 18592 (the embedding and the output head are left out).
MICRO_PARAMS = 18592


@pytest.fixture
def micro(tokenizer):
    return build_model(preset_config("test-micro", tokenizer), seed=0)


def test_non_embedding_parameters_by_hand(micro, tokenizer):
    dims = ModelDims.of(micro)
    assert dims == ModelDims(params=MICRO_PARAMS, layers=2, attn_width=32)
    every = sum(p.numel() for p in micro.parameters())
    assert every - dims.params == 2 * len(tokenizer) * 32  # the untied embedding and head


def test_forward_flops_by_hand(micro):
    dims = ModelDims.of(micro)
    # 5 tokens: 2*N per token, plus per layer 4*d_attn per attended key, token p attending p keys (1+..+5 = 15)
    assert dims.forward(5) == 2 * MICRO_PARAMS * 5 + 2 * 4 * 32 * 15 == 189_760
    assert sequences_flops(dims, [5, 1]) == 189_760 + 2 * MICRO_PARAMS + 2 * 4 * 32
    assert sequences_flops(dims, [5], training=True) == 3 * 189_760


def test_rollout_flops_leave_padding_out(micro):
    dims = ModelDims.of(micro)
    batch = Rollouts(
        prompt_ids=torch.zeros(2, 4, dtype=torch.long),
        prompt_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]),  # left-padded prompts of 3 and 4 tokens
        completion_ids=torch.zeros(2, 3, dtype=torch.long),
        completion_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),  # completions of 2 and 3 tokens
        texts=["", ""],
    )
    assert rollout_flops(dims, batch) == dims.forward(5) + dims.forward(7)


def test_an_sft_step_logs_three_passes_over_its_batch(micro, tokenizer, tiny_records, tmp_path):
    pairs = [(r["question"], r["solution"]) for r in tiny_records[:8]]
    trainer = SFTTrainer(micro, tokenizer, pairs, SFTConfig(steps=1, batch_size=8), tmp_path, seed=0, name="t")
    trainer.run()
    row = trainer.log.rows()[0]
    batch = pack_pairs(tokenizer, pairs)  # one step of 8 pairs: the whole list
    lengths = (batch.prompt_mask.sum(-1) + batch.completion_mask.sum(-1)).tolist()
    assert row["flops"] == 3 * sum(ModelDims.of(micro).forward(n) for n in lengths) > 0


def test_ledgers_add_by_phase_and_refuse_unknown_phases():
    ledger = add({}, teacher_generate=10, eval=1)
    ledger = merge(ledger, {"eval": 2, "student_sft": 5, "total": 999})
    assert with_total(ledger) == {"teacher_generate": 10, "student_sft": 5, "eval": 3, "total": 18}
    assert list(with_total(ledger)) == [p for p in PHASES if p in ledger] + ["total"]  # phase order
    with pytest.raises(KeyError, match="unknown compute phase"):
        add(ledger, teacher_decode=1)
    assert format_flops(3.2e12) == "3.20 TFLOP" and format_flops(12) == "12 FLOP"
