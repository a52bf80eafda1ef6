"""RL step throughput: our trainer (grpo, grpo_kl, rakd) against TRL's GRPOTrainer, in one run.

    make bench-rl                      # installs the bench extra (TRL), then runs this on runs/tiny
    .venv/bin/python bench/rl_throughput.py [--run runs/tiny] [--threads 1] [--prompts 16] [--group 8]

Everything that could differ is set the same on both sides: the trained student and teacher of a finished run
(`make demo` makes runs/tiny), the same pool of train prompts in the same prompt format, the same verifier reward,
the batch (prompts x G completions per step), max new tokens, temperature 1, learning rate, clip range
(0.2 / 0.28), sequence-mean loss, thread count and fp32. TRL's own defaults that would silently differ are set
explicitly (bf16 off, gradient checkpointing off, one generation per optimiser step, one iteration).

Not the same work, said beside the numbers: our trainer drops groups whose rewards are all equal before the
update (they carry no gradient), TRL's loss runs over every completion; and TRL's beta > 0 takes KL to a frozen
copy of the initial student, where our grpo_kl takes it to the teacher. Dynamic sampling is off here
(min_informative_groups 0) so that both sides sample exactly prompts x G completions per step.

Prints a table (median seconds per step over the measured steps, completions per second, our split into sample /
teacher / update) and writes results.{json,md,png} and meta.json into bench/results/rl_throughput-DATE/ (or --out).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from benchlib import cpu_model, results_dir, write_meta

from rakd.io import read_jsonl
from rakd.models.load import load_causal_lm
from rakd.prompt import prompt_text
from rakd.tables import markdown_table, text_table
from rakd.train.common import OptimConfig
from rakd.train.config import LossParams, RLConfig
from rakd.train.rl import RLTrainer
from rakd.verify import reward


def ours(method, student, teacher, tokenizer, records, args) -> dict:
    """Our RLTrainer, `args.steps` steps from a fresh copy of the student; per-step seconds and their split."""
    cfg = RLConfig(
        steps=args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        min_informative_groups=0,
        prompts="all",
        optim=OptimConfig(lr=args.lr, warmup_steps=0, schedule="constant"),
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = RLTrainer(
            copy.deepcopy(student), teacher, tokenizer, records, [], method, LossParams(), cfg, Path(out), seed=0
        )
        rows = []
        for step in range(args.steps):
            start = time.perf_counter()
            metrics = trainer.step(step)
            rows.append({"seconds": time.perf_counter() - start, **metrics})
    measured = rows[args.warmup :]
    med = {
        key: statistics.median(r[key] for r in measured)
        for key in ("seconds", "seconds_sample", "seconds_teacher", "seconds_update")
    }
    return {
        "trainer": f"ours {method}",
        "s_per_step": med["seconds"],
        "completions_per_s": args.prompts * args.group / med["seconds"],
        "sample_s": med["seconds_sample"],
        "teacher_s": med["seconds_teacher"],
        "update_s": med["seconds_update"],
        "rows_in_loss": statistics.median(r["rows_in_loss"] for r in measured),
        "reward_mean": statistics.mean(r["reward_mean"] for r in rows),
    }


def trl(beta, student, tokenizer, records, args) -> dict:
    """TRL's GRPOTrainer with every setting that matters stated explicitly."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_list(
        [{"prompt": prompt_text(r["question"]), "answer": r["answer"]} for r in records[: args.prompts * args.steps]]
    )

    def verifier(prompts, completions, answer, **_):
        return [reward(text, gold) for text, gold in zip(completions, answer)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.prompts * args.group,  # TRL counts completions, not prompts
            gradient_accumulation_steps=1,
            num_generations=args.group,
            steps_per_generation=1,
            num_iterations=1,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=1.0,
            beta=beta,
            epsilon=0.2,
            epsilon_high=0.28,
            loss_type="grpo",  # per-sequence mean, then mean over sequences: our seq_mean
            scale_rewards="group",
            max_steps=args.steps,
            bf16=False,
            fp16=False,
            use_cpu=True,
            gradient_checkpointing=False,
            disable_dropout=True,
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            seed=0,
            dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=copy.deepcopy(student),
            reward_funcs=verifier,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        trainer.train()
    seconds = statistics.median(times[args.warmup :])
    return {
        "trainer": f"TRL GRPOTrainer beta={beta:g}",
        "s_per_step": seconds,
        "completions_per_s": args.prompts * args.group / seconds,
        "sample_s": None,
        "teacher_s": None,
        "update_s": None,
        "rows_in_loss": args.prompts * args.group,
        "reward_mean": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/tiny", help="a finished run: its student/ and teacher/ are used")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--methods", default="grpo,grpo_kl,rakd")
    parser.add_argument("--trl-betas", default="0,0.04", help="comma list; empty: skip TRL")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of the whole comparison (medians reported)")
    parser.add_argument("--out", default=None, help="results folder (default: bench/results/rl_throughput-DATE)")
    parser.add_argument("--plot-from", help="only draw the PNG beside a saved result JSON (no bench run)")
    args = parser.parse_args()
    if args.plot_from:
        saved = json.loads(Path(args.plot_from).read_text())
        title = f"{saved['machine']['cpu']}, " + ", ".join(f"{k} {v}" for k, v in saved["setup"].items())
        plot(saved["rows"], title, Path(args.plot_from).with_suffix(".png"))
        return
    run = Path(args.run)
    if not (run / "student" / "model.safetensors").exists():
        raise SystemExit(f"{run}/student has no model: run `make demo` first (or pass --run)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student, tokenizer = load_causal_lm(run / "student")
    teacher, _ = load_causal_lm(run / "teacher")
    records = read_jsonl(run / "data" / "train.jsonl")
    rounds = []
    for _ in range(args.rounds):  # every trainer once per round: a drifting machine moves them all alike
        one = [ours(method, student, teacher, tokenizer, records, args) for method in args.methods.split(",") if method]
        one += [trl(float(b), student, tokenizer, records, args) for b in args.trl_betas.split(",") if b]
        trl0 = next((r for r in one if r["trainer"] == "TRL GRPOTrainer beta=0"), None)
        grpo = next((r for r in one if r["trainer"] == "ours grpo"), None)
        for r in one:
            r["x_trl_beta0"] = trl0["s_per_step"] / r["s_per_step"] if trl0 else None
            r["x_grpo_time"] = r["s_per_step"] / grpo["s_per_step"] if grpo else None
        rounds.append(one)
    rows = []
    for i, first in enumerate(rounds[0]):
        merged = {"trainer": first["trainer"], "rounds": [rd[i] for rd in rounds]}
        for key, value in first.items():
            if key != "trainer" and value is not None:
                merged[key] = statistics.median(rd[i][key] for rd in rounds)
            elif key != "trainer":
                merged[key] = None
        for key in ("x_trl_beta0", "x_grpo_time"):
            values = [rd[i][key] for rd in rounds if rd[i][key] is not None]
            merged[key + "_range"] = (min(values), max(values)) if values else None
        rows.append(merged)
    machine = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "torch": torch.__version__,
        "dtype": "fp32",
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
    }
    try:
        import trl as trl_module

        machine["trl"] = trl_module.__version__
    except ImportError:
        machine["trl"] = None
    setup = {
        k: getattr(args, k) for k in ("prompts", "group", "max_new_tokens", "steps", "warmup", "lr", "run", "rounds")
    }

    def ratio(row, key):
        if row[key] is None:
            return "-"
        low, high = row[key + "_range"]
        return f"{row[key]:.2f}x ({low:.2f}-{high:.2f})"

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    table = [
        {
            "trainer": r["trainer"],
            "s/step": fmt(r["s_per_step"], ".3f"),
            "completions/s": fmt(r["completions_per_s"], ".0f"),
            "sample s": fmt(r["sample_s"], ".3f"),
            "teacher s": fmt(r["teacher_s"], ".3f"),
            "update s": fmt(r["update_s"], ".3f"),
            "rows in loss": fmt(r["rows_in_loss"], ".0f"),
            "speed vs TRL β=0": ratio(r, "x_trl_beta0"),
            "time vs our grpo": ratio(r, "x_grpo_time"),
        }
        for r in rows
    ]
    title = (
        f"{machine['cpu']}, {args.threads} thread(s), fp32, {args.prompts} prompts x G={args.group}, "
        f"up to {args.max_new_tokens} new tokens, median of steps {args.warmup + 1}-{args.steps}, median (range) of "
        f"{args.rounds} rounds"
    )
    print(title)
    print(text_table(table))
    folder = results_dir("rl_throughput", args.out)
    out = folder / "results"
    write_meta(folder)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "setup": setup, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(f"{title}\n\n{markdown_table(table)}\n")
    plot(rows, title, out.with_suffix(".png"))
    print(f"wrote results.json, results.md, results.png and meta.json into {folder}/")


def plot(rows: list[dict], title: str, path: Path) -> None:
    """Seconds per step as horizontal bars, ours split into sample / teacher / update (TRL's is one bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = (
        ("sample_s", "sample", "tab:blue"),
        ("teacher_s", "teacher", "tab:orange"),
        ("update_s", "update", "tab:green"),
    )
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.4))
    for y, row in enumerate(reversed(rows)):
        left = 0.0
        if row.get("sample_s") is None:
            ax.barh(y, row["s_per_step"], color="tab:gray", label="TRL step (no split)" if y == 0 else None)
        else:
            for key, label, color in parts:
                ax.barh(y, row[key], left=left, color=color, label=label if y == len(rows) - 1 else None)
                left += row[key]
            ax.barh(
                y,
                max(0.0, row["s_per_step"] - left),
                left=left,
                color="lightgray",
                label="other" if y == len(rows) - 1 else None,
            )
        ax.text(row["s_per_step"], y, f" {row['s_per_step']:.3f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["trainer"] for r in reversed(rows)])
    ax.set_xlabel("seconds per RL step (median)")
    ax.set_xlim(0, 1.15 * max(r["s_per_step"] for r in rows))
    ax.set_title(title, fontsize=7, wrap=True)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
