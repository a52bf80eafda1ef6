"""Token agreement of an artefact with the fp32 reference, over the reference's own greedy completions of the
validation problems (the student's real reasoning traces): the artefact and the reference read the same token ids,
and at every position that predicts a completion token (its end token included) we take the KL divergence
KL(reference ‖ artefact) of the two next-token distributions and whether their top-1 tokens agree. This is what
llama.cpp's `llama-perplexity --kl-divergence` reports (KLD mean and percentiles, "same top p"), on reasoning
traces rather than generic text. llama.cpp runs with the KV cache a device uses, so its rounding counts.

The reference is read once per validation, not once per artefact: `reference_spec` (one child process) keeps, at
every completion position, the reference's `top_k` most likely tokens with their log-probabilities and the log of
the mass left in the tail (as llama-perplexity keeps a KL base file), and each artefact's child
(`agreement_spec`) compares its own full distribution with that. The KL divergence over the top-k tokens plus
the tail lumped into one outcome is a lower bound of the exact one (merging outcomes never raises a divergence)
and equals it once the tail is empty; `top_k` 0 keeps the whole distribution (exact).
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


def top_k_distribution(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """(T, V) logits -> the top-k token ids and log-probabilities per position (most likely first) and the log of the
    probability left outside them (`tail_logp`, -inf when nothing is left); k 0 or >= V keeps every token."""
    logp = log_softmax(logits)
    vocab = logp.shape[-1]
    k = vocab if k <= 0 or k >= vocab else k
    ids = np.argpartition(-logp, k - 1, axis=-1)[:, :k] if k < vocab else np.tile(np.arange(vocab), (len(logp), 1))
    order = np.argsort(-np.take_along_axis(logp, ids, -1), axis=-1, kind="stable")  # most likely first
    ids = np.take_along_axis(ids, order, -1)
    top = np.take_along_axis(logp, ids, -1)
    if k == vocab:
        return {"ids": ids.astype(np.int32), "logp": top, "tail_logp": np.full(len(top), -np.inf)}
    with np.errstate(divide="ignore"):
        tail = np.log(np.clip(1.0 - np.exp(top).sum(-1), 0.0, None))
    return {"ids": ids.astype(np.int32), "logp": top, "tail_logp": tail}


def lumped_kld(reference: dict[str, np.ndarray], artefact_logits: np.ndarray) -> np.ndarray:
    """Per position KL(P ‖ Q) over the reference's top-k tokens and its tail lumped into one outcome:
    Σ_top P(v) (log P(v) − log Q(v)) + P_tail (log P_tail − log Q_tail); ≤ the exact KLD, equal when P_tail is 0."""
    q = log_softmax(artefact_logits)
    if q.shape[0] != reference["ids"].shape[0]:
        raise ValueError(f"{q.shape[0]} artefact positions against {reference['ids'].shape[0]} of the reference")
    q_top = np.take_along_axis(q, reference["ids"].astype(np.int64), -1)
    p_top = reference["logp"]
    kld = (np.exp(p_top) * (p_top - q_top)).sum(-1)
    p_tail = np.exp(reference["tail_logp"])
    with np.errstate(divide="ignore", invalid="ignore"):
        q_tail = np.log(np.clip(1.0 - np.exp(q_top).sum(-1), 1e-300, None))
        tail = np.where(p_tail > 0, p_tail * (reference["tail_logp"] - q_tail), 0.0)
    return np.maximum(kld + tail, 0.0)


def completion_logits(runtime, sequence: list[int], prompt_length: int) -> np.ndarray | None:
    """`runtime`'s logits at the positions of `sequence` that predict its tokens after the prompt (the last token is
    predicted, never fed); None for a prompt alone."""
    if len(sequence) <= prompt_length:
        return None
    return runtime.logits(sequence[:-1])[prompt_length - 1 :]


def reference_distributions(reference, sequences: list[tuple[list[int], int]], top_k: int) -> list[dict | None]:
    """The reference runtime's top-k distribution (`top_k_distribution`) at every completion position of each of
    `sequences` ((token ids, prompt length) pairs); None for a sequence with no completion."""
    found = []
    for sequence, prompt_length in sequences:
        logits = completion_logits(reference, sequence, prompt_length)
        found.append(None if logits is None else top_k_distribution(logits, top_k))
    return found


def token_agreement(distributions: list[dict | None], artefact, sequences: list[tuple[list[int], int]]) -> dict:
    """KLD (`lumped_kld`) and top-1 agreement of the `artefact` runtime against the reference's `distributions` of
    the same `sequences`, summarised over every completion position."""
    klds, same = [], []
    for (sequence, prompt_length), reference in zip(sequences, distributions):
        if reference is None:
            continue
        logits = completion_logits(artefact, sequence, prompt_length)
        klds.append(lumped_kld(reference, logits))
        same.append(logits.argmax(-1) == reference["ids"][:, 0])
    return summarise(klds, same)


FIELDS = ("ids", "logp", "tail_logp")


def reference_spec(spec: dict) -> dict:
    """The reference's distributions over `spec["sequences"]`, saved to `spec["out"]` (.npz): what the isolated
    reference child runs, once per validation."""
    reference = open_logits(spec["reference"]["format"], Path(spec["reference"]["path"]), spec["threads"], exact=True)
    try:
        distributions = reference_distributions(reference, [tuple(s) for s in spec["sequences"]], spec["top_k"])
    finally:
        reference.close()
    np.savez(spec["out"], **{f"{f}_{i}": d[f] for i, d in enumerate(distributions) if d is not None for f in FIELDS})
    return {"positions": sum(len(d["ids"]) for d in distributions if d is not None)}


def agreement_spec(spec: dict) -> dict:
    """KLD and top-1 agreement of the artefact in `spec` against the saved reference distributions
    (`spec["distribution"]`, from `reference_spec`): what each artefact's isolated child runs."""
    sequences = [tuple(s) for s in spec["sequences"]]
    with np.load(spec["distribution"]) as saved:
        distributions = [
            {f: saved[f"{f}_{i}"] for f in FIELDS} if f"ids_{i}" in saved else None for i in range(len(sequences))
        ]
    artefact = open_logits(spec["artefact"]["format"], Path(spec["artefact"]["path"]), spec["threads"], exact=False)
    try:
        return token_agreement(distributions, artefact, sequences)
    finally:
        artefact.close()


def summarise(klds: list[np.ndarray], same: list[np.ndarray]) -> dict:
    """KLD mean, p95, p99 and max, and top-1 agreement over every position of every sequence."""
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
