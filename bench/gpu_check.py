"""GPU check: bf16 distill-stage training on CUDA, then the GPU config's smoke run (prep -> teacher -> distill).

Run on a CUDA host (see bench/gpu_check.sh). Prints and writes `OUT/gpu_check.json`:
- that autocast really computes in bf16 on CUDA (logits dtype of a student forward);
- step times of the teacher SFT, warm-start SFT and RL-distill steps (median over steps, from metrics.jsonl),
  tokens/s of the RL rollouts, peak CUDA memory;
- the smoke run's accuracies.
Only the core stages run: export/validate need optimum and llama.cpp, which such a host may lack.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

SMOKE = {  # the GPU config, shortened to minutes
    "prep.generator.n_items": 20000,
    "teacher.train.steps": 300,
    "teacher.train.checkpoint_every": 150,
    "teacher.eval.n_problems": 500,
    "distill.warmstart.n_prompts": 4000,
    "distill.warmstart.sft.steps": 200,
    "distill.rl.steps": 20,
    "distill.checkpoint_every": 10,
    "distill.eval_every": 10,
    "distill.val_problems": 200,
    "distill.eval.n_problems": 500,
}


def rows(path: Path) -> list[dict]:
    if not path.is_file():  # e.g. no warm-start SFT when the teacher produced no verified trace
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


CORE_STAGES = ("prep", "teacher", "distill")
TOY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}
DRY_RUN = {  # `--dry-run`: the same script on CPU at toy size, to check it before spending device time
    "teacher.model.overrides": TOY,
    "distill.student.model.overrides": TOY,
    "teacher.threads": 2,
    "distill.threads": 2,
    "prep.generator.n_items": 1500,
    "teacher.train.steps": 8,
    "teacher.train.batch_size": 16,
    "teacher.device": "cpu",
    "teacher.eval.n_problems": 16,
    "teacher.eval.max_new_tokens": 24,
    "distill.warmstart.n_prompts": 32,
    "distill.warmstart.sft.steps": 8,
    "distill.warmstart.max_new_tokens": 24,
    "distill.rl.steps": 8,
    "distill.rl.prompts_per_step": 2,
    "distill.rl.max_new_tokens": 24,
    "distill.device": "cpu",
    "distill.eval.n_problems": 16,
    "distill.eval.max_new_tokens": 24,
    "distill.val_problems": 8,
    "distill.eval_every": 4,
    "distill.checkpoint_every": 4,
}


def main(out: Path, dry_run: bool = False, extra: list[str] | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    assert dry_run or torch.cuda.is_available(), "no CUDA device"
    from pipeline.cache import run_stage
    from pipeline.config import load_config
    from pipeline.registry import BY_NAME
    from rakd.models.zoo import build_model, count_parameters, preset_config
    from rakd.train.common import autocast

    result = {
        "gpu": "cpu (dry run)" if dry_run else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "overrides": list(extra or []),
    }
    config = Path("configs/gpu.yaml")
    settings = {**SMOKE, **(DRY_RUN if dry_run else {})}
    overrides = [f"{k}={v}" for k, v in settings.items()] + [f"run.root={out / 'runs'}"] + list(extra or [])
    cfg = load_config(config, overrides)

    started = time.perf_counter()
    for stage in CORE_STAGES:  # the registry's own stage functions; export/validate need optimum and llama.cpp
        run_stage(BY_NAME[stage], cfg)
    result["smoke_seconds"] = time.perf_counter() - started
    run = cfg.run.dir
    teacher_eval = json.loads((run / "teacher/eval.json").read_text())
    student_eval = json.loads((run / "student/eval.json").read_text())
    warm_eval = json.loads((run / "student/eval_warmstart.json").read_text())
    teacher_rows, warm_rows, rl_rows = (
        rows(run / "teacher/metrics.jsonl"),
        rows(run / "student/metrics_warmstart.jsonl"),
        rows(run / "student/metrics.jsonl"),
    )
    result.update(
        teacher_parameters=teacher_eval.get("parameters"),
        student_parameters=student_eval.get("parameters"),
        teacher_sft_step_s=median([r["seconds"] for r in teacher_rows[5:]]),
        warmstart_sft_step_s=median([r["seconds"] for r in warm_rows[5:]]),
        rl_step_s={k: median([r[f"seconds_{k}"] for r in rl_rows[2:]]) for k in ("sample", "teacher", "update")},
        rl_tokens_per_s=median([r["tokens_per_s"] for r in rl_rows[2:]]),
        rl_steps=len(rl_rows),
        rl_final_loss_finite=all(r.get("loss", 0.0) == r.get("loss", 0.0) for r in rl_rows),
        teacher_greedy=teacher_eval["greedy_accuracy"],
        warmstart_greedy=warm_eval["greedy_accuracy"],
        student_greedy=student_eval["greedy_accuracy"],
        student_sampled=student_eval.get("sampled_accuracy"),
        val_greedy_by_step={r["step"]: r["val_greedy_accuracy"] for r in rl_rows if "val_greedy_accuracy" in r},
    )

    # bf16 really used on CUDA: a student forward under the trainers' autocast.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    source = cfg.distill.student.model
    device = torch.device("cpu" if dry_run else "cuda")
    student = build_model(preset_config(source.preset, tokenizer, **source.overrides), 0).to(device)
    ids = torch.randint(0, len(tokenizer), (8, 64), device=device)
    with autocast(device):
        logits = student(ids).logits
    result["autocast_logits_dtype"] = str(logits.dtype)
    result["student_parameters_check"] = count_parameters(student)
    if not dry_run:
        result["peak_cuda_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result, indent=2))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    return 0 if dry_run or logits.dtype == torch.bfloat16 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("/tmp/gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="the same script on CPU at toy size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args()
    sys.exit(main(args.out, dry_run=args.dry_run, extra=args.set))
