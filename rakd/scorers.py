"""Where the teacher's log-probabilities of the sampled tokens come from (`distill.teacher_scorer`).

TRRD, KDRL and OPD need from the teacher only log π_T of the tokens the student sampled, so the teacher need not
be a torch module in the training process:

- `torch` (the default): the teacher checkpoint in this process, in length-sorted chunks (`score_completions`).
- `llama_cpp`: a GGUF teacher (possibly quantised) scored by llama.cpp on the CPU, one sequence at a time with
  an F32 KV cache. The token ids are passed as they are, so the GGUF must carry the student's vocabulary (one
  family, or a teacher exported by `rakd export`). On an F32 GGUF it matches `torch` within 1e-4 per token
  (tests/test_scorers.py); a quantised teacher's error is measured, not assumed: TRRD's clamp bounds what a small
  teacher error can do to the ratio, KDRL's KL term has no such bound.

gkd and fkl need the teacher's whole distribution at every position, not only the sampled token's log-prob: they
take the `torch` scorer only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import torch
from pydantic import Field

from rakd.models.llamacpp import llama_logits, open_llama_exact
from rakd.rollout import Rollouts, score_completions, token_logprobs
from rakd.schema import StageConfig


class ScorerConfig(StageConfig):
    kind: Literal["torch", "llama_cpp"] = Field("torch", description="where the teacher's log-probs come from")
    gguf: str | None = Field(None, description="llama_cpp: the teacher as a GGUF file (its vocabulary: the student's)")
    threads: int = Field(1, ge=1, description="llama_cpp: CPU threads")
    n_ctx: int = Field(0, ge=0, description="llama_cpp: context length (0: the model's own)")


class TeacherScorer(Protocol):
    def __call__(self, batch: Rollouts, temperature: float) -> torch.Tensor:
        """Per-token log π_T (B, T) of `batch`'s completion tokens on logits / temperature; 0 past each row's end."""


class TorchScorer:
    def __init__(self, teacher):
        self.teacher = teacher

    def __call__(self, batch: Rollouts, temperature: float) -> torch.Tensor:
        return score_completions(self.teacher, batch, temperature=temperature)


class LlamaCppScorer:
    """A GGUF teacher in llama.cpp: each row's prompt + completion evaluated once, log-softmax of its logits."""

    def __init__(self, path: str | Path, threads: int = 1, n_ctx: int = 0):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"distill.teacher_scorer.gguf: {path} is not a file")
        self.llm = open_llama_exact(path, threads=threads, n_ctx=n_ctx)

    def __call__(self, batch: Rollouts, temperature: float) -> torch.Tensor:
        scores = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
        for row in range(batch.completion_ids.shape[0]):
            prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist()
            # the tokens the mask keeps, as the torch forward's mask and position ids keep them
            kept = batch.completion_mask[row].bool()
            completion = batch.completion_ids[row][kept].tolist()
            if not completion:
                continue
            ids = prompt + completion
            logits = torch.from_numpy(llama_logits(self.llm, ids)[len(prompt) - 1 : len(ids) - 1])
            scores[row, kept] = token_logprobs(logits[None], torch.tensor([completion]), temperature)[0]
        return scores

    def close(self) -> None:
        self.llm.close()


def make_scorer(cfg: ScorerConfig, teacher, method: str) -> TeacherScorer:
    """The configured scorer; a method that needs the teacher's full distribution (gkd, fkl) keeps `torch`."""
    if cfg.kind == "torch":
        return TorchScorer(teacher)
    if method in ("gkd", "fkl"):
        raise ValueError(
            f"distill.teacher_scorer.kind={cfg.kind!r}: method {method!r} needs the teacher's whole distribution "
            "at every position; use kind 'torch' (or a method that needs only log-probs: rakd, grpo_kl, opd)"
        )
    if not cfg.gguf:
        raise ValueError("distill.teacher_scorer.gguf: kind 'llama_cpp' needs the teacher's GGUF file")
    return LlamaCppScorer(cfg.gguf, threads=cfg.threads, n_ctx=cfg.n_ctx)
