"""CUDA paths (marker `gpu`): run where a GPU is present (bench/gpu_check.sh runs them), skipped elsewhere."""

import pytest
import torch

from rakd.models.zoo import build_model, preset_config
from rakd.rollout import sample, score_completions
from rakd.train.common import autocast

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

QUESTIONS = ["1+1=?", "12*13-4+7=?", "9-2=?"]


@pytest.mark.parametrize("backend", ["generate", "loop", "static"])
def test_sampling_on_cuda_is_seeded_and_greedy_matches_cpu(tokenizer, backend):
    model = build_model(preset_config("test-micro", tokenizer), seed=3).eval()
    cpu = sample(model, tokenizer, QUESTIONS, max_new_tokens=10, temperature=0.0, backend=backend)
    model.cuda()
    greedy = sample(model, tokenizer, QUESTIONS, max_new_tokens=10, temperature=0.0, backend=backend)
    assert greedy.texts == cpu.texts
    kw = dict(max_new_tokens=10, temperature=1.0, backend=backend)
    a, b = (sample(model, tokenizer, QUESTIONS * 4, seed=5, **kw) for _ in range(2))
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_autocast_is_bf16_on_cuda(tokenizer):
    model = build_model(preset_config("test-micro", tokenizer), seed=0).cuda()
    with autocast(torch.device("cuda")):
        logits = model(torch.tensor([[1, 2, 3]], device="cuda")).logits
    assert logits.dtype == torch.bfloat16


def test_prefix_forest_scoring_on_cuda_matches_cpu(tokenizer):
    """Scoring packs rows as prefix forests with a 4-D bool mask: CUDA's SDPA kernels give the CPU's log-probs."""
    model = build_model(preset_config("test-micro", tokenizer), seed=3).eval()
    batch = sample(model, tokenizer, [q for q in QUESTIONS for _ in range(4)], max_new_tokens=10, seed=1, group_size=4)
    batch.completion_ids[1] = batch.completion_ids[0]
    cpu = score_completions(model, batch)
    torch.testing.assert_close(score_completions(model.cuda(), batch), cpu, atol=1e-4, rtol=0)
