"""Built-in generator of verifiable multi-step arithmetic problems.

Each item carries a chain-of-thought solution that ends in `A: <answer>` and its number of operations (`ops`,
the difficulty that evaluation reports accuracy by), e.g.
question `23+14*2-5=?`, solution `14*2=28; 23+28=51; 51-5=46. A: 46`.
Expressions follow operator precedence; word problems apply their steps in
the order the story tells them. Only exact integer divisions are generated.

With `orders: any`, an expression's solution takes its steps in one of the
orders that give the same value, drawn per problem (`2*3+4*5`: `2*3=6; 4*5=20;
6+20=26` or `4*5=20; 2*3=6; 6+20=26`), so a task has several valid chains and a
teacher trained on them uses more than one: a student and teacher then disagree
on the student's own samples. The verifier reads only the answer.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from rakd.schema import StageConfig

Operator = Literal["+", "-", "*", "/"]
Template = Literal["expression", "word"]

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
_ITEMS = ["apples", "stamps", "marbles", "books", "coins", "shells", "cards", "pens"]


class GeneratorConfig(StageConfig):
    """Difficulty knobs of the built-in task generator."""

    n_items: int = Field(6000, ge=1, description="distinct problems to generate")
    min_ops: int = Field(1, ge=1, description="fewest operations in a problem")
    max_ops: int = Field(3, ge=1, description="most operations in a problem (the hardest difficulty)")
    operand_min: int = Field(1, ge=0, description="smallest operand")
    operand_max: int = Field(9, ge=1, description="largest operand")
    operators: list[Operator] = Field(
        default_factory=lambda: ["+", "-", "*"], min_length=1, description="operators drawn from (only exact divisions)"
    )
    templates: list[Template] = Field(
        default_factory=lambda: ["expression"],
        min_length=1,
        description="expression: `23+14*2-5=?` (precedence); word: a story whose steps apply in order",
    )
    orders: Literal["precedence", "any"] = Field(
        "precedence",
        description="expressions' solutions: precedence (left to right within a precedence level), or any (each "
        "problem's steps in one order drawn from those that give the same value: several valid chains per task)",
    )
    seed: int = Field(0, description="the same seed gives the same problems")

    @model_validator(mode="after")
    def _check_ranges(self) -> GeneratorConfig:
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops ({self.min_ops}) must be <= max_ops ({self.max_ops})")
        if self.operand_min > self.operand_max:
            raise ValueError(f"operand_min ({self.operand_min}) must be <= operand_max ({self.operand_max})")
        return self


def _apply(left: int, op: str, right: int) -> int | None:
    """left op right, or None when a division is not exact."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if right == 0 or left % right:
        return None
    return left // right


def _reducible(ops: list[str], i: int, level: str) -> bool:
    """Whether op i may be applied before the ops left of it at its precedence level: when the op on its left is
    of a lower level, or is + (before + or -) or * (before * or /), so that regrouping keeps the value."""
    if i == 0 or ops[i - 1] not in level:
        return True
    return ops[i - 1] in "+*"


def solve_expression(
    numbers: list[int], ops: list[str], rng: random.Random | None = None
) -> tuple[list[str], int] | None:
    """Steps and value of an expression under precedence (* and / first, then + and -): left to right within a
    level, or with `rng` in a random order among those that keep the value (`_reducible`)."""
    numbers, ops, steps = list(numbers), list(ops), []
    for level in ("*/", "+-"):
        while any(op in level for op in ops):
            candidates = [i for i, op in enumerate(ops) if op in level and _reducible(ops, i, level)]
            i = rng.choice(candidates) if rng is not None else candidates[0]
            value = _apply(numbers[i], ops[i], numbers[i + 1])
            if value is None:
                return None
            steps.append(f"{numbers[i]}{ops[i]}{numbers[i + 1]}={value}")
            numbers[i : i + 2] = [value]
            del ops[i]
    return steps, numbers[0]


def _expression_item(rng: random.Random, cfg: GeneratorConfig, n_ops: int) -> dict | None:
    numbers = [rng.randint(cfg.operand_min, cfg.operand_max) for _ in range(n_ops + 1)]
    ops = [rng.choice(cfg.operators) for _ in range(n_ops)]
    solved = solve_expression(numbers, ops, rng if cfg.orders == "any" else None)
    if solved is None:
        return None
    steps, answer = solved
    expression = str(numbers[0]) + "".join(f"{op}{n}" for op, n in zip(ops, numbers[1:]))
    return {
        "question": f"{expression}=?",
        "solution": f"{'; '.join(steps)}. A: {answer}",
        "answer": str(answer),
        "ops": n_ops,
    }


_WORD_STEPS = {
    "+": "Then {p} gets {b} more.",
    "-": "Then {p} gives away {b}.",
    "*": "Then {p} ends up with {b} times as many.",
    "/": "Then {p} shares them equally among {b} friends and keeps one share.",
}


def _word_item(rng: random.Random, cfg: GeneratorConfig, n_ops: int) -> dict | None:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    current = rng.randint(max(cfg.operand_min, 1), cfg.operand_max)
    sentences, steps = [f"{name} has {current} {item}."], []
    for _ in range(n_ops):
        op, operand = rng.choice(cfg.operators), rng.randint(cfg.operand_min, cfg.operand_max)
        value = _apply(current, op, operand)
        if value is None or value < 0:  # stories never owe negative apples
            return None
        sentences.append(_WORD_STEPS[op].format(p=name, b=operand))
        steps.append(f"{current}{op}{operand}={value}")
        current = value
    sentences.append(f"How many {item} does {name} have now?")
    return {
        "question": " ".join(sentences),
        "solution": f"{'; '.join(steps)}. A: {current}",
        "answer": str(current),
        "ops": n_ops,
    }


_BUILDERS = {"expression": _expression_item, "word": _word_item}


def generate(cfg: GeneratorConfig) -> list[dict]:
    """Up to `cfg.n_items` distinct problems, deterministic for a given config.

    Returns fewer items when the configured space holds fewer distinct
    questions (the caller reports the shortfall).
    """
    rng = random.Random(cfg.seed)
    items: dict[str, dict] = {}
    attempts, max_attempts = 0, 50 * cfg.n_items + 1000
    while len(items) < cfg.n_items and attempts < max_attempts:
        attempts += 1
        template = rng.choice(cfg.templates)
        item = _BUILDERS[template](rng, cfg, rng.randint(cfg.min_ops, cfg.max_ops))
        if item is not None and item["question"] not in items:
            items[item["question"]] = item
    return list(items.values())
