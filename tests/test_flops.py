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
# The teacher of the RL ledger below: test-micro with 3 layers, 3*9280 + 32.
TEACHER_PARAMS = 27872


def forward_by_hand(body: int, vocab: int, layers: int, length: int) -> int:
    """2*(N + H)*L + 4*layers*d_attn*(1 + ... + L) with d_attn 32 and the head H = 32 x vocab."""
    return 2 * (body + 32 * vocab) * length + 4 * layers * 32 * length * (length + 1) // 2


@pytest.fixture
def micro(tokenizer):
    return build_model(preset_config("test-micro", tokenizer), seed=0)


def test_non_embedding_parameters_by_hand(micro, tokenizer):
    dims = ModelDims.of(micro)
    assert dims == ModelDims(params=MICRO_PARAMS, layers=2, attn_width=32, head=32 * len(tokenizer))
    every = sum(p.numel() for p in micro.parameters())
    assert every - dims.params == 2 * len(tokenizer) * 32  # the untied embedding and head
    tied = build_model(preset_config("test-micro", tokenizer, tie_word_embeddings=True), seed=0)
    assert ModelDims.of(tied).head == 32 * len(tokenizer)  # a tied head still multiplies: it is counted


def test_forward_flops_by_hand(micro, tokenizer):
    dims = ModelDims.of(micro)
    head = 32 * len(tokenizer)
    # 5 tokens: 2*(N + H) per token, plus per layer 4*d_attn per attended key, token p attending p keys (1+..+5 = 15)
    five = 2 * (MICRO_PARAMS + head) * 5 + 2 * 4 * 32 * 15
    assert dims.forward(5) == five == 189_760 + 10 * head
    assert sequences_flops(dims, [5, 1]) == five + 2 * (MICRO_PARAMS + head) + 2 * 4 * 32
    assert sequences_flops(dims, [5], training=True) == 3 * five


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


def test_a_ledger_reads_rows_adds_and_counts_training_apart_from_eval():
    from rakd.flops import TRAINING_PHASES, Ledger

    row = {"flops_teacher_score": 3, "flops_student_update": 5, "flops_eval": 7, "flops_total": 99, "loss": 1.0}
    ledger = Ledger.of_row(row) + Ledger.of({"student_sample": 2, "total": 1})
    assert (ledger.training, ledger.eval, ledger.total) == (10, 7, 17)
    assert ledger.row() == {"flops_teacher_score": 3, "flops_student_sample": 2, "flops_student_update": 5,
                            "flops_eval": 7}  # fmt: skip
    assert "eval" not in TRAINING_PHASES and len(TRAINING_PHASES) == len(PHASES) - 1


def lengths(batch):
    return (batch.prompt_mask.sum(-1) + batch.completion_mask.sum(-1)).tolist()


@pytest.mark.parametrize("method", ["grpo", "rakd", "gkd", "opd", "seqkd_fresh"])
def test_one_rl_step_charges_what_it_ran_by_hand(method, tokenizer, tiny_records, monkeypatch, tmp_path):
    """One RL step of 2 PPO epochs on the micro student with a 3-layer teacher, its ledger written out from the
    rows: sampling every drawn row; the teacher's log-prob pass over the loss rows only for rakd and opd, its logits
    in both epochs for gkd (no log-prob pass: gkd reads none), its decoding for seqkd_fresh; the update's two
    training passes plus a π_old pass for the methods that read π_old (two epochs: π_θ moves between them)."""
    import rakd.train.collect as collect
    import rakd.train.rl as rl
    from rakd.train.config import LossParams, RLConfig

    monkeypatch.setattr(collect, "reward", lambda text, answer: float(len(text) % 2))
    vocab = len(tokenizer)
    teacher = build_model(preset_config("test-micro", tokenizer, num_hidden_layers=3), seed=0).requires_grad_(False)
    student = build_model(preset_config("test-micro", tokenizer), seed=1)
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:8]]
    cfg = RLConfig(prompts_per_step=2, group_size=4, max_new_tokens=8, ppo_epochs=2, min_informative_groups=0)
    trainer = rl.RLTrainer(student, teacher, tokenizer, records, [], method, LossParams(), cfg, tmp_path, seed=0)
    seen = []
    collect = trainer.collect
    monkeypatch.setattr(trainer, "collect", lambda step: seen.append(collect(step)) or seen[-1])
    row = trainer.step(0)
    batch, rewards = seen[0].batch, seen[0].rewards
    drawn = lengths(batch)
    if method == "seqkd_fresh":
        loss_rows = [n for n, r in zip(drawn, rewards.tolist()) if r == 1]
    elif method in ("grpo", "rakd"):  # groups with mixed rewards
        mixed = [len(set(rewards[i : i + 4].tolist())) > 1 for i in range(0, len(rewards), 4)]
        loss_rows = [n for i, n in enumerate(drawn) if mixed[i // 4]]
    else:  # opd and gkd read no advantage: every row
        loss_rows = drawn
    assert row["rows_in_loss"] == len(loss_rows) > 0
    student_f = sum(forward_by_hand(MICRO_PARAMS, vocab, 2, n) for n in loss_rows)
    teacher_f = sum(forward_by_hand(TEACHER_PARAMS, vocab, 3, n) for n in loss_rows)
    sample_s = sum(forward_by_hand(MICRO_PARAMS, vocab, 2, n) for n in drawn)
    sample_t = sum(forward_by_hand(TEACHER_PARAMS, vocab, 3, n) for n in drawn)
    expected = {
        "grpo": dict(sample=sample_s, generate=0, score=0, update=2 * 3 * student_f + student_f),
        "rakd": dict(sample=sample_s, generate=0, score=teacher_f, update=2 * 3 * student_f + student_f),
        "opd": dict(sample=sample_s, generate=0, score=teacher_f, update=2 * 3 * student_f + student_f),
        "gkd": dict(sample=sample_s, generate=0, score=2 * teacher_f, update=2 * 3 * student_f),
        "seqkd_fresh": dict(sample=0, generate=sample_t, score=0, update=2 * 3 * student_f),
    }[method]
    got = dict(
        sample=row["flops_student_sample"],
        generate=row.get("flops_teacher_generate", 0),
        score=row["flops_teacher_score"],
        update=row["flops_student_update"],
    )
    assert got == expected
