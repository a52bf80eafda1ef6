"""The measures validation adds beside accuracy: token KL divergence and top-1 agreement with the reference, loops,
their gates and table columns, and the chat-template pieces a Modelfile is written from (hand-computed values)."""

import math

import numpy as np
import pytest

from deploy.agreement import log_softmax, token_agreement, token_kld
from deploy.config import Gates
from deploy.measure import repeats_to_the_end
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
    result = token_agreement(reference, artefact, [([0, 1, 0, 2, 1], 2), ([1], 1)])
    assert reference.calls == [[0, 1, 0, 2]]  # the last token is predicted, never fed; a prompt alone scores nothing
    row = token_kld(reference.table[[2]], artefact.table[[2]])[0]
    assert result["kld_tokens"] == 3 and result["top1_agreement"] == pytest.approx(2 / 3)
    assert result["kld_mean"] == pytest.approx(row / 3) and result["kld_max"] == pytest.approx(row)
    assert result["kld_p99"] == pytest.approx(np.percentile([0, 0, row], 99))
    assert token_agreement(reference, artefact, [])["kld_mean"] is None


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
    return {**base, **over}


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
