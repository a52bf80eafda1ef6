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


def render_chat(
    template: str, messages: list[dict], *, add_generation_prompt: bool, bos: str = "", eos: str = ""
) -> str:
    """A Jinja chat template rendered as transformers and llama-cpp-python render it (trim and lstrip blocks, a
    sandbox, `raise_exception`), without a tokenizer."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
    )


_SLOT = "\x00slot\x00"


def prompt_around(template: str, *, bos: str = "", eos: str = "") -> tuple[str, str]:
    """(before, after): the text a chat template writes around the question of `chat_messages`, generation prompt
    included, so that before + question + after is the prompt a model with that template is asked."""
    text = render_chat(template, chat_messages(_SLOT), add_generation_prompt=True, bos=bos, eos=eos)
    if text.count(_SLOT) != 1:
        raise ValueError("chat template: the question does not appear exactly once in the rendered prompt")
    before, after = text.split(_SLOT)
    return before, after


def turn_end(template: str, *, bos: str = "", eos: str = "") -> str:
    """The text a chat template writes right after an assistant's reply, up to the line's end (ChatML:
    `<|im_end|>`); '' when it writes nothing there."""
    messages = [*chat_messages("1+1=?"), {"role": "assistant", "content": _SLOT}]
    text = render_chat(template, messages, add_generation_prompt=False, bos=bos, eos=eos)
    return text.split(_SLOT, 1)[1].split("\n", 1)[0].strip() if _SLOT in text else ""
