"""The output head apart from the backbone (`rakd.rollout.head`): chunked log-probs and their gradients equal the
whole-logits computation, on hand-built tensors and on a model's completions, packed and padded."""

import math

import pytest
import torch

from rakd.models.zoo import build_model, preset_config
from rakd.rollout import completion_logits, token_logprobs
from rakd.rollout.head import completion_logprobs, head_kd, head_logprobs, head_topk, splits_head
from rakd.train.batches import batch_tensors, pack_pairs

PAIRS = [
    ("1+1=?", "1+1=2. A: 2"),
    ("12*13-4+7=?", "12*13=156. 156-4=152. 152+7=159. A: 159"),
    ("12*13-4+7=?", "12*13=156. 156-4=152. A: 152"),  # shares its prompt and a head with the row above
    ("9-2=?", "A: 7"),
]


def whole(states, weight, bias, index, tokens, temperature):
    logits = states[index] @ weight.T + (0 if bias is None else bias)
    logprobs = torch.log_softmax(logits.double() / temperature, -1)
    return logprobs.gather(-1, tokens[:, None]).squeeze(-1), -(logprobs.exp() * logprobs).sum(-1)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_elements", [1, 7 * 11, 10**6])  # one state a chunk, ragged chunks, one chunk
@pytest.mark.parametrize("dtype,temperature", [(torch.float64, 0.7), (torch.float32, 1.0)])
def test_head_logprobs_and_gradients_equal_the_whole_logits(bias, chunk_elements, dtype, temperature):
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(9, 6, generator=generator, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(6, 11, bias=bias).to(dtype)
    index = torch.tensor([0, 3, 3, 3, 8, 5, 0, 2])  # states read several times (rows that share a prefix)
    tokens = torch.tensor([1, 4, 4, 9, 10, 0, 7, 2])
    upstream = torch.randn(len(index), generator=generator, dtype=torch.float64)

    picked, entropy = head_logprobs(states, head, index, tokens, temperature, chunk_elements=chunk_elements)
    (picked.double() * upstream).sum().backward()
    grads = [t.grad.clone() for t in (states, head.weight, *([head.bias] if bias else []))]
    for t in (states, *head.parameters()):
        t.grad = None
    expected, expected_entropy = whole(states.double(), head.weight.double(), head.bias, index, tokens, temperature)
    (expected * upstream).sum().backward()

    tolerance = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked.double(), expected, **tolerance)
    torch.testing.assert_close(entropy.double(), expected_entropy.detach(), **tolerance)
    for got, want in zip(grads, (states.grad, head.weight.grad, *([head.bias.grad] if bias else []))):
        torch.testing.assert_close(got, want.to(dtype), rtol=1e-5, atol=1e-6)  # the head computes in fp32
    assert not entropy.requires_grad


def test_head_logprobs_by_hand():
    """One state, a 2-token vocabulary: logits (1, 0) give log π = (1 - log(e + 1), -log(e + 1))."""
    head = torch.nn.Linear(1, 2, bias=False)
    head.weight.data = torch.tensor([[1.0], [0.0]])
    picked, entropy = head_logprobs(torch.ones(1, 1), head, torch.tensor([0, 0]), torch.tensor([0, 1]))
    lse = torch.log(torch.tensor(torch.e + 1.0))
    torch.testing.assert_close(picked, torch.stack([1.0 - lse, -lse]))
    p = torch.e / (torch.e + 1.0)
    torch.testing.assert_close(
        entropy, torch.full((2,), -(p * torch.log(torch.tensor(p)) + (1 - p) * torch.log(torch.tensor(1 - p))))
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(preset_config("test-micro", tokenizer), seed=5)


@pytest.mark.parametrize("packed", [True, False])
def test_completion_logprobs_and_gradients_equal_the_model_logits(model, tokenizer, packed):
    assert splits_head(model)
    batch = pack_pairs(tokenizer, PAIRS)
    upstream = torch.randn(batch.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    mask = batch.completion_mask.float()

    def gradients(logprobs):
        model.zero_grad(set_to_none=True)
        (logprobs * upstream * mask).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    logprobs, entropy = completion_logprobs(model, batch, temperature=0.9, packed=packed)
    got = gradients(logprobs)
    logits = completion_logits(model, batch, packed=False)
    expected = token_logprobs(logits, batch.completion_ids, 0.9) * mask
    want = gradients(expected)
    torch.testing.assert_close(logprobs, expected, rtol=1e-5, atol=1e-5)
    assert (logprobs[mask == 0] == 0).all() and (entropy[mask == 0] == 0).all()
    full = torch.log_softmax(logits.detach().float() / 0.9, -1)
    torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1) * mask, rtol=1e-5, atol=1e-5)
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_batch_tensors_gives_whole_logits_only_when_asked(model, tokenizer):
    batch = pack_pairs(tokenizer, PAIRS)
    lean = batch_tensors(model, batch)
    full = batch_tensors(model, batch, logits=True)
    assert "student_logits" not in lean and full["student_logits"].shape[-1] == model.config.vocab_size
    torch.testing.assert_close(lean["logprobs"], full["logprobs"] * full["mask"], rtol=1e-5, atol=1e-5)
    scaled = torch.log_softmax(full["student_logits"].detach(), -1)
    torch.testing.assert_close(lean["entropy"], -(scaled.exp() * scaled).sum(-1) * full["mask"], rtol=1e-5, atol=1e-5)


