"""The measures validation adds beside accuracy: token KL divergence and top-1 agreement with the reference, loops,
their gates and table columns, and the chat-template pieces a Modelfile is written from (hand-computed values)."""

import math

import numpy as np
import pytest

from deploy.agreement import (
    log_softmax,
    lumped_kld,
    reference_distributions,
    token_agreement,
    token_kld,
    top_k_distribution,
)
from deploy.config import Gates, ValidateConfig
from deploy.measure import repeats_to_the_end
from deploy.record import ArtefactRecord
from deploy.report import apply_gates, validation_rows
from rakd.prompt import prompt_around, render_chat, turn_end


def test_token_kld_by_hand():
    # P = softmax([0, 0]) = (1/2, 1/2); Q = softmax([ln 3, 0]) = (3/4, 1/4)
    # KL(P‖Q) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    kld = token_kld(np.array([[0.0, 0.0]]), np.array([[math.log(3), 0.0]]))
    assert kld.shape == (1,) and kld[0] == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    # the same distribution (a shift of the logits changes nothing) has zero divergence
    same = token_kld(np.array([[1.0, 2.0, 3.0]]), np.array([[11.0, 12.0, 13.0]]))
    assert same[0] == pytest.approx(0.0, abs=1e-12)
    assert np.exp(log_softmax(np.array([[0.0, math.log(3)]]))).tolist()[0] == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="differ"):
        token_kld(np.zeros((2, 3)), np.zeros((2, 4)))


class FixedLogits:
    """A logits runtime whose next-token logits depend only on the last token: row `table[id]`."""

    def __init__(self, table):
        self.table = np.array(table, dtype=np.float32)
        self.calls = []

    def logits(self, ids):
        self.calls.append(list(ids))
        return self.table[ids]


