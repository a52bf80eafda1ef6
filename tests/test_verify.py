import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakd.verify import (
    answers_match,
    extract_answer,
    extract_answer_flexible,
    normalize_number,
    parse_reference,
    reward,
    reward_flexible,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("14*2=28; 23+28=51; 51-5=46. A: 46", "46"),
        ("so we get\n#### 46", "46"),
        (r"the result is \boxed{46}", "46"),
        ("The answer is 46.", "46"),
        ("answer: -3.5", "-3.5"),
        ("A: 1,234", "1234"),
        ("A: 46.0", "46"),
        ("A: +5", "5"),
        ("The answer is $1,250.", "1250"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{2}}{2}"),
        ("A: -0", "0"),
        ("A: 3/4", "3/4"),
    ],
)
def test_extract_answer_formats(text, expected):
    assert extract_answer(text) == expected


def test_last_explicit_marker_wins():
    assert extract_answer("A: 12 ... wait, recheck. A: 13") == "13"
    assert extract_answer(r"\boxed{5} but #### 7") == "7"
    assert extract_answer(r"#### 7 then \boxed{5}") == "5"


@pytest.mark.parametrize(
    "text",
    ["", "no numbers at all", "23+14=37", "DATA: 5", "A: ", r"\boxed{", r"\boxed{}", "answer: ???", "#### x"],
)
def test_no_answer_is_none_never_a_guess(text):
    assert extract_answer(text) is None


def test_normalize_number():
    assert normalize_number("1,234") == "1234"
    assert normalize_number("46.0") == "46"
    assert normalize_number("+5") == "5"
    assert normalize_number("-0.50") == "-0.5"
    assert normalize_number("100") == "100"
    assert normalize_number("abc") is None
    assert normalize_number("1/2") is None


def test_reward_numeric_formatting_is_ignored():
    assert reward("A: 1,234", "1234") == 1.0
    assert reward("The answer is 46.0.", "46") == 1.0
    assert reward("A: +5", "5") == 1.0
    assert reward("A: 45", "46") == 0.0
    assert reward("46", "46") == 0.0  # no marker: no answer


def test_reward_symbolic_through_math_verify():
    assert reward(r"\boxed{\frac{1}{2}}", "0.5") == 1.0
    assert reward("A: 0.5", r"\frac{1}{2}") == 1.0
    assert reward(r"\boxed{\frac{1}{3}}", "0.5") == 0.0


def test_answers_match_and_parse_reference():
    assert answers_match("1234", "1,234")
    assert parse_reference(" 1,234 ") == "1234"
    assert parse_reference(r"\frac{1}{2}") == r"\frac{1}{2}"
    assert parse_reference("") is None
    assert parse_reference("   ") is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_extract_and_reward_never_raise(text):
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)
    assert reward(text, "46") in (0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="A:#0123456789.,-+ \\boxed{}answer is$", max_size=60), st.text(max_size=20))
def test_marker_heavy_text_never_raises(text, reference):
    assert reward(text, reference) in (0.0, 1.0)


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("Tom has 36 + 28 = 54 stickers.", None, "54"),  # a free-form instruct answer: no marker
        ("It costs $1,250.", None, "1250"),
        ("3 apples and 4 pears, so 7 in all. #### 7", "7", "7"),  # a marker wins over the last number
        ("The answer is 12. Check: 12 - 5 = 7", "12", "12"),
        ("no numbers here", None, None),
    ],
)
def test_flexible_extraction_reads_the_last_number_only_when_nothing_is_marked(text, strict, flexible):
    assert extract_answer(text) == strict
    assert extract_answer_flexible(text) == flexible
    assert reward_flexible(text, "54") == (1.0 if flexible == "54" else 0.0)
    assert reward(text, "54") == 0.0  # the strict reward never credits an unmarked number
