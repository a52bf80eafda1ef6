"""Parity of every exported artefact with the PyTorch model it came from.

For N prompts the reference is PyTorch fp32: the greedy continuation and the
logits at every position of prompt + continuation. Each artefact is run by
its own runtime (llama.cpp for GGUF, ONNX Runtime for ONNX) on the same token
ids, and we record: tokenisation equal, last-prompt-token logits
max-abs-diff, and top-1 agreement along the reference continuation (1.0 means
its greedy continuation is the same tokens).

Each artefact is checked in its own process (`check_isolated`): a runtime that
crashes natively fails that artefact, with the signal and its last output, and
the others are still checked. Torch is imported only where the reference is
built, so a GGUF check process never loads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from rakd.data.generator import GeneratorConfig, generate
from rakd.io import read_jsonl
from rakd.isolated import ChildCrashed, ChildFailed, run_isolated
from rakd.layout import RunLayout
from rakd.models.logits import open_logits
from rakd.prompt import model_prompt
from rakd.quant import HIGH, by_label
from rakd.schema import StageError

# Each type's limits are rakd.quant's: (max |Δlogit| at the last prompt token or None, minimum top-1 agreement),
# and for F16 a bound measured on the model itself: max(1e-2, 3 x the change that rounding the reference model's
# matrices to F16 makes to its own logits in PyTorch). llama.cpp's F16 error tracked that change within 1.2x on
# SmolLM2-135M-Instruct (0.042 against 0.039 for 30 layers; pruned to 15 layers 0.046 against 0.039, to 10 evenly
# spaced layers 0.077 against 0.063) but reached 2.04x on the same model tuned 40 steps in fp32 (0.0552 against
# 0.0270): llama.cpp also rounds the activations to F16 in its F16 dot products, which rounding the weights alone
# does not show; simulating that too (`f16_rounding(activations=True)`) moved with the thread count (0.79-1.57x of
# llama.cpp's error on three models, bench/results/f16_parity-2026-12-08), the matrices alone held 1.61-1.82x there.
# A bound from depth and the logits' size alone (relative x √layers x max|logit|) failed that correct
# 10-layer export, whose F32 twin matched within 6e-5. A wrong export (a missed bias, rotary order, tied head) moves
# logits by whole units.


def parity_questions(data: Path | None, layout: RunLayout, n: int) -> list[str]:
    """Validation questions of the run (or `--data`), else generated arithmetic prompts."""
    source = data or layout.split("val")
    if source.is_file():
        return [row["question"] for row in read_jsonl(source)][:n]
    return [item["question"] for item in generate(GeneratorConfig(n_items=n, seed=99))]


class ParityError(StageError):
    """An artefact outside its tolerance, naming it and the numbers."""


@dataclass
class Reference:
    text: str
    prompt_ids: list[int]
    continuation: list[int]
    logits: np.ndarray  # (len(prompt)+len(continuation)-1, V): predictions for every next token
    special: bool = True  # the tokenizer adds its special tokens (False: a chat template wrote them in `text`)
    rounding: float = 0.0  # max |Δlogit| at the last prompt token when the model's matrices are rounded to F16

    @property
    def sequence(self) -> list[int]:
        return self.prompt_ids + self.continuation[:-1]

    def prompt_end_diff(self, logits: np.ndarray) -> float:
        """max |Δlogit| at the last prompt token between `logits` (a runtime's, over `sequence`) and the reference's:
        the one logit measure of the parity check."""
        last = len(self.prompt_ids) - 1
        return float(np.abs(logits[last] - self.logits[last]).max())


def tolerance_for(label: str, rounding: float = 0.0) -> tuple[float | None, float]:
    """The table's tolerance of `label` for a model whose logits move by `rounding` when its matrices are rounded to
    F16 (`f16_rounding`); an artefact type outside the table gets the 8-bit bound."""
    kind = by_label(label)
    if kind is None:
        return HIGH
    logit_tol, min_agree = kind.tolerance
    if kind.rounding and logit_tol is not None:
        logit_tol = max(logit_tol, kind.rounding * rounding)
    return logit_tol, min_agree


def f16_rounding(model, refs: list[Reference], activations: bool = False) -> list[float]:
    """Per reference, max |Δlogit| at its last prompt token between its logits and those of a copy of `model` whose
    2-D weights (the matrices and embeddings an F16 file stores as F16) are rounded to F16, run in float32; with
    `activations`, every linear layer's input is rounded to F16 too, as llama.cpp's F16 dot products do (ggml
    converts the activations to the weights' F16 before the dot product)."""
    import copy

    import torch

    rounded = copy.deepcopy(model)
    hooks = []
    if activations:
        to_f16 = lambda _module, args: (args[0].to(torch.float16).to(args[0].dtype), *args[1:])  # noqa: E731
        hooks = [m.register_forward_pre_hook(to_f16) for m in rounded.modules() if isinstance(m, torch.nn.Linear)]
    changes = []
    try:
        with torch.no_grad():
            for param in rounded.parameters():
                if param.dim() == 2:
                    param.copy_(param.to(torch.float16).to(param.dtype))
            for ref in refs:
                logits = rounded(torch.tensor([ref.sequence])).logits[0].float().numpy()
                changes.append(ref.prompt_end_diff(logits))
    finally:
        for hook in hooks:
            hook.remove()
    return changes


def build_references(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[Reference]:
    import torch

    from rakd.rollout import sample

    model.eval()
    greedy = sample(model, tokenizer, questions, max_new_tokens=max_new_tokens, temperature=0.0)
    refs = []
    for i, question in enumerate(questions):
        text, special = model_prompt(tokenizer, question)  # the prompt the continuation was sampled from
        prompt_ids = tokenizer(text, add_special_tokens=special)["input_ids"]
        continuation = greedy.completion_ids[i][greedy.completion_mask[i].bool()].tolist() or [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + continuation[:-1]])).logits[0].float().numpy()
        refs.append(Reference(text, prompt_ids, continuation, logits, special))
    changes = f16_rounding(model, refs)
    return [replace(r, rounding=change) for r, change in zip(refs, changes, strict=True)]


@dataclass(frozen=True)
class ParityRecord:
    """One artefact's parity check, in parity.json's `artefacts` as `as_json()` gives it. The measures are None where
    the check could not run (its runtime crashed or failed: `failures` says how)."""

    artefact: str
    path: str
    size_bytes: int
    tolerance_logits: float | None
    min_top1_agreement: float
    tokenization_equal: bool | None = None
    logits_max_abs_diff: float | None = None
    top1_agreement: float | None = None
    near_ties: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare(label: str, path: Path, refs: list[Reference], runtime) -> dict:
    """Run `runtime` (tokenize, logits) on every reference and check the tolerance of `label`.

    For formats with a logit bound, a different top-1 token counts as a near tie (not a disagreement)
    when the reference scores the two tokens within that bound: either is right to the precision the
    format promises. Untrained models have many such ties."""
    runs, tokens_equal = [], True
    for ref in refs:
        tokens_equal &= runtime.tokenize(ref.text, ref.special) == ref.prompt_ids
        runs.append((ref, runtime.logits(ref.sequence)))
    logit_tol, min_agree = tolerance_for(label, max((r.rounding for r in refs), default=0.0))
    max_diff, agree, near_ties, total = 0.0, 0, 0, 0
    for ref, logits in runs:
        last = len(ref.prompt_ids) - 1
        max_diff = max(max_diff, ref.prompt_end_diff(logits))
        predicted, expected = logits[last:].argmax(-1), np.array(ref.continuation)
        for pos in np.nonzero(predicted != expected)[0]:
            row = ref.logits[last + pos]
            if logit_tol is not None and row[expected[pos]] - row[predicted[pos]] <= logit_tol:
                near_ties += 1
        agree += int((predicted == expected).sum())
        total += len(ref.continuation)
    agreement = agree / max(1, total)
    agreement_beyond_ties = (agree + near_ties) / max(1, total)
    failures = []
    if not tokens_equal:
        failures.append("tokenisation differs from the HF tokenizer")
    if logit_tol is not None and max_diff > logit_tol:
        failures.append(f"max |Δlogit| {max_diff:.3g} > {logit_tol:g}")
    if agreement_beyond_ties < min_agree:
        failures.append(f"top-1 agreement {agreement:.3f} (+{near_ties} near ties) < {min_agree:g}")
    return ParityRecord(
        artefact=label,
        path=str(path),
        size_bytes=_size(path),
        tolerance_logits=logit_tol,
        min_top1_agreement=min_agree,
        tokenization_equal=tokens_equal,
        logits_max_abs_diff=max_diff,
        top1_agreement=agreement,
        near_ties=near_ties,
        failures=failures,
    ).as_json()


def save_references(refs: list[Reference], path: Path) -> Path:
    """The references as one .npz (logits as arrays, the rest as JSON): what a check process reads."""
    meta = [{k: v for k, v in asdict(r).items() if k != "logits"} for r in refs]
    np.savez(path, meta=np.array(json.dumps(meta)), **{f"logits_{i}": r.logits for i, r in enumerate(refs)})
    return path


def load_references(path: Path) -> list[Reference]:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return [Reference(**m, logits=data[f"logits_{i}"]) for i, m in enumerate(meta)]


def check_artefact(spec: dict) -> dict:
    """`compare` one artefact against saved references: what the isolated check process runs (llama.cpp with an F32
    KV cache: exact against PyTorch on F32/F16 files)."""
    label, path = spec["label"], Path(spec["path"])
    runtime = open_logits(spec["format"], path, spec["threads"], exact=True)
    try:
        return compare(label, path, load_references(Path(spec["references"])), runtime)
    finally:
        runtime.close()


def check_isolated(label: str, fmt: str, path: Path, references: Path, threads: int) -> dict:
    """`check_artefact` in a fresh process; a crash or an error there is this artefact's failure, not ours."""
    spec = {"label": label, "format": fmt, "path": str(path), "references": str(references), "threads": threads}
    try:
        return run_isolated(
            "export.parity:check_artefact", spec, what=f"{path.name}: the {label} runtime", progress_prefix="[parity]"
        )
    except (ChildCrashed, ChildFailed) as err:
        logit_tol, min_agree = tolerance_for(label)
        record = ParityRecord(label, str(path), _size(path), logit_tol, min_agree, failures=[str(err)])
        return record.as_json()


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
