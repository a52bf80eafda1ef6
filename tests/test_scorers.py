"""Teacher scorers: llama.cpp on an F32 GGUF gives the torch teacher's log-probs of the sampled tokens."""

import pytest
import torch

from export.gguf import export_gguf
from rakd.models.zoo import build_model, preset_config
from rakd.rollout import sample, score_completions
from rakd.scorers import LlamaCppScorer, ScorerConfig, make_scorer

QUESTIONS = ["1+1=?", "12*13-4+7=?", "9-2=?"]


@pytest.fixture(scope="module")
def teacher(tokenizer):
    return build_model(preset_config("test-micro", tokenizer), seed=4).eval()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_llama_cpp_on_an_f32_gguf_equals_torch_per_token(teacher, tokenizer, tmp_path, temperature):
    path = export_gguf(teacher, tokenizer, tmp_path / "teacher-f32.gguf", dtype="f32")
    batch = sample(teacher, tokenizer, [q for q in QUESTIONS for _ in range(2)], max_new_tokens=12, seed=3)
    expected = score_completions(teacher, batch, temperature=temperature)
    scorer = LlamaCppScorer(path)
    try:
        got = scorer(batch, temperature)
    finally:
        scorer.close()
    mask = batch.completion_mask.bool()
    assert mask.sum() > 20 and (got[~mask] == 0).all()
    assert (got[mask] - expected[mask]).abs().max() < 1e-4


def test_scorer_config_errors_name_the_field(teacher):
    with pytest.raises(ValueError, match="teacher_scorer.gguf"):
        make_scorer(ScorerConfig(kind="llama_cpp"), teacher, "rakd")
    with pytest.raises(ValueError, match="whole distribution"):
        make_scorer(ScorerConfig(kind="llama_cpp", gguf="t.gguf"), teacher, "gkd")
    with pytest.raises(FileNotFoundError, match="teacher_scorer.gguf"):
        make_scorer(ScorerConfig(kind="llama_cpp", gguf="/nonexistent/t.gguf"), teacher, "rakd")
    assert torch.equal(make_scorer(ScorerConfig(), teacher, "gkd").teacher.lm_head.weight, teacher.lm_head.weight)
