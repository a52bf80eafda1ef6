"""Where the teacher's log-probabilities of the sampled tokens come from (`distill.teacher_scorer`).

TRRD, KDRL and OPD need from the teacher only log π_T of the tokens the student sampled, so the teacher need not
be a torch module in the training process:

- `torch` (the default): the teacher checkpoint in this process, as prefix forests (`score_completions`).
- `llama_cpp`: a GGUF teacher (possibly quantised) scored by llama.cpp on the CPU, one sequence at a time with
  an F32 KV cache. The token ids are passed as they are, so the GGUF must carry the student's vocabulary (one
  family, or a teacher exported by `rakd export`). On an F32 GGUF it matches `torch` within 1e-4 per token
  (tests/test_scorers.py); a quantised teacher's error is measured, not assumed: TRRD's clamp bounds what a small
  teacher error can do to the ratio, KDRL's KL term has no such bound.
- `openai`: an OpenAI-compatible completions endpoint that returns prompt log-probs (`echo`), on this machine or
  another: vLLM (`vllm serve TEACHER`) or a GGUF teacher behind `python -m rakd.teacher_server`. Rows go as
  token-id prompts, `batch_rows` a request, so the ids scored are the ids sampled (no detokenise/retokenise round
  trip); the endpoint's vocabulary must be the student's, as for `llama_cpp`. Such endpoints return log-probs of
  raw logits, so the sampling temperature must be 1. llama.cpp's own `llama-server` returns no prompt log-probs
  and llama-cpp-python's server shifts them by one position: neither can serve as this scorer.

gkd and fkl need the teacher's whole distribution at every position, not only the sampled token's log-prob: they
take the `torch` scorer only.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

import torch

from rakd.models.gguf_file import gguf_tokens
from rakd.models.llamacpp import llama_logits, open_llama_exact
from rakd.rollout import Rollouts, TorchScorer, token_logprobs
from rakd.stages.config import ScorerConfig, scorer_problem


class TeacherScorer(Protocol):
    def __call__(self, batch: Rollouts, temperature: float) -> torch.Tensor:
        """Per-token log π_T (B, T) of `batch`'s completion tokens on logits / temperature; 0 past each row's end."""


def scored_rows(batch: Rollouts) -> list[tuple[int, torch.Tensor, list[int], list[int]]]:
    """(row, kept mask, prompt ids, completion ids) of every row with a completion: the unpadded prompt and the
    completion tokens the mask keeps, as the torch forward's mask and position ids keep them. What a scorer
    outside torch evaluates, one sequence per row."""
    rows = []
    for row in range(batch.completion_ids.shape[0]):
        kept = batch.completion_mask[row].bool()
        if kept.any():
            prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist()
            rows.append((row, kept, prompt, batch.completion_ids[row][kept].tolist()))
    return rows


def check_vocabulary(path: Path, tokenizer) -> None:
    """The GGUF teacher scores the student's token ids as they are: its vocabulary must be the student's (it may
    have padding rows after it). A teacher of another family fails here, by name, before any training."""
    theirs = gguf_tokens(path)
    ours = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    differ = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
    if differ is not None or len(theirs) < len(ours):
        where = (
            f"id {differ} is {theirs[differ]!r} there and {ours[differ]!r} in the student's"
            if differ is not None
            else f"it has {len(theirs)} tokens, the student's {len(ours)}"
        )
        raise ValueError(
            f"distill.teacher_scorer.gguf: {path.name}'s vocabulary is not the student's ({where}); TRRD scores the "
            "student's token ids under the teacher, so both need one tokenizer (a teacher of the student's family, "
            "or one exported by `rakd export`)"
        )


class LlamaCppScorer:
    """A GGUF teacher in llama.cpp: each row's prompt + completion evaluated once, log-softmax of its logits."""

    def __init__(self, path: str | Path, threads: int = 1, n_ctx: int = 0, tokenizer=None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"distill.teacher_scorer.gguf: {path} is not a file")
        if tokenizer is not None:
            check_vocabulary(path, tokenizer)
        self.llm = open_llama_exact(path, threads=threads, n_ctx=n_ctx)

    def __call__(self, batch: Rollouts, temperature: float) -> torch.Tensor:
        scores = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
        for row, kept, prompt, completion in scored_rows(batch):
            ids = prompt + completion
            logits = torch.from_numpy(llama_logits(self.llm, ids)[len(prompt) - 1 : len(ids) - 1])
            scores[row, kept] = token_logprobs(logits[None], torch.tensor([completion]), temperature)[0]
        return scores

    def close(self) -> None:
        self.llm.close()


