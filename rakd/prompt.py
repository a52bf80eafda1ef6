"""How a task becomes text for a model trained here: one prompt format everywhere.

Training, rollouts, evaluation and edge validation all format prompts through
these functions, so a model is always asked the way it was taught.
"""

from __future__ import annotations


def prompt_text(question: str) -> str:
    """The prompt a from-scratch model sees: the question and a newline."""
    return f"{question}\n"


def chat_messages(question: str) -> list[dict]:
    """The conversation a model with a chat template is asked: the question as one user turn."""
    return [{"role": "user", "content": question}]


def model_prompt(tokenizer, question: str) -> tuple[str, bool]:
    """(text, add_special_tokens) to tokenize for `question`: the tokenizer's chat template with the generation
    prompt when it has one (the template writes its own special tokens), else `prompt_text`."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(chat_messages(question), add_generation_prompt=True, tokenize=False)
        return text, False
    return prompt_text(question), True


def completion_text(solution: str) -> str:
    """The target continuation for a prompt: the worked solution (EOS is added by the tokenizer side)."""
    return solution
