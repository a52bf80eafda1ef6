"""RL step throughput: our trainer (grpo, grpo_kl, rakd) against TRL's GRPOTrainer, in one run, with each phase's
achieved GFLOP/s against the CPU's own matmul peak.

    make bench-rl                      # installs the bench extra (TRL), then runs this on runs/tiny
    .venv/bin/python bench/rl_throughput.py [--run runs/tiny] [--threads 1] [--prompts 16] [--group 8]
    .venv/bin/python bench/rl_throughput.py --run runs/smollm --threads 2 --precision auto ...   # a real size

`--run` is a finished run: its student/ and teacher/ (runs/tiny: `make demo`; runs/smollm: SmolLM2-135M-Instruct
tuned on the task and its healed every-3rd-layer student, `make smollm` or bench/smollm.py).

Everything that could differ is set the same on both sides: the same student and teacher, the same pool of train
prompts asked the same way (the student's chat template when it has one, as a conversation for TRL; else the bare
prompt), the same verifier reward, prompts x G completions per step, max new tokens, temperature 1, learning rate,
clip range (0.2 / 0.28), sequence-mean loss, thread count and precision (fp32, or bf16 autocast on both sides).
TRL's own defaults that would silently differ are set explicitly (gradient checkpointing off, one generation per
optimiser step, one iteration).

The same work: TRL's loss runs over every completion; our trainer drops groups whose rewards all agree before the
update (their advantage is zero: they carry no gradient). The row `ours grpo, every row` trains on every row as
TRL does, the equal-work comparison; `ours grpo` is the trainer as it ships (dynamic sampling off: exactly prompts
x G completions per step); `ours grpo, dynamic sampling` draws up to `--dynamic-draws` times until the step holds
`--dynamic-groups` groups with mixed rewards, as a run configures it. TRL's beta > 0 takes KL to a frozen copy of
the initial student, where our grpo_kl takes it to the teacher.

Two rates per phase, each its FLOPs summed over the measured steps over its seconds summed: `ledger` counts the work
as the compute ledger does (rakd.flops: every row's prompt and completion, as a plain implementation computes
them; what methods and trainers compare on), `executed` what our passes compute (a group's G rows share their
prompt: the sampler prefills it once and scoring and the update pack the rows as a prefix forest, so a row costs
P/G + C tokens for P + C in the ledger). TRL computes every row whole: its executed rate is the ledger count of the
same work (ours, every row) over its seconds. The peak is a 2048 x 2048 matmul in the same precision, measured
here, beside one at decoding's shape. The goals (ours at least 2x TRL on equal work; sampling at least 40% and the
update at least 60% of the peak, executed; a rakd step at most 1.25x a grpo step, both over every row so that the
teacher scores all of them) are checked and each miss names its phase.

Prints the tables and writes results.{json,md,png} and meta.json into bench/results/rl_throughput-DATE/ (or --out).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from benchlib import cpu_model, matmul_peak, results_dir, write_meta

from rakd.io import read_jsonl
from rakd.losses import LOSSES, LossSpec
from rakd.models.load import load_causal_lm
from rakd.prompt import chat_messages, model_prompt, prompt_text
from rakd.tables import markdown_table, text_table
from rakd.train.common import OptimConfig, cpu_bf16_units
from rakd.train.config import LossParams, RLConfig
from rakd.train.rl import RLTrainer
from rakd.verify import reward

PHASES = (("sample", "student_sample"), ("teacher", "teacher_score"), ("update", "student_update"))
GOALS = {"vs_trl": 2.0, "sample_peak": 0.40, "update_peak": 0.60, "rakd_vs_grpo": 1.25}


class EveryRow(LossSpec):
    """A method's loss over every row of the step, groups whose rewards all agree included (TRL's work)."""

    @property
    def trains_on(self):
        return "all"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One of our trainers' rows: the method, whether it trains every row, and dynamic sampling (0: off)."""

    method: str
    every_row: bool = False
    min_groups: int = 0
    draws: int = 1

    @property
    def label(self) -> str:
        if self.every_row:
            return f"ours {self.method}, every row"
        return f"ours {self.method}" + (", dynamic sampling" if self.min_groups else "")


