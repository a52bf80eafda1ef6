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


def test_one_marker_format_and_the_older_plain_key_still_reads(tmp_path):
    """Every key marker is a JSON object with `key` (and what its writer keeps beside it); rakd 0.6.0's plain-text
    work-folder and warm-start markers read as their key, so a run resumed across the upgrade keeps its work."""
    from rakd.keys import WORK_KEY, claim_work, mark_work, marked, read_marker, write_marker

    write_marker(tmp_path / "m.json", "abc123", seconds=4.5, row={"a": 1})
    assert read_marker(tmp_path / "m.json") == {"key": "abc123", "seconds": 4.5, "row": {"a": 1}}
    assert marked(tmp_path / "m.json", "abc123") and not marked(tmp_path / "m.json", "abc124")
    assert read_marker(tmp_path / "none") == {}
    (tmp_path / "broken").write_text('{"key": 5}')  # not a key: nothing is made under it
    (tmp_path / "words").write_text("not a key\n")
    assert read_marker(tmp_path / "broken") == {} == read_marker(tmp_path / "words")
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    (work / WORK_KEY).write_text("0f" * 32)  # as rakd 0.6.0 wrote it
    claim_work(work, "0f" * 32)
    assert (work / "checkpoints").is_dir()  # the same key: the checkpoints stay
    assert read_marker(work / WORK_KEY) == {"key": "0f" * 32}  # and the marker is left as it was
    claim_work(work, "1e" * 32)
    assert not (work / "checkpoints").exists() and marked(work / WORK_KEY, "1e" * 32)  # another key: set aside
    mark_work(work / "warmstart", "2d" * 32)
    assert (work / "warmstart" / WORK_KEY).read_text().startswith("{")  # written as JSON
