"""Where an RL step's GPU time goes, at the GPU config's sizes (batch 512 = 64 prompts x G=8, 160 new tokens):

1. the `loop` sampler under torch.profiler (the ops by host time and by device time), and timed against its
   variants: no shared prefill, and `torch.multinomial` instead of the inverse-CDF draw;
2. teacher scoring (no grad) and the update's forward + backward, as prefix forests (what RL runs) against plain
   padded passes over prompt + completion (what it ran before), with the host cost of building the forests.

    python bench/gpu_profile.py [OUT.json]      (on a CUDA host, under bench/gpu_check.sh's PYTHONPATH)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from benchlib import timed as best_time
from gpu_check import TOY  # bench/ is the script's directory
from torch.profiler import ProfilerActivity, profile

from pipeline.config import load_config
from rakd.data.generator import GeneratorConfig, generate
from rakd.models.tokenizer import TokenizerConfig, build_bpe, wrap_tokenizer
from rakd.models.zoo import build_model, preset_config
from rakd.rollout import (
    completion_logits,
    prefix_forests,
    sample,
    score_completions,
    select_rows,
    token_logprobs,
)
from rakd.rollout import samplers as rollout
from rakd.train.common import autocast
from rakd.verify import reward

GPU = load_config(Path(__file__).parent.parent / "configs" / "gpu.yaml")  # the GPU config's model sizes
STUDENT, TEACHER = GPU.distill.student.model.overrides, GPU.teacher.model.overrides
DEVICE = torch.device(os.environ.get("GPU_PROFILE_DEVICE", "cuda"))  # cpu: a dry run of this script at toy sizes
if DEVICE.type == "cpu":
    STUDENT = TEACHER = TOY
NEW_TOKENS = 160 if DEVICE.type == "cuda" else 8


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int = 3) -> float:
    return best_time(fn, repeats, sync)


def multinomial_draw(columns, top_p, u):  # the draw before the inverse CDF: one exponential per vocabulary entry
    if u is None:
        return columns.argmax(0)
    probs = rollout._filter_top_p(columns.t(), top_p).softmax(-1)
    return torch.multinomial(probs, 1).squeeze(-1)


def plain_scores(model, batch, chunk: int) -> torch.Tensor:
    return score_completions(model, batch, chunk, packed=False)


def main(out: str | None) -> None:
    records = generate(GeneratorConfig(n_items=2000, templates=["expression", "word"], seed=7))
    tokenizer = wrap_tokenizer(build_bpe(records, TokenizerConfig()))
    student = build_model(preset_config("student-tiny", tokenizer, **STUDENT), seed=0).to(DEVICE).eval()
    teacher = build_model(preset_config("teacher-tiny", tokenizer, **TEACHER), seed=1).to(DEVICE).eval()
    questions = [r["question"] for r in records[:64] for _ in range(8)]
    result = {"gpu": torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu", "torch": torch.__version__}

    def draw(backend="loop", group=8, tokens=NEW_TOKENS):
        return sample(
            student, tokenizer, questions, max_new_tokens=tokens, backend=backend, batch_size=512, group_size=group
        )

    with autocast(DEVICE):
        draw(tokens=min(16, NEW_TOKENS))
        result["loop_s"] = timed(draw, 2)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            result["loop_no_cudnn_s"] = timed(draw, 2)
            result["graph_no_cudnn_s"] = timed(lambda: draw("graph"), 2)
        print(json.dumps(result, indent=1), flush=True)
        result["loop_no_shared_prefill_s"] = timed(lambda: draw(group=1), 2)
        original = rollout._draw
        rollout._draw = multinomial_draw
        try:
            result["loop_multinomial_s"] = timed(draw, 2)
        finally:
            rollout._draw = original
        result["graph_s"] = timed(lambda: draw("graph"), 2)
        print(json.dumps(result, indent=1), flush=True)

        batch = draw("graph")
        result["rows"], result["completion_tokens"] = len(batch.texts), int(batch.completion_mask.sum())
        answers = [r["answer"] for r in records[:64] for _ in range(8)]
        result["rewards_s"] = timed(lambda: [reward(t, a) for t, a in zip(batch.texts, answers)], 1)
        result["forest_host_s_256"] = timed(lambda: prefix_forests(batch, 256), 2)
        result["teacher_forest_s"] = timed(lambda: score_completions(teacher, batch, 256, packed=True))
        result["teacher_plain_s"] = timed(lambda: plain_scores(teacher, batch, 256))
        result["teacher_forest_vs_plain_max_abs"] = float(
            (score_completions(teacher, batch, 256, packed=True) - plain_scores(teacher, batch, 256)).abs().max()
        )
        minibatch = select_rows(batch, torch.arange(256))
        mask = minibatch.completion_mask.to(DEVICE)

        def update(packed: bool):
            student.zero_grad()
            logits = completion_logits(student, minibatch, packed=packed)
            loss = (token_logprobs(logits, minibatch.completion_ids.to(DEVICE)) * mask).sum() / mask.sum()
            loss.backward()

        student.train()
        result["update_forest_s"] = timed(lambda: update(True))
        result["update_plain_s"] = timed(lambda: update(False))
        print(json.dumps(result, indent=1), flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            update(True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(json.dumps(result, indent=1))
    if out:
        with open(out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
