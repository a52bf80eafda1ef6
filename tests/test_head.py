"""The output head apart from the backbone (`rakd.rollout.head`): chunked log-probs and their gradients equal the
whole-logits computation, on hand-built tensors and on a model's completions, packed and padded."""

import pytest
import torch

from rakd.models.zoo import build_model, preset_config
from rakd.rollout import completion_logits, token_logprobs
from rakd.rollout.head import completion_logprobs, head_logprobs, splits_head
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
def test_head_logprobs_and_gradients_equal_the_whole_logits(bias, chunk_elements):
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(9, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(6, 11, bias=bias).double()
    index = torch.tensor([0, 3, 3, 3, 8, 5, 0, 2])  # states read several times (rows that share a prefix)
    tokens = torch.tensor([1, 4, 4, 9, 10, 0, 7, 2])
    upstream = torch.randn(len(index), generator=generator, dtype=torch.float64)

    picked, entropy = head_logprobs(states, head, index, tokens, temperature=0.7, chunk_elements=chunk_elements)
    (picked.double() * upstream).sum().backward()
    grads = [t.grad.clone() for t in (states, head.weight, *([head.bias] if bias else []))]
    for t in (states, *head.parameters()):
        t.grad = None
    expected, expected_entropy = whole(states, head.weight, head.bias, index, tokens, 0.7)
    (expected * upstream).sum().backward()

    torch.testing.assert_close(picked.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy.double(), expected_entropy.detach(), rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, (states.grad, head.weight.grad, *([head.bias.grad] if bias else []))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)  # the head computes in fp32
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
