"""CUDA paths (marker `gpu`): run where a GPU is present (bench/gpu_check.sh runs them), skipped elsewhere."""

import pytest
import torch

from rakd.models.zoo import build_model, preset_config
from rakd.rollout import sample, score_completions
from rakd.train.common import autocast

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

QUESTIONS = ["1+1=?", "12*13-4+7=?", "9-2=?"]


@pytest.mark.parametrize("backend", ["generate", "loop", "static", "graph"])
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


def test_graph_replay_draws_what_the_same_step_draws_eagerly(tokenizer, monkeypatch):
    """`graph` captures its decode step once and replays it: the tokens are those of running the step eagerly
    (same uniforms, same kernels), sampled, with and without bf16 autocast."""
    from rakd import rollout

    model = build_model(preset_config("test-micro", tokenizer), seed=3).eval().cuda()
    kw = dict(max_new_tokens=24, temperature=1.0, seed=7, backend="graph")
    for cast in (False, True):
        with autocast(torch.device("cuda")) if cast else torch.autocast("cuda", enabled=False):
            captured = sample(model, tokenizer, QUESTIONS * 8, **kw)
            with monkeypatch.context() as patch:
                patch.setattr(rollout, "_captured", lambda step: (step(), step)[1])  # warm-up step, then eager
                eager = sample(model, tokenizer, QUESTIONS * 8, **kw)
        assert torch.equal(captured.completion_ids, eager.completion_ids)


def test_samplers_agree_greedily_under_bf16_autocast_on_cuda(tokenizer):
    """As an RL step samples on CUDA. `static` is left out: transformers compiles it (slow; it has its own test)."""
    model = build_model(preset_config("test-micro", tokenizer), seed=3).eval().cuda()
    with autocast(torch.device("cuda")):
        texts = [
            sample(model, tokenizer, QUESTIONS * 4, max_new_tokens=12, temperature=0.0, backend=backend).texts
            for backend in ("loop", "graph", "generate")
        ]
    assert texts[0] == texts[1] == texts[2]


def test_sampling_and_scoring_run_without_cudnn_attention_on_cuda(tokenizer):
    """Every forward pass of sampling (each sampler), scoring and the update's logits runs with SDPA's cuDNN
    kernel off: it builds a plan per new shape, which made the loop sampler ten times slower on an H200."""
    from rakd.rollout import completion_logits

    model = build_model(preset_config("test-micro", tokenizer), seed=3).eval().cuda()
    seen = []
    hook = model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    try:
        for backend in ("loop", "graph", "generate"):
            batch = sample(model, tokenizer, QUESTIONS * 2, max_new_tokens=8, backend=backend)
        score_completions(model, batch)
        completion_logits(model, batch)
    finally:
        hook.remove()
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()
