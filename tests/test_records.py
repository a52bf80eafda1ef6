"""The typed records results travel in: an evaluation (rakd.evaluate.EvalResult) and the per-problem answers."""

import json

import pytest

from rakd.evaluate import Difficulty, EvalResult, eval_row
from rakd.schema import decode_answers, encode_answers


def an_evaluation(**changes) -> EvalResult:
    values = dict(
        n=4,
        greedy_accuracy=0.5,
        greedy_stderr=0.289,
        no_answer_rate=0.25,
        greedy_accuracy_flexible=0.75,
        mean_response_tokens=12.5,
        k_samples=0,
        eval_flops=1000,
        by_difficulty={"1": Difficulty(2, 1.0), "2": Difficulty(2, 0.0)},
        greedy_correct=(True, False, True, False),
    )
    return EvalResult(**(values | changes))


def test_answers_are_stored_one_character_a_problem_and_read_back():
    assert encode_answers([True, False, False, True]) == "1001"
    assert decode_answers("1001") == (True, False, False, True)
    assert decode_answers("") == ()
    with pytest.raises(ValueError, match=r"\['2', 'x'\]"):
        decode_answers("01x2")


def test_an_evaluation_is_stored_as_the_keys_of_eval_json_and_read_back_whole():
    result = an_evaluation()
    stored = json.loads(json.dumps(result.as_json()))
    assert stored["greedy_correct"] == "1010"
    assert stored["by_difficulty"] == {"1": {"n": 2, "greedy_accuracy": 1.0}, "2": {"n": 2, "greedy_accuracy": 0.0}}
    assert "sampled_accuracy" not in stored  # no sampling: no key, rather than a null
    # a stage's eval.json adds its own keys beside the evaluation's; reading it back takes the evaluation's
    assert EvalResult.from_json(stored | {"method": "grpo", "flops": {"total": 3}}) == result


def test_an_evaluation_renders_one_row_and_one_line():
    sampled = an_evaluation(k_samples=4, sampled_accuracy=0.375, sampled_stderr=0.125, greedy_correct=None)
    row = eval_row("student", sampled.as_json() | {"parameters": 131_000})
    assert row == {
        "model": "student",
        "parameters": 131_000,
        "greedy": "50.0% ± 28.9",
        "sampled": "37.5% ± 12.5",
        "n": 4,
        "no answer": "25.0%",
        "flexible": "75.0%",
    }
    assert an_evaluation().row("x")["sampled"] == "-"
    assert (
        sampled.line("student").split()
        == "student greedy 50.0% ± 28.9 sampled 37.5% ± 12.5 (n=4, no answer 25.0%)".split()
    )
    assert an_evaluation().reading() == {"greedy_accuracy": 0.5, "greedy_stderr": 0.289, "greedy_correct": "1010"}