def ours(variant: Variant, student, teacher, tokenizer, records, args, precision: str) -> dict:
    """Our RLTrainer, `args.steps` steps from a fresh copy of the student; per-step seconds, their split and each
    phase's ledger FLOPs."""
    cfg = RLConfig(
        steps=args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        min_informative_groups=variant.min_groups,
        max_draws=variant.draws,
        prompts="all",
        optim=OptimConfig(lr=args.lr, warmup_steps=0, schedule="constant"),
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = RLTrainer(
            copy.deepcopy(student),
            teacher,
            tokenizer,
            records,
            [],
            variant.method,
            LossParams(),
            cfg,
            Path(out),
            seed=0,
            precision=precision,
        )
        if variant.every_row:
            spec = LOSSES[variant.method]
            trainer.spec = EveryRow(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})
        rows = []
        for step in range(args.steps):
            start = time.perf_counter()
            metrics = trainer.step(step)
            rows.append({"seconds": time.perf_counter() - start, **metrics})
    measured = rows[args.warmup :]

    def median(key):
        return statistics.median(float(r.get(key, 0) or 0) for r in measured)

    def total(key):
        return sum(float(r.get(key, 0) or 0) for r in measured)

    completion = total("response_length") / len(measured)
    result = {
        "trainer": variant.label,
        "precision": precision,
        "s_per_step": median("seconds"),
        "completions_per_s": args.prompts * args.group / median("seconds"),
        "rows_in_loss": median("rows_in_loss"),
        "draws": median("draws"),
        "reward_mean": statistics.mean(r["reward_mean"] for r in rows),
        "completion_tokens": completion,
        "executed_share": executed_share(args.prompt_tokens, completion, args.group),
    }
    for phase, ledger in PHASES:  # rates from sums over the measured steps: a step may have no rows to update
        result[f"{phase}_s"] = median(f"seconds_{phase}")
        result[f"{phase}_seconds_total"] = total(f"seconds_{phase}")
        result[f"{phase}_flops_total"] = total(f"flops_{ledger}")
    result["step_seconds_total"] = total("seconds")
    result["step_flops_total"] = sum(result[f"{phase}_flops_total"] for phase, _ in PHASES)
    return result


def executed_share(prompt: float, completion: float, group: int) -> float:
    """The share of the ledger's tokens our passes compute: a group's G rows share their P prompt tokens, so a row
    costs P / G + C of the ledger's P + C (the linear terms; attention's are small at these lengths)."""
    return (prompt / group + completion) / (prompt + completion)


def trl(beta, student, tokenizer, records, args, precision: str) -> dict:
    """TRL's GRPOTrainer with every setting that matters stated explicitly."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    chat = bool(getattr(tokenizer, "chat_template", None))  # asked as our sampler asks: rakd.prompt.model_prompt
    dataset = Dataset.from_list(
        [
            {"prompt": chat_messages(r["question"]) if chat else prompt_text(r["question"]), "answer": r["answer"]}
            for r in records[: args.prompts * args.steps]
        ]
    )

    def verifier(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [reward(text, gold) for text, gold in zip(texts, answer)]

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
            bf16=precision == "bf16",
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
        "precision": precision,
        "s_per_step": seconds,
        "completions_per_s": args.prompts * args.group / seconds,
        "rows_in_loss": args.prompts * args.group,
    }


def one_round(variants, betas, student, teacher, tokenizer, records, args, precision) -> list[dict]:
    """Every trainer once in `precision`, with the ratios between them (a drifting machine moves them all alike)."""
    rows = [ours(v, student, teacher, tokenizer, records, args, precision) for v in variants]
    rows += [trl(b, student, tokenizer, records, args, precision) for b in betas]
    by_name = {r["trainer"]: r for r in rows}
    trl0, grpo = by_name.get("TRL GRPOTrainer beta=0"), by_name.get("ours grpo")
    every = by_name.get("ours grpo, every row")
    if trl0 and every:  # TRL's rate: the ledger count of the same work over its seconds (it computes rows whole)
        steps = args.steps - args.warmup
        trl0.update(step_flops_total=every["step_flops_total"], step_seconds_total=trl0["s_per_step"] * steps)
        trl0["executed_share"] = 1.0
    for r in rows:
        r["x_trl_beta0"] = trl0["s_per_step"] / r["s_per_step"] if trl0 else None
        r["x_grpo_time"] = r["s_per_step"] / grpo["s_per_step"] if grpo else None
    return rows


def merge_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Each trainer's medians over the rounds, the rounds kept, and the range of each ratio."""
    rows = []
    for i, first in enumerate(rounds[0]):
        merged: dict = {
            "trainer": first["trainer"],
            "precision": first["precision"],
            "rounds": [rd[i] for rd in rounds],
        }
        for key in first:
            if key in ("trainer", "precision"):
                continue
            values = [rd[i].get(key) for rd in rounds if rd[i].get(key) is not None]
            merged[key] = statistics.median(values) if values else None
        for key in ("x_trl_beta0", "x_grpo_time"):
            values = [rd[i][key] for rd in rounds if rd[i].get(key) is not None]
            merged[key + "_range"] = (min(values), max(values)) if values else None
        rows.append(merged)
    return rows


