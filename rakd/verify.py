"""Answer extraction and the verifiable reward.

`extract_answer` finds the final answer a completion commits to; `reward` scores
a completion against a reference answer. Both never raise on arbitrary text:
they are called on whatever a half-trained model emits.

Other tools import `from rakd.verify import extract_answer, reward`; keep that
path stable.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation

__all__ = [
    "extract_answer",
    "extract_answer_flexible",
    "reward",
    "reward_flexible",
    "normalize_number",
    "parse_reference",
    "answers_match",
]

# A number as people write it: sign, thousands separators, decimals, a leading
# dollar sign. Fractions like 3/4 are kept whole and compared symbolically.
_NUMBER = r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\$?\.\d+"

# Explicit answer markers, each capturing the answer that follows it. When
# several markers occur, the one that starts last wins.
_MARKERS = [
    re.compile(rf"####\s*({_NUMBER})"),
    re.compile(rf"(?<![A-Za-z])A:\s*({_NUMBER})"),
    re.compile(rf"answer\s*(?:is|:|=)\s*:?\s*({_NUMBER})", re.IGNORECASE),
]
_BOXED = re.compile(r"\\boxed\s*\{")


def normalize_number(text: str) -> str | None:
    """Canonical form of a plain number: `1,234` -> `1234`, `46.0` -> `46`, `+5` -> `5`.

    Returns None when `text` is not a plain decimal number.
    """
    cleaned = text.strip().replace(",", "").replace("$", "")
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", cleaned):
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    text_value = format(value.normalize(), "f")
    return text_value


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(start, contents) of every `\\boxed{...}`, with nested braces balanced."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    found.append((match.start(), text[start:pos].strip()))
                    break
    return found


def extract_answer(text: str) -> str | None:
    """The final answer in `text`, or None when it commits to none.

    Plain numbers come back normalised (see `normalize_number`); boxed symbolic
    answers come back as written inside the box. Never guesses from a bare
    number without a marker.
    """
    if not isinstance(text, str) or not text:
        return None
    candidates: list[tuple[int, str]] = []
    for pattern in _MARKERS:
        candidates.extend((m.start(), m.group(1)) for m in pattern.finditer(text))
    candidates.extend((pos, inner) for pos, inner in _boxed_contents(text) if inner)
    if not candidates:
        return None
    _, raw = max(candidates, key=lambda item: item[0])
    return normalize_number(raw) or raw.replace("$", "").strip() or None


_LAST_NUMBER = re.compile(rf"(?:{_NUMBER})")


def extract_answer_flexible(text: str) -> str | None:
    """The strict answer when the text marks one, else the last number in it (lm-eval's GSM8K
    "flexible-extract"): how free-form answers of instruct models ("... 36 + 28 = 54 stickers") are read."""
    strict = extract_answer(text)
    if strict is not None or not isinstance(text, str):
        return strict
    numbers = _LAST_NUMBER.findall(text)
    if not numbers:
        return None
    return normalize_number(numbers[-1].rstrip(".,")) or numbers[-1]


def _math_verify_equal(reference: str, candidate: str) -> bool:
    """Symbolic equality through math-verify; False on anything it cannot parse."""
    try:
        from math_verify import parse, verify

        # math-verify's timeouts use SIGALRM, which only works in the main thread.
        limit = 5 if threading.current_thread() is threading.main_thread() else None
        gold = parse(f"${reference}$", parsing_timeout=limit)
        pred = parse(f"${candidate}$", parsing_timeout=limit)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=limit))
    except Exception:  # noqa: BLE001 - a verifier must never crash a training run
        return False


def answers_match(candidate: str, reference: str) -> bool:
    """Whether two extracted answers denote the same value."""
    left, right = normalize_number(candidate), normalize_number(reference)
    if left is not None and right is not None:
        return left == right
    if candidate.strip() == reference.strip():
        return True
    return _math_verify_equal(reference, candidate)


def parse_reference(text: str) -> str | None:
    """A reference answer in canonical form, or None when it cannot be scored.

    Numbers are normalised; other text is accepted when math-verify can parse it
    (e.g. `\\frac{1}{2}`), so that it can later be compared symbolically.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    number = normalize_number(text)
    if number is not None:
        return number
    try:
        from math_verify import parse

        limit = 5 if threading.current_thread() is threading.main_thread() else None
        parsed = parse(f"${text.strip()}$", parsing_timeout=limit)
        # math-verify always echoes the raw string; only a real expression counts.
        return text.strip() if any(not isinstance(item, str) for item in parsed) else None
    except Exception:  # noqa: BLE001
        return None


def reward(completion: str, reference: str) -> float:
    """1.0 when the completion's final answer equals the reference, else 0.0."""
    answer = extract_answer(completion)
    if answer is None or not isinstance(reference, str):
        return 0.0
    return 1.0 if answers_match(answer, reference) else 0.0


def reward_flexible(completion: str, reference: str) -> float:
    """`reward` with `extract_answer_flexible`: also credits an unmarked final number. Reported beside the strict
    reward, never used for training or gates."""
    answer = extract_answer_flexible(completion)
    if answer is None or not isinstance(reference, str):
        return 0.0
    return 1.0 if answers_match(answer, reference) else 0.0
