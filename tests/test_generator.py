import pytest
from pydantic import ValidationError

from rakd.data.generator import GeneratorConfig, generate, solve_expression
from rakd.verify import reward


def test_solve_expression_follows_precedence():
    steps, value = solve_expression([23, 14, 2, 5], ["+", "*", "-"])
    assert steps == ["14*2=28", "23+28=51", "51-5=46"]
    assert value == 46


def test_division_must_be_exact():
    assert solve_expression([7, 2], ["/"]) is None
    assert solve_expression([8, 2], ["/"]) == (["8/2=4"], 4)


def test_same_config_same_items():
    cfg = GeneratorConfig(n_items=200, seed=3, templates=["expression", "word"], operators=["+", "-", "*", "/"])
    assert generate(cfg) == generate(cfg)
    assert generate(cfg) != generate(cfg.model_copy(update={"seed": 4}))


def test_every_item_verifies_and_questions_are_distinct():
    cfg = GeneratorConfig(n_items=300, templates=["expression", "word"], operators=["+", "-", "*", "/"], max_ops=4)
    items = generate(cfg)
    assert len(items) == 300
    assert len({item["question"] for item in items}) == 300
    for item in items:
        assert reward(item["solution"], item["answer"]) == 1.0, item
        assert item["solution"].endswith(f"A: {item['answer']}")


def test_difficulty_knobs_are_respected():
    cfg = GeneratorConfig(n_items=100, min_ops=3, max_ops=3, operand_min=10, operand_max=20, operators=["+"])
    for item in generate(cfg):
        numbers = [int(n) for n in item["question"].removesuffix("=?").split("+")]
        assert len(numbers) == 4 and all(10 <= n <= 20 for n in numbers)


def test_small_space_returns_what_exists():
    cfg = GeneratorConfig(n_items=1000, min_ops=1, max_ops=1, operand_min=1, operand_max=2, operators=["+"])
    assert len(generate(cfg)) == 4  # 1+1, 1+2, 2+1, 2+2


def test_word_problems_never_go_negative():
    cfg = GeneratorConfig(n_items=200, templates=["word"], operators=["-"], max_ops=3)
    for item in generate(cfg):
        assert int(item["answer"]) >= 0
        assert item["question"].endswith("have now?")


def test_bad_knobs_are_errors():
    with pytest.raises(ValidationError, match="min_ops"):
        GeneratorConfig(min_ops=3, max_ops=2)
    with pytest.raises(ValidationError, match="operators"):
        GeneratorConfig(operators=["^"])


def test_any_order_keeps_the_value_and_gives_several_chains():
    import random

    rng = random.Random(0)
    for _ in range(300):
        numbers = [rng.randint(1, 9) for _ in range(5)]
        ops = [rng.choice("+-*/") for _ in range(4)]
        fixed = solve_expression(numbers, ops)
        drawn = solve_expression(numbers, ops, random.Random(rng.random()))
        if fixed is not None and drawn is not None:
            assert drawn[1] == fixed[1], (numbers, ops, drawn)
            assert len(drawn[0]) == len(fixed[0])
    # 2*3+4*5 has two valid chains (either product first); a-b-c has one
    chains = {tuple(solve_expression([2, 3, 4, 5], ["*", "+", "*"], random.Random(s))[0]) for s in range(20)}
    assert chains == {("2*3=6", "4*5=20", "6+20=26"), ("4*5=20", "2*3=6", "6+20=26")}
    orders = {tuple(solve_expression([9, 2, 3], ["-", "-"], random.Random(s))[0]) for s in range(20)}
    assert orders == {("9-2=7", "7-3=4")}


def test_any_order_is_seeded_and_leaves_the_default_alone():
    base = dict(n_items=200, min_ops=2, max_ops=4, operators=["+", "-", "*"], seed=5)
    assert generate(GeneratorConfig(**base)) == generate(GeneratorConfig(**base, orders="precedence"))
    shuffled = generate(GeneratorConfig(**base, orders="any"))
    assert shuffled == generate(GeneratorConfig(**base, orders="any"))
    default = {item["question"]: item["solution"] for item in generate(GeneratorConfig(**base))}
    assert any(default.get(item["question"], item["solution"]) != item["solution"] for item in shuffled)
