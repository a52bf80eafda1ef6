"""Token agreement of an artefact with the fp32 reference, over the reference's own greedy completions of the
validation problems (the student's real reasoning traces): the artefact and the reference read the same token ids,
and at every position that predicts a completion token (its end token included) we take the KL divergence
KL(reference ‖ artefact) of the two next-token distributions and whether their top-1 tokens agree. This is what
llama.cpp's `llama-perplexity --kl-divergence` reports (KLD mean and percentiles, "same top p"), on reasoning
traces rather than generic text. Both models run in one child process (`agreement_spec`), llama.cpp with the KV
cache a device uses, so its rounding counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rakd.models.logits import open_logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(..., V) logits -> log-probabilities, in float64."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def token_kld(reference_logits: np.ndarray, artefact_logits: np.ndarray) -> np.ndarray:
    """Per position KL(P ‖ Q) = Σ_v P(v) (log P(v) − log Q(v)) of (T, V) logits; (T,) nats, each ≥ 0."""
    if reference_logits.shape != artefact_logits.shape:
        raise ValueError(f"logits of shape {reference_logits.shape} (reference) and {artefact_logits.shape} differ")
    p, q = log_softmax(reference_logits), log_softmax(artefact_logits)
    return np.maximum((np.exp(p) * (p - q)).sum(-1), 0.0)


def sequence_agreement(reference, artefact, sequence: list[int], prompt_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(KLD, same top-1) at the positions of `sequence` that predict its tokens after the prompt."""
    if len(sequence) <= prompt_length:
        return np.zeros(0), np.zeros(0, dtype=bool)
    ids = sequence[:-1]
    ref, art = reference.logits(ids)[prompt_length - 1 :], artefact.logits(ids)[prompt_length - 1 :]
    return token_kld(ref, art), ref.argmax(-1) == art.argmax(-1)


def token_agreement(reference, artefact, sequences: list[tuple[list[int], int]]) -> dict:
    """KLD mean, p95, p99 and max, and top-1 agreement over every completion position of `sequences`
    ((token ids, prompt length) pairs); two logits runtimes (rakd.models.logits)."""
    klds, same = [], []
    for sequence, prompt_length in sequences:
        kld, agree = sequence_agreement(reference, artefact, sequence, prompt_length)
        klds.append(kld)
        same.append(agree)
    kld, agree = np.concatenate(klds or [np.zeros(0)]), np.concatenate(same or [np.zeros(0, dtype=bool)])
    if not len(kld):
        return {
            "kld_mean": None,
            "kld_p95": None,
            "kld_p99": None,
            "kld_max": None,
            "top1_agreement": None,
            "kld_tokens": 0,
        }
    return {
        "kld_mean": float(kld.mean()),
        "kld_p95": float(np.percentile(kld, 95)),
        "kld_p99": float(np.percentile(kld, 99)),
        "kld_max": float(kld.max()),
        "top1_agreement": float(agree.mean()),
        "kld_tokens": int(len(kld)),
    }


def agreement_spec(spec: dict) -> dict:
    """`token_agreement` of the artefact in `spec` against its reference: what the isolated child runs."""
    reference = open_logits(spec["reference"]["format"], Path(spec["reference"]["path"]), spec["threads"], exact=True)
    try:
        artefact = open_logits(spec["artefact"]["format"], Path(spec["artefact"]["path"]), spec["threads"], exact=False)
        try:
            return token_agreement(reference, artefact, [tuple(s) for s in spec["sequences"]])
        finally:
            artefact.close()
    finally:
        reference.close()
