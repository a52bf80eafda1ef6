"""Loaders for user task files: GSM8K-format JSONL and generic question/answer JSONL.

Every problem a loader finds is an error naming file, line and field; with
`skip_invalid` the row is skipped and counted instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from rakd.schema import DataError
from rakd.verify import extract_answer, parse_reference, reward

_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass
class LoadResult:
    records: list[dict]
    invalid: int = 0


def _text_field(row: dict, name: str, where: str, *, required: bool = True) -> str | None:
    value = row.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        found = "missing" if name not in row else f"{type(value).__name__} {value!r:.40}"
        raise DataError(f"{where}: field '{name}': expected a non-empty string, found {found}")
    return value.strip()


def parse_gsm8k_row(row: dict, where: str) -> dict:
    """GSM8K: `answer` is the worked solution whose last line is `#### <number>`."""
    question = _text_field(row, "question", where)
    worked = _text_field(row, "answer", where)
    if "####" not in worked:
        raise DataError(f"{where}: field 'answer': no final '#### <answer>' line")
    reasoning, _, final = worked.rpartition("####")
    answer = parse_reference(final.strip())
    if answer is None:
        raise DataError(f"{where}: field 'answer': final answer {final.strip()!r} does not parse")
    reasoning = _CALCULATOR.sub("", reasoning).strip()
    solution = f"{reasoning}\n#### {answer}" if reasoning else f"#### {answer}"
    return {"question": question, "answer": answer, "solution": solution}


def parse_generic_row(row: dict, where: str) -> dict:
    """Generic: `question`, `answer` (a final answer), optional `solution`."""
    question = _text_field(row, "question", where)
    raw_answer = row.get("answer")
    if isinstance(raw_answer, (int, float)) and not isinstance(raw_answer, bool):
        raw_answer = str(raw_answer)
    answer = parse_reference(raw_answer) if isinstance(raw_answer, str) else None
    if answer is None:
        raise DataError(f"{where}: field 'answer': {raw_answer!r:.40} is not a parseable answer")
    record = {"question": question, "answer": answer}
    solution = _text_field(row, "solution", where, required=False)
    if solution is not None:
        if extract_answer(solution) is None:
            solution = f"{solution}\nA: {answer}"
        if reward(solution, answer) != 1.0:
            raise DataError(
                f"{where}: field 'solution': its final answer {extract_answer(solution)!r} "
                f"does not match answer {answer!r}"
            )
        record["solution"] = solution
    return record


_PARSERS = {"gsm8k": parse_gsm8k_row, "jsonl": parse_generic_row}


def load_task_file(path: str | Path, fmt: str, *, skip_invalid: bool = False) -> LoadResult:
    """Read a task JSONL file in format `fmt` (`gsm8k` or `jsonl`)."""
    path = Path(path)
    if fmt not in _PARSERS:
        raise DataError(f"unknown task format {fmt!r}; expected one of {sorted(_PARSERS)}")
    if not path.is_file():
        raise DataError(f"{path}: task file not found")
    result = LoadResult(records=[])
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = _json_object(line, where)
                result.records.append(_PARSERS[fmt](row, where))
            except DataError:
                if not skip_invalid:
                    raise
                result.invalid += 1
    if not result.records:
        detail = f" ({result.invalid} invalid rows skipped)" if result.invalid else ""
        raise DataError(f"{path}: no usable rows{detail}")
    return result


def _json_object(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: malformed JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")
    return row
