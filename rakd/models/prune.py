"""Which of the teacher's layers a student keeps, chosen by measurement on calibration text, per model.

Two scores read the teacher's residual stream on calibration rows (the teacher's own completions of train
questions, through the prompt format it is asked in), at every completion token:

- Block Influence (ShortGPT, Men et al. 2024): layer i's 1 - cos(input, output); the layers that change the stream
  least are dropped first, wherever they sit.
- Angular distance of a dropped block (Gromov et al. 2024): arccos(cos(h_l, h_{l+n})) / pi between the input of
  layer l and the output of layer l + n - 1; the contiguous block of n layers with the least is dropped.

Beside them, evenly spaced layers (what `from_teacher_every_k` keeps). Which rule damages a model least differs by
model (the last-layer rule that suits 70B models is the worst on SmolLM2-135M), so each candidate is built and
measured: the per-token KL from the teacher's distribution to the candidate's, and top-1 agreement, on the same
rows; `by: measured` keeps the candidate of least KL. `layer_choice` returns every candidate's layers and scores,
which go into the student's card.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from transformers import PreTrainedModel

from rakd.models.subset import decoder_layers, keep_layers


@dataclass(frozen=True)
class Candidate:
    """A set of kept layers, the rule that chose it, and its damage before any healing (on the calibration rows)."""

    rule: str
    kept: list[int]
    kl: float = math.nan  # nats per completion token, KL(teacher || candidate)
    top1: float = math.nan  # share of completion tokens where both models' most likely token agree


@dataclass(frozen=True)
class LayerChoice:
    """The kept layers, the rule that chose them, each candidate measured, and the per-layer scores."""

    chosen: Candidate
    candidates: list[Candidate]
    block_influence: list[float] = field(default_factory=list)
    angular_distance: list[float] = field(default_factory=list)  # per start l of a dropped block of n layers

    def as_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def residual_states(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, read: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream (L + 1, N, H) at the N positions `read` (B, T bool) marks, the input of every decoder
    layer and the output of the last, and the logits (N, V) there, from one forward pass over `ids` (B, T) with
    attention mask `mask`."""
    layers, states = decoder_layers(model), []

    def keep_input(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        states.append(hidden[read].float())

    def keep_output(_module, _args, output):
        states.append((output[0] if isinstance(output, tuple) else output)[read].float())

    hooks = [layer.register_forward_pre_hook(keep_input, with_kwargs=True) for layer in layers]
    hooks.append(layers[-1].register_forward_hook(keep_output))
    try:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[read]
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(states), logits


def block_influence(states: torch.Tensor) -> list[float]:
    """Per layer i: 1 - the mean cosine of its input states[i] and output states[i + 1] (states (L + 1, N, H))."""
    cos = torch.nn.functional.cosine_similarity(states[:-1], states[1:], dim=-1)
    return (1.0 - cos.mean(-1)).tolist()


def angular_distances(states: torch.Tensor, n: int) -> list[float]:
    """Per start l in 0..L-n: the mean arccos(cos(states[l], states[l + n])) / pi over positions."""
    cos = torch.nn.functional.cosine_similarity(states[: len(states) - n], states[n:], dim=-1)
    return (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean(-1).tolist()


RULES = ("block_influence", "angular", "even")


def rule_layers(num_layers: int, keep: int, influence: list[float], angular: list[float]) -> dict[str, list[int]]:
    """Each rule's kept layers for a student of `keep` of `num_layers` layers: the `keep` of most Block Influence,
    all but the contiguous block of least angular distance, and `keep` evenly spaced layers (first and last kept)."""
    if not 1 <= keep < num_layers:
        raise ValueError(f"a student keeps 1..{num_layers - 1} of the teacher's {num_layers} layers, not {keep}")
    start = min(range(len(angular)), key=lambda i: angular[i])
    return {
        "block_influence": sorted(sorted(range(num_layers), key=lambda i: -influence[i])[:keep]),
        "angular": [i for i in range(num_layers) if not start <= i < start + num_layers - keep],
        "even": sorted({round(i * (num_layers - 1) / max(1, keep - 1)) for i in range(keep)}) if keep > 1 else [0],
    }


def candidates(layers: dict[str, list[int]]) -> list[Candidate]:
    """One candidate per distinct set of layers (named by the first rule that chose it)."""
    found: dict[tuple[int, ...], Candidate] = {}
    for rule, kept in layers.items():
        found.setdefault(tuple(kept), Candidate(rule, kept))
    return list(found.values())


@torch.no_grad()
def damage(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> tuple[float, float]:
    """Mean KL(teacher || student) in nats and top-1 agreement over N positions' logits (N, V)."""
    t, s = torch.log_softmax(teacher_logits.float(), -1), torch.log_softmax(student_logits.float(), -1)
    kl = (t.exp() * (t - s)).sum(-1).mean()
    return float(kl), float((t.argmax(-1) == s.argmax(-1)).float().mean())


@torch.no_grad()
def measure_candidate(teacher, candidate: Candidate, ids, mask, read, teacher_logits) -> Candidate:
    student = keep_layers(teacher, candidate.kept, copy_model=True).eval()
    logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits[read]
    kl, top1 = damage(teacher_logits, logits)
    return Candidate(candidate.rule, candidate.kept, kl, top1)


@dataclass(frozen=True)
class TeacherReading:
    """What every choice reads of the teacher on the calibration rows, measured once: its residual stream at the
    read positions and its logits there."""

    states: torch.Tensor  # (L + 1, N, H)
    logits: torch.Tensor  # (N, V)


@torch.no_grad()
def read_teacher(teacher: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, read: torch.Tensor) -> TeacherReading:
    was_training = teacher.training
    teacher.eval()
    states, logits = residual_states(teacher, ids, mask, read)
    teacher.train(was_training)
    return TeacherReading(states, logits)


@torch.no_grad()
def layer_choice(
    teacher: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    read: torch.Tensor,
    keep: int,
    by: str = "measured",
    reading: TeacherReading | None = None,
) -> LayerChoice:
    """Measure the rules on calibration rows (`ids`, `mask` (B, T); `read` (B, T) bool: the positions that predict
    completion tokens) and choose `keep` layers: the candidate of least KL (`measured`), or one rule's. `reading`:
    the teacher's, when several choices share one."""
    if by != "measured" and by not in RULES:
        raise ValueError(f"unknown layer rule {by!r}; expected measured or one of {list(RULES)}")
    reading = reading or read_teacher(teacher, ids, mask, read)
    num_layers = len(reading.states) - 1
    influence = block_influence(reading.states)
    angular = angular_distances(reading.states, num_layers - keep) if 1 <= keep < num_layers else []
    layers = rule_layers(num_layers, keep, influence, angular)
    measured = [measure_candidate(teacher, c, ids, mask, read, reading.logits) for c in candidates(layers)]
    if by == "measured":
        chosen = min(measured, key=lambda c: c.kl)
    else:
        chosen = next(c for c in measured if c.kept == layers[by])
    return LayerChoice(chosen, measured, influence, angular)