def rates(row: dict, peak: float) -> dict:
    """GFLOP/s of each phase and of the whole step, by the ledger and as executed, and the executed rate's share of
    `peak`."""
    out = {}
    for phase in ("sample", "teacher", "update", "step"):
        seconds, flops = row.get(f"{phase}_seconds_total"), row.get(f"{phase}_flops_total")
        if seconds and flops:
            out[f"{phase}_gflops"] = flops / seconds / 1e9
            out[f"{phase}_executed_gflops"] = out[f"{phase}_gflops"] * row["executed_share"]
            out[f"{phase}_of_peak"] = out[f"{phase}_executed_gflops"] / peak
    return out


def goals(rows: list[dict], peak: float, decode_peak: float, precision: str) -> list[dict]:
    """The goals on this machine in `precision`: met or not, and which phase holds a miss back (`decode_peak`: a
    matmul at the shape decoding runs, the rows of one step by the student's MLP, the most sampling could reach)."""
    by_name = {r["trainer"]: r for r in rows if r["precision"] == precision}
    out = []

    def add(goal, measured, met, held_back):
        out.append({"precision": precision, "goal": goal, "measured": measured, "met": met, "held back by": held_back})

    every, trl0 = by_name.get("ours grpo, every row"), by_name.get("TRL GRPOTrainer beta=0")
    if every and trl0:
        speed = trl0["s_per_step"] / every["s_per_step"]
        slowest = max((phase for phase, _ in PHASES), key=lambda phase: every[f"{phase}_s"])
        met = speed >= GOALS["vs_trl"]
        add(f"ours >= {GOALS['vs_trl']:g}x TRL on equal work", f"{speed:.2f}x", met, "-" if met else slowest)
    if every:
        achieved = rates(every, peak)
        for phase, key in (("sample", "sample_peak"), ("update", "update_peak")):
            share = achieved.get(f"{phase}_of_peak")
            if share is not None:
                why = (
                    f"a matmul at decoding's shape ({grpo_rows(every)} rows at once) reaches {decode_peak:.0f} GFLOP/s "
                    f"({decode_peak / peak:.0%} of the peak); what sampling loses beyond that is per-token work "
                    "besides the matmuls: attention over the cache, the sampler, the Python loop"
                    if phase == "sample"
                    else "the vocabulary's softmax and log-probs, the optimiser step and attention, beside the matmuls"
                )
                add(
                    f"{phase} >= {GOALS[key]:.0%} of the {precision} matmul peak ({peak:.0f} GFLOP/s), executed",
                    f"{share:.0%} ({achieved[f'{phase}_executed_gflops']:.0f} GFLOP/s; ledger "
                    f"{achieved[f'{phase}_gflops']:.0f})",
                    share >= GOALS[key],
                    "-" if share >= GOALS[key] else f"{phase}: {why}",
                )
    trrd = by_name.get("ours rakd, every row")
    if trrd and every:
        ratio = trrd["s_per_step"] / every["s_per_step"]
        add(
            f"rakd step <= {GOALS['rakd_vs_grpo']:g}x a grpo step (every row)",
            f"{ratio:.2f}x (teacher {trrd['teacher_s']:.1f} s of {trrd['s_per_step']:.1f})",
            ratio <= GOALS["rakd_vs_grpo"],
            "-" if ratio <= GOALS["rakd_vs_grpo"] else "teacher scoring",
        )
    return out


def grpo_rows(row: dict) -> int:
    return int(row["completions_per_s"] * row["s_per_step"] + 0.5)