def test_token_agreement_scores_the_completion_positions_only():
    reference = FixedLogits([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    artefact = FixedLogits([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])  # disagrees after token 2
    # prompt [0, 1] (length 2), completion [0, 2, 1]: positions predicting them read the rows of tokens 1, 0, 2
    sequences = [([0, 1, 0, 2, 1], 2), ([1], 1)]
    result = token_agreement(reference_distributions(reference, sequences, 0), artefact, sequences)
    assert reference.calls == [[0, 1, 0, 2]]  # the last token is predicted, never fed; a prompt alone scores nothing
    assert artefact.calls == [[0, 1, 0, 2]]
    row = token_kld(reference.table[[2]], artefact.table[[2]])[0]
    assert result["kld_tokens"] == 3 and result["top1_agreement"] == pytest.approx(2 / 3)
    assert result["kld_mean"] == pytest.approx(row / 3) and result["kld_max"] == pytest.approx(row)
    assert result["kld_p99"] == pytest.approx(np.percentile([0, 0, row], 99))
    assert token_agreement([], artefact, [])["kld_mean"] is None


def test_the_lumped_kld_by_hand():
    # P = (1/2, 1/4, 1/4), top-1: {0} and a tail of 1/2; Q = (1/4, 1/4, 1/2): tail 3/4
    # lumped: 1/2 ln((1/2)/(1/4)) + 1/2 ln((1/2)/(3/4)) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    # exact: 1/2 ln 2 + 1/4 ln 1 + 1/4 ln(1/2) = 1/4 ln 2 (the lumped value is below it, as it must be)
    p, q = np.log([[0.5, 0.25, 0.25]]), np.log([[0.25, 0.25, 0.5]])
    top1 = top_k_distribution(p, 1)
    assert top1["ids"].tolist() == [[0]] and top1["tail_logp"][0] == pytest.approx(math.log(0.5))
    assert lumped_kld(top1, q)[0] == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    assert token_kld(p, q)[0] == pytest.approx(0.25 * math.log(2), abs=1e-12)
    assert token_kld(p, q)[0] > lumped_kld(top1, q)[0]
    whole = top_k_distribution(p, 0)  # every token: no tail, exact
    assert whole["ids"].tolist() == [[0, 1, 2]] and np.isneginf(whole["tail_logp"][0])
    assert lumped_kld(whole, q)[0] == pytest.approx(token_kld(p, q)[0], abs=1e-12)
    with pytest.raises(ValueError, match="positions"):
        lumped_kld(whole, np.zeros((2, 3)))


def test_the_lumped_kld_is_within_a_bound_of_the_exact_one():
    """Zipf-shaped next-token distributions over SmolLM2's 49,152-token vocabulary, flatter than a trained model's on
    its own greedy reasoning (top-1 probability down to 0.27, up to 13% of the mass beyond the top 256), against
    copies whose logits moved by Gaussian noise (q8_0-like 0.02, 4-bit-like 0.2, a broken export 1.0): validation's
    top-256 KLD never exceeds the exact one, its error stays below the tail's mass times the noise's variance
    (the tail's own divergence is about half that), and the mean KLD is within 5% of the exact mean."""
    rng = np.random.default_rng(0)
    vocab, positions = 49152, 64
    ranks = np.arange(1, vocab + 1)
    reference = np.array([rng.permutation(-1.3 * t * np.log(ranks)) for t in rng.uniform(1.0, 3.0, positions)])
    kept = top_k_distribution(reference, ValidateConfig().kld_top_k)
    tail = np.exp(kept["tail_logp"])
    assert 0.05 < tail.max() < 0.2  # the case is not trivial: a real share of the mass is lumped
    for scale in (0.02, 0.2, 1.0):
        artefact = reference + rng.normal(0, scale, reference.shape)
        exact, lumped = token_kld(reference, artefact), lumped_kld(kept, artefact)
        assert np.all(lumped <= exact + 1e-12) and np.all(exact - lumped <= tail * scale**2)
        assert lumped.mean() > 0.95 * exact.mean()


@pytest.mark.parametrize(
    "ids,loops",
    [
        ([1, 2, 3] * 10, True),  # one 3-gram to the end
        ([9, 8, 7, 6, 5, 4, 3, 2, 1, 0] + [4] * 6, True),  # 6 of 16 tokens repeat one token: over a quarter
        ([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12] + [4, 4, 4], False),  # three copies, but 3 of 15 tokens: under
        (list(range(20)), False),
        ([5, 6, 5, 6], False),  # two copies are not a loop
        ([], False),
    ],
)
def test_a_loop_is_an_ngram_repeated_to_the_end(ids, loops):
    assert repeats_to_the_end(ids) is loops


def record(**over):
    base = dict(
        label="gguf-q4_k_m", accuracy=0.8, n=100, latency_ms_p95=10.0, size_mb=1.0, kld_mean=0.02, flips_to_wrong=6
    )
    return ArtefactRecord(**{"format": "gguf", **base, **over})


def test_kld_and_flip_gates_name_the_numbers():
    gates = Gates(min_accuracy=0, max_accuracy_drop=None, max_kld_mean=0.01, max_flips_to_wrong=0.05)
    assert apply_gates(record(), gates, None) == ["max_kld_mean: 0.0200 > 0.01", "max_flips_to_wrong: 0.060 > 0.05"]
    assert apply_gates(record(kld_mean=0.005, flips_to_wrong=5), gates, None) == []
    # the batched reference has no latency and no KLD: nothing it lacks is gated
    assert apply_gates(record(latency_ms_p95=None, kld_mean=None, flips_to_wrong=None), gates, None) == []
    failed = apply_gates(record(kld_mean=None, agreement_error="the runtime crashed"), gates, None)
    assert failed == ["max_flips_to_wrong: 0.060 > 0.05", "max_kld_mean: not measured (the runtime crashed)"]


def test_the_table_shows_the_new_measures():
    shown = dict(format="gguf", accuracy_flexible=0.8, no_answer_rate=0.0, ttft_ms_p50=1.0, decode_tok_s_p50=100.0)
    shown.update(latency_ms_p50=5.0, peak_rss_mb=50.0, kld_p99=0.3, top1_agreement=0.97, flips_to_right=2)
    shown.update(mean_new_tokens=31.5, truncation_rate=0.02, loop_rate=0.01, passed=True, failed_gates=[])
    [row] = validation_rows([record(**shown)])
    assert row["KLD mean"] == "0.0200" and row["KLD p99"] == "0.300" and row["same top-1"] == "97.0%"
    assert row["flips -/+"] == "-6 / +2" and row["truncated"] == "2.0%" and row["loops"] == "1.0%"


CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_the_prompt_around_a_question_and_the_turn_end_of_a_chat_template():
    before, after = prompt_around(CHATML)
    assert before == "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
    assert after == "<|im_end|>\n<|im_start|>assistant\n"
    rendered = render_chat(CHATML, [{"role": "user", "content": "9-2=?"}], add_generation_prompt=True)
    assert before + "9-2=?" + after == rendered
    assert turn_end(CHATML) == "<|im_end|>"
    assert turn_end("{% for m in messages %}{{ m['content'] }}\n{% endfor %}") == ""
    with pytest.raises(ValueError, match="chat template: no"):
        render_chat("{{ raise_exception('no') }}", [], add_generation_prompt=True)