def _completion_request(url: str, payload: dict, headers: dict, timeout: float, retries: int) -> dict:
    """POST `payload` as JSON; the decoded answer. Connection errors and 5xx are retried with a growing pause; a
    4xx is the request's fault and raised with the server's message."""
    data = json.dumps(payload).encode()
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            message = err.read().decode("utf-8", "replace")[:500]
            if err.code < 500 or attempt == retries:
                raise RuntimeError(f"distill.teacher_scorer.url: {url} answered {err.code}: {message}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if attempt == retries:
                reason = getattr(err, "reason", err)
                raise RuntimeError(f"distill.teacher_scorer.url: cannot reach {url}: {reason}") from err
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


class OpenAIScorer:
    """An OpenAI-compatible completions endpoint scoring prompt + completion token ids: `echo` with `logprobs` 1
    and `max_tokens` 1 (vLLM refuses 0; the one generated token's entry, past the ids sent, is not read)."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        batch_rows: int = 16,
        timeout_s: float = 120.0,
        retries: int = 2,
    ):
        base = url.rstrip("/")
        self.endpoint = base + ("/completions" if base.endswith("/v1") else "/v1/completions")
        self.model, self.batch_rows, self.timeout_s, self.retries = model, batch_rows, timeout_s, retries
        self.headers = {"Content-Type": "application/json"}
        if os.environ.get(api_key_env):
            self.headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"

    def __call__(self, batch: Rollouts, temperature: float) -> torch.Tensor:
        if temperature != 1.0:
            raise ValueError(
                f"distill.teacher_scorer.kind='openai': the endpoint's log-probs are on raw logits, but the rollouts "
                f"were sampled at temperature {temperature}; set distill.rl.temperature to 1 or use kind 'torch'"
            )
        scores = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
        rows = [(row, kept, len(prompt), prompt + completion) for row, kept, prompt, completion in scored_rows(batch)]
        for start in range(0, len(rows), self.batch_rows):
            part = rows[start : start + self.batch_rows]
            payload = {"prompt": [ids for *_, ids in part], "echo": True, "logprobs": 1, "max_tokens": 1}
            payload.update({"temperature": 0.0, **({"model": self.model} if self.model else {})})
            answer = _completion_request(self.endpoint, payload, self.headers, self.timeout_s, self.retries)
            choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
            if len(choices) != len(part):
                raise RuntimeError(f"{self.endpoint}: {len(choices)} choices for {len(part)} prompts")
            for (row, kept, prompt_length, ids), choice in zip(part, choices):
                values = ((choice.get("logprobs") or {}).get("token_logprobs") or [])[prompt_length : len(ids)]
                if len(values) != len(ids) - prompt_length or any(v is None for v in values):
                    raise RuntimeError(
                        f"{self.endpoint}: no prompt log-probs for row {row} (does the server support echo with "
                        "logprobs? llama.cpp's llama-server does not)"
                    )
                scores[row, kept] = torch.tensor(values, dtype=torch.float32)
        return scores


def make_scorer(cfg: ScorerConfig, teacher, method: str, tokenizer=None) -> TeacherScorer:
    """The configured scorer; a method that needs the teacher's full distribution (gkd, fkl) keeps `torch`. With
    the student's `tokenizer`, a GGUF teacher's vocabulary is checked against it."""
    if cfg.kind == "torch":
        return TorchScorer(teacher)
    if problem := scorer_problem(cfg, method):
        raise ValueError(problem)
    if cfg.kind == "openai":
        return OpenAIScorer(cfg.url, cfg.model, cfg.api_key_env, cfg.batch_rows, cfg.timeout_s, cfg.retries)
    return LlamaCppScorer(cfg.gguf, threads=cfg.threads, n_ctx=cfg.n_ctx, tokenizer=tokenizer)
