import json

import pytest

from rakd.data.loaders import load_task_file
from rakd.schema import DataError


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GSM = {
    "question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
    "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72",
}


def test_gsm8k_strips_calculator_and_keeps_reasoning(tmp_path):
    path = write_lines(tmp_path / "gsm.jsonl", [json.dumps(GSM)])
    (record,) = load_task_file(path, "gsm8k").records
    assert record["answer"] == "72"
    assert "<<" not in record["solution"]
    assert record["solution"].startswith("In May she sold 48/2 = 24 clips.")
    assert record["solution"].endswith("#### 72")


def test_gsm8k_thousands_separator(tmp_path):
    row = {"question": "q?", "answer": "big\n#### 1,200"}
    path = write_lines(tmp_path / "gsm.jsonl", [json.dumps(row)])
    assert load_task_file(path, "gsm8k").records[0]["answer"] == "1200"


def test_generic_jsonl_with_and_without_solution(tmp_path):
    rows = [
        {"question": "2+2=?", "answer": "4"},
        {"question": "3+3=?", "answer": 6, "solution": "3+3=6"},
        {"question": "half?", "answer": r"\frac{1}{2}"},
    ]
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(r) for r in rows])
    records = load_task_file(path, "jsonl").records
    assert [r["answer"] for r in records] == ["4", "6", r"\frac{1}{2}"]
    assert records[1]["solution"] == "3+3=6\nA: 6"
    assert "solution" not in records[0]


@pytest.mark.parametrize(
    "line, fmt, message",
    [
        ('{"question": "q", "answer": "#### 3"', "gsm8k", "t.jsonl:2: malformed JSON"),
        ('{"answer": "#### 3"}', "gsm8k", "t.jsonl:2: field 'question'"),
        ('{"question": "q", "answer": "no marker"}', "gsm8k", "t.jsonl:2: field 'answer': no final"),
        ('{"question": "q", "answer": "#### ???"}', "gsm8k", "t.jsonl:2: field 'answer': final answer"),
        ('{"question": "q"}', "jsonl", "t.jsonl:2: field 'answer'"),
        ('{"question": "q", "answer": "4", "solution": "A: 5"}', "jsonl", "t.jsonl:2: field 'solution'"),
        ("[1, 2]", "jsonl", "t.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, line, fmt, message):
    good = json.dumps({"question": "ok?", "answer": "#### 1" if fmt == "gsm8k" else "1"})
    path = write_lines(tmp_path / "t.jsonl", [good, line])
    with pytest.raises(DataError) as err:
        load_task_file(path, fmt)
    assert message in str(err.value)
    result = load_task_file(path, fmt, skip_invalid=True)
    assert len(result.records) == 1 and result.invalid == 1


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: no usable rows"):
        load_task_file(empty, "jsonl")
    with pytest.raises(DataError, match="nope.jsonl: task file not found"):
        load_task_file(tmp_path / "nope.jsonl", "jsonl")
