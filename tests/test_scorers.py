"""Teacher scorers: llama.cpp on an F32 GGUF gives the torch teacher's log-probs of the sampled tokens."""

import pytest
import torch

from export.gguf import export_gguf
from rakd.models.zoo import build_model, preset_config
from rakd.rollout import sample, score_completions
from rakd.scorers import LlamaCppScorer, make_scorer
from rakd.stages.config import ScorerConfig

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


@pytest.fixture(scope="module")
def teacher_server(teacher, tokenizer, tmp_path_factory, serve_teacher):
    """`python -m rakd.teacher_server` on the F32 GGUF of the teacher."""
    path = export_gguf(teacher, tokenizer, tmp_path_factory.mktemp("server") / "teacher-f32.gguf", dtype="f32")
    with serve_teacher(path) as url:
        yield url


def test_openai_scorer_against_the_teacher_server_equals_torch(teacher, tokenizer, teacher_server):
    """Rows go to the server as token ids over HTTP, several a request; the log-probs that come back are the torch
    teacher's within 1e-4 per token, 0 past each row's end."""
    batch = sample(teacher, tokenizer, [q for q in QUESTIONS for _ in range(3)], max_new_tokens=12, seed=5)
    expected = score_completions(teacher, batch)
    scorer = make_scorer(ScorerConfig(kind="openai", url=teacher_server + "/v1", batch_rows=4), teacher, "rakd")
    got = scorer(batch, 1.0)
    mask = batch.completion_mask.bool()
    assert mask.sum() > 30 and (got[~mask] == 0).all()
    assert (got[mask] - expected[mask]).abs().max() < 1e-4


def test_openai_scorer_errors_name_what_is_wrong(teacher, tokenizer, teacher_server):
    import json
    import urllib.request

    from rakd.scorers import OpenAIScorer

    batch = sample(teacher, tokenizer, QUESTIONS, max_new_tokens=4, seed=1)
    with pytest.raises(ValueError, match="temperature 0.7"):
        OpenAIScorer(teacher_server)(batch, 0.7)
    with pytest.raises(ValueError, match="teacher_scorer.url"):
        make_scorer(ScorerConfig(kind="openai"), teacher, "rakd")
    with pytest.raises(RuntimeError, match="cannot reach http://127.0.0.1:9/v1/completions"):
        OpenAIScorer("http://127.0.0.1:9", retries=0, timeout_s=5)(batch, 1.0)
    # the server scores and never generates; its 400 comes back with its message
    request = urllib.request.Request(
        teacher_server + "/v1/completions",
        data=json.dumps({"prompt": [1, 2, 3], "max_tokens": 5}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400 and "echo=true and max_tokens 0 or 1" in err.value.read().decode()
    with pytest.raises(RuntimeError, match="answered 400: .*outside the model's vocabulary"):
        from rakd.scorers import _completion_request

        payload = {"prompt": [[1, 10**6]], "echo": True, "max_tokens": 0}
        _completion_request(teacher_server + "/v1/completions", payload, {}, 30, 0)


def test_an_rl_step_on_the_served_teacher_equals_the_torch_teacher_step(
    teacher, tokenizer, tiny_records, teacher_server, monkeypatch, tmp_path
):
    """One `rakd` step whose teacher log-probs come over HTTP ends with the weights of the step on the torch
    teacher (within 1e-5). A reward by answer length makes groups informative on the random student; the clamp is
    wide, or the random pair's log-ratios (beyond ±1 almost everywhere) would be clamped and the teacher unread."""
    from rakd.scorers import OpenAIScorer
    from rakd.train.config import LossParams, RLConfig
    from rakd.train.rl import RLTrainer

    monkeypatch.setattr("rakd.train.collect.reward", lambda text, answer: float(len(text) % 3 == 0))
    records = [{"question": r["question"], "answer": r["answer"]} for r in tiny_records[:4]]
    cfg = RLConfig(prompts_per_step=4, group_size=4, max_new_tokens=8, min_informative_groups=0, optim={"lr": 0.01})
    weights, wide = [], LossParams(teacher_clamp=100.0)
    for scorer in (None, OpenAIScorer(teacher_server, batch_rows=5)):
        student = build_model(preset_config("test-micro", tokenizer), seed=1)
        trainer = RLTrainer(
            student, teacher, tokenizer, records, [], "rakd", wide, cfg, tmp_path, seed=0, teacher_scorer=scorer
        )
        assert trainer.step(0)["rows_in_loss"] > 0
        weights.append({k: v.detach().clone() for k, v in student.state_dict().items()})
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) <= 1e-5


def test_a_gguf_teacher_with_another_vocabulary_is_refused_by_name(teacher, tokenizer, tiny_records, tmp_path):
    from rakd.models.tokenizer import TokenizerConfig, train_tokenizer

    path = export_gguf(teacher, tokenizer, tmp_path / "teacher-f32.gguf", dtype="f32")
    LlamaCppScorer(path, tokenizer=tokenizer).close()  # its own vocabulary: accepted
    other = train_tokenizer(tiny_records[:50], TokenizerConfig(vocab_size=300), tmp_path / "other")
    with pytest.raises(ValueError, match=r"teacher-f32.gguf's vocabulary is not the student's \(id \d+ is"):
        make_scorer(ScorerConfig(kind="llama_cpp", gguf=str(path)), teacher, "rakd", other)