def test_head_topk_is_the_teachers_top_tokens_and_the_mass_left():
    generator = torch.Generator().manual_seed(2)
    states = torch.randn(5, 6, generator=generator)
    head = torch.nn.Linear(6, 13, bias=False)
    index = torch.tensor([4, 0, 0, 2])
    ids, logprobs, tail = head_topk(states, head, index, k=3, chunk_elements=13 * 2)
    full = torch.log_softmax(head(states[index]).detach(), -1)
    top = full.topk(3, dim=-1)
    assert torch.equal(ids, top.indices)
    torch.testing.assert_close(logprobs, top.values)
    torch.testing.assert_close(tail.exp(), 1.0 - top.values.exp().sum(-1), rtol=1e-4, atol=1e-6)
    _, _, nothing_left = head_topk(states, head, index, k=13)
    assert (nothing_left < -60).all()  # all the mass in the top tokens: the tail is (almost) empty


@pytest.mark.parametrize("k", [3, 13])
def test_head_kd_and_its_gradients_equal_the_whole_computation(k):
    generator = torch.Generator().manual_seed(3)
    states = torch.randn(6, 6, generator=generator, requires_grad=True)
    head = torch.nn.Linear(6, 13, bias=True)
    index = torch.tensor([0, 1, 1, 5, 3])
    tokens = torch.tensor([2, 7, 7, 12, 0])
    teacher_logits = torch.randn(5, 13, generator=generator)
    teacher_full = torch.log_softmax(teacher_logits, -1)
    teacher = teacher_full.topk(k, dim=-1)

    def tail_of(full, top_ids):  # the mass outside the top tokens, floored at 1e-30 (an empty tail adds nothing)
        return torch.logsumexp(full.scatter(-1, top_ids, -torch.inf), -1).clamp(min=math.log(1e-30))

    tail = tail_of(teacher_full, teacher.indices)
    upstream = torch.randn(2, 5, generator=generator)

    picked, kl = head_kd(states, head, index, tokens, (teacher.indices, teacher.values, tail), chunk_elements=26)
    ((picked * upstream[0]).sum() + (kl * upstream[1]).sum()).backward()
    got = [t.grad.clone() for t in (states, head.weight, head.bias)]
    for t in (states, head.weight, head.bias):
        t.grad = None

    student = torch.log_softmax(head(states[index]), -1)
    expected_picked = student.gather(-1, tokens[:, None]).squeeze(-1)
    student_top = student.gather(-1, teacher.indices)
    student_tail = tail_of(student, teacher.indices)
    p_top, p_tail = teacher.values.exp(), tail.exp()
    expected_kl = (p_top * (teacher.values - student_top)).sum(-1) + p_tail * (tail - student_tail)
    ((expected_picked * upstream[0]).sum() + (expected_kl * upstream[1]).sum()).backward()
    torch.testing.assert_close(picked, expected_picked)
    torch.testing.assert_close(kl, expected_kl, rtol=1e-4, atol=1e-5)
    if k == 13:  # every token kept: the exact forward KL
        exact = (teacher_logits.log_softmax(-1).exp() * (teacher_logits.log_softmax(-1) - student)).sum(-1)
        torch.testing.assert_close(kl, exact, rtol=1e-4, atol=1e-5)
    for a, b in zip(got, (states.grad, head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_heal_loss_by_hand():
    from rakd.losses.distill import heal_loss

    logprobs = torch.tensor([[-1.0, -3.0, -9.0]])
    forward_kl = torch.tensor([[0.2, 0.4, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third position is padding
    loss, metrics = heal_loss(logprobs, forward_kl, mask, ce_weight=0.5)
    assert float(loss) == pytest.approx(0.3 + 0.5 * 2.0) and metrics == pytest.approx({"forward_kl": 0.3, "nll": 2.0})


def test_healing_from_itself_costs_no_kl_and_a_step_moves_the_student(model, tokenizer, tmp_path):
    import copy

    from rakd.stages.config import HealKD
    from rakd.train.batches import kd_tensors
    from rakd.train.config import OptimConfig, SFTConfig
    from rakd.train.sft import SFTTrainer

    batch = pack_pairs(tokenizer, PAIRS)
    same = kd_tensors(model, copy.deepcopy(model), batch, top_k=8)
    assert same["forward_kl"].abs().max() < 1e-5  # a teacher identical to the student: nothing to learn
    teacher = build_model(preset_config("test-micro", tokenizer), seed=9).eval().requires_grad_(False)
    student = copy.deepcopy(model)
    cfg = SFTConfig(steps=1, batch_size=4, optim=OptimConfig(lr=1e-2, warmup_steps=0))
    kd = HealKD(top_k=8, ce_weight=0.5)
    trainer = SFTTrainer(student, tokenizer, PAIRS, cfg, tmp_path, seed=0, name="heal", teacher=teacher, kd=kd)
    row = trainer.step(0)
    assert row["forward_kl"] > 0 and row["nll"] > 0 and row["flops_teacher_score"] > 0
    assert row["loss"] == pytest.approx(row["forward_kl"] + 0.5 * row["nll"], rel=1e-5)
    assert all(not torch.equal(a, b) for a, b in zip(student.parameters(), model.parameters()))