def precisions(choice: str) -> list[str]:
    """`auto`: fp32, and bf16 too where the CPU has bf16 units; else the comma list as given."""
    if choice == "auto":
        return ["fp32", "bf16"] if cpu_bf16_units() else ["fp32"]
    return [p for p in choice.split(",") if p]


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
    parser.add_argument(
        "--precision", default="fp32", help="fp32, bf16, a comma list, or auto (fp32, and bf16 where the CPU has it)"
    )
    parser.add_argument(
        "--dynamic-groups", type=int, default=0, help="also ours grpo with dynamic sampling (0: not run)"
    )
    parser.add_argument("--dynamic-draws", type=int, default=2, help="dynamic sampling: most draws per step")
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
        raise SystemExit(f"{run}/student has no model: run `make demo` (or `make smollm`) first, or pass --run")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student, tokenizer = load_causal_lm(run / "student")
    teacher, _ = load_causal_lm(run / "teacher")
    records = read_jsonl(run / "data" / "train.jsonl")
    prompts = [model_prompt(tokenizer, r["question"]) for r in records[:256]]  # asked as the sampler asks
    args.prompt_tokens = statistics.fmean(len(tokenizer(t, add_special_tokens=sp)["input_ids"]) for t, sp in prompts)
    methods = [m for m in args.methods.split(",") if m]
    betas = [float(b) for b in args.trl_betas.split(",") if b]
    variants = [Variant(m, every_row=True) for m in methods if m in ("grpo", "rakd")]  # equal work
    variants += [Variant(m) for m in methods]
    if args.dynamic_groups:
        variants.append(Variant("grpo", min_groups=args.dynamic_groups, draws=args.dynamic_draws))
    peaks, decode_peaks, rows, goal_rows = {}, {}, [], []
    config = student.config
    decode_shape = (args.prompts * args.group, config.hidden_size, config.intermediate_size)
    for precision in precisions(args.precision):
        peaks[precision] = matmul_peak(precision, args.threads)
        decode_peaks[precision] = matmul_peak(precision, args.threads, shape=decode_shape, repeats=20)
        print(
            f"[{precision}] matmul peak {peaks[precision]:.0f} GFLOP/s; at decoding's shape {decode_shape} "
            f"{decode_peaks[precision]:.0f}",
            flush=True,
        )
        rounds = [
            one_round(variants, betas, student, teacher, tokenizer, records, args, precision)
            for _ in range(args.rounds)
        ]
        merged = merge_rounds(rounds)
        for row in merged:
            row.update(rates(row, peaks[precision]))
        rows += merged
        goal_rows += goals(merged, peaks[precision], decode_peaks[precision], precision)
        print(text_table(table_rows(merged)), flush=True)
    machine = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "torch": torch.__version__,
        "precisions": list(peaks),
        "matmul_peak_gflops": peaks,
        "decode_shape": decode_shape,
        "decode_shape_matmul_gflops": decode_peaks,
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
    }
    try:
        import trl as trl_module

        machine["trl"] = trl_module.__version__
    except ImportError:
        machine["trl"] = None
    setup = {
        k: getattr(args, k)
        for k in (
            "prompts",
            "group",
            "max_new_tokens",
            "steps",
            "warmup",
            "lr",
            "run",
            "rounds",
            "dynamic_groups",
            "prompt_tokens",
        )
    }
    title = (
        f"{machine['cpu']}, {args.threads} thread(s), {args.prompts} prompts x G={args.group}, up to "
        f"{args.max_new_tokens} new tokens, median of steps {args.warmup + 1}-{args.steps}, median (range) of "
        f"{args.rounds} round(s); student {machine['student_parameters'] / 1e6:.1f}M, teacher "
        f"{machine['teacher_parameters'] / 1e6:.1f}M parameters; matmul peak "
        + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
    )
    print(title)
    print(text_table(table_rows(rows)))
    print(text_table(goal_rows))
    folder = results_dir("rl_throughput", args.out)
    out = folder / "results"
    write_meta(folder, threads=args.threads, run=args.run)
    payload = {"machine": machine, "setup": setup, "rows": rows, "goals": goal_rows}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    out.with_suffix(".md").write_text(
        f"{title}\n\n{markdown_table(table_rows(rows))}\n\nGoals\n\n{markdown_table(goal_rows)}\n"
    )
    plot(rows, title, out.with_suffix(".png"))
    print(f"wrote results.json, results.md, results.png and meta.json into {folder}/")


def table_rows(rows: list[dict]) -> list[dict]:
    def ratio(row, key):
        if row.get(key) is None:
            return "-"
        low, high = row[key + "_range"]
        return f"{row[key]:.2f}x ({low:.2f}-{high:.2f})"

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    return [
        {
            "trainer": r["trainer"],
            "precision": r["precision"],
            "s/step": fmt(r["s_per_step"], ".3f"),
            "completions/s": fmt(r["completions_per_s"], ".1f"),
            "sample s": fmt(r.get("sample_s"), ".2f"),
            "teacher s": fmt(r.get("teacher_s"), ".2f"),
            "update s": fmt(r.get("update_s"), ".2f"),
            "rows in loss": fmt(r["rows_in_loss"], ".0f"),
            "GFLOP/s executed (ledger) sample / update / step": " / ".join(
                f"{fmt(r.get(f'{p}_executed_gflops'), '.0f')} ({fmt(r.get(f'{p}_gflops'), '.0f')})"
                for p in ("sample", "update", "step")
            ),
            "speed vs TRL β=0": ratio(r, "x_trl_beta0"),
            "time vs our grpo": ratio(r, "x_grpo_time"),
        }
        for r in rows
    ]


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
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.6))
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
        ax.text(row["s_per_step"], y, f" {row['s_per_step']:.3g} s", va="center", fontsize=8)
    names = [f"{r['trainer']} [{r.get('precision', 'fp32')}]" for r in reversed(rows)]
    ax.set_yticks(range(len(rows)), names)
    ax.set_xlabel("seconds per RL step (median)")
    ax.set_xlim(0, 1.18 * max(r["s_per_step"] for r in rows))
    ax.set_title(title, fontsize=7, wrap=True)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
