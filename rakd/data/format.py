"""How a task becomes text for a model trained here: one prompt format everywhere.

Training, rollouts, evaluation and edge validation all format prompts through
these functions, so a model is always asked the way it was taught.
"""

from __future__ import annotations


def prompt_text(question: str) -> str:
    """The prompt a from-scratch model sees: the question and a newline."""
    return f"{question}\n"


def completion_text(solution: str) -> str:
    """The target continuation for a prompt: the worked solution (EOS is added by the tokenizer side)."""
    return solution
