"""Edge validation: accuracy and latency of every artefact on the runtime a device uses, against gates.

`validate(cfg, path, data, out)` takes a `.gguf` file, an ONNX folder, a Hugging
Face folder, a package, or a run directory (then: the PyTorch student as the
reference plus everything in `export/`). Each artefact runs in its own fresh
Python process (`rakd.isolated`), so its peak resident memory is its own and a runtime that crashes
(a corrupt file can take llama.cpp down) fails that artefact only.

Writes `report.json`, `report.md` and `accuracy_vs_latency.png` atomically.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deploy.artefacts import Artefact, discover
from deploy.config import Gates, ValidateConfig
from rakd.data.loaders import load_task_file
from rakd.io import atomic_dir, atomic_write_json, atomic_write_text, sha256_file
from rakd.isolated import ChildCrashed, ChildFailed, run_isolated
from rakd.models.llamacpp import llama_settings
from rakd.progress import Progress, is_terminal
from rakd.schema import DataError, ModelLoadError
from rakd.tables import markdown_table, num, pct
from rakd.verify import extract_answer, reward, reward_flexible

REPORT_KEYS = (
    "path",
    "format",
    "accuracy",
    "accuracy_flexible",
    "no_answer_rate",
    "ttft_ms_p50",
    "ttft_ms_p95",
    "decode_tok_s_p50",
    "latency_ms_p50",
    "latency_ms_p95",
    "peak_rss_mb",
    "size_mb",
    "passed",
    "failed_gates",
)


# ---------------------------------------------------------------- data


def load_problems(path: str | Path, limit: int) -> list[dict]:
    """Problems (question, answer) of a prepared split or any GSM8K-style/generic JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    with open(path, encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: empty data file")
    fmt = "gsm8k" if "####" in first and '"solution"' not in first else "jsonl"
    return load_task_file(path, fmt).records[:limit]


# ---------------------------------------------------------------- one artefact


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss keeps the forking parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


WEIGHT_SUFFIXES = (".gguf", ".onnx", ".onnx_data", ".safetensors")


def size_mb(path: Path) -> float:
    """Size of the model's weights: the file, or a folder's weight files (not checkpoints, logs or tokenizer)."""
    if path.is_file():
        return path.stat().st_size / 1e6
    weights = [p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return sum(p.stat().st_size for p in weights) / 1e6


def run_artefact(artefact: Artefact, problems: list[dict], cfg: ValidateConfig) -> dict:
    """Greedy-decode every problem with the artefact's runtime; accuracy, latency and memory."""
    from deploy.runtimes import open_runtime

    rss_before = _rss_mb()
    loaded = time.perf_counter()
    runtime = open_runtime(artefact.format, artefact.path, cfg.threads, cfg.seed)
    load_s = time.perf_counter() - loaded
    for problem in problems[: cfg.warmup]:
        runtime.generate(problem["question"], cfg.max_new_tokens)
    correct, flexible, no_answer, ttft, latency, decode, tokens, outputs = 0, 0, 0, [], [], [], [], []
    started = time.perf_counter()
    for i, problem in enumerate(problems):
        out = runtime.generate(problem["question"], cfg.max_new_tokens)
        score = reward(out.text, problem["answer"])
        correct += score == 1.0
        flexible += reward_flexible(out.text, problem["answer"]) == 1.0
        no_answer += extract_answer(out.text) is None
        ttft.append(1e3 * out.ttft_s)
        latency.append(1e3 * out.total_s)
        tokens.append(out.new_tokens)
        if out.decode_tok_s is not None:
            decode.append(out.decode_tok_s)
        outputs.append(
            {"question": problem["question"], "answer": problem["answer"], "output": out.text, "correct": score == 1.0}
        )
        done = i + 1
        if done % cfg.progress_every == 0 or done == len(problems):
            print(
                f"[validate] {artefact.label}: {done}/{len(problems)} accuracy {100 * correct / done:.1f}% "
                f"({time.perf_counter() - started:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
    runtime.close()
    n, peak_rss = len(problems), _peak_rss_mb()
    return {
        "accuracy": correct / n,
        "accuracy_flexible": flexible / n,  # the last number when no answer is marked; never gated
        "no_answer_rate": no_answer / n,
        "n": n,
        "ttft_ms_p50": _percentile(ttft, 50),
        "ttft_ms_p95": _percentile(ttft, 95),
        "decode_tok_s_p50": _percentile(decode, 50),
        "decode_tok_s_p95": _percentile(decode, 95),
        "latency_ms_p50": _percentile(latency, 50),
        "latency_ms_p95": _percentile(latency, 95),
        "mean_new_tokens": float(np.mean(tokens)),
        "load_s": load_s,
        "peak_rss_mb": peak_rss,
        "rss_before_load_mb": rss_before,
        "runtime_rss_mb": peak_rss - rss_before,  # what loading and running the model added
        "samples": outputs[:20],
    }


def run_artefact_spec(spec: dict) -> dict:
    """`run_artefact` from a JSON spec: what the isolated child process calls."""
    artefact = Artefact(**{**spec["artefact"], "path": Path(spec["artefact"]["path"])})
    return run_artefact(artefact, spec["problems"], ValidateConfig.model_validate(spec["config"]))


def _isolated(artefact: Artefact, problems: list[dict], cfg: ValidateConfig) -> dict:
    """`run_artefact` in a fresh process: its own imports, memory and crashes."""
    live = is_terminal(sys.stderr)  # a bar fed by the child's progress lines; else the lines themselves
    config = cfg.model_copy(update={"progress_every": 1}) if live else cfg
    spec = {
        "artefact": {**asdict(artefact), "path": str(artefact.path)},
        "problems": problems,
        "config": config.model_dump(mode="json"),
    }
    progress = Progress(f"validate {artefact.label}", len(problems), unit="problem") if live else None
    try:
        return run_isolated(
            "deploy.validate:run_artefact_spec",
            spec,
            progress_prefix="[validate]",
            what=f"{artefact.path}: the {artefact.format} runtime",
            on_progress=_progress_bar(progress) if progress else None,
        )
    except (ChildFailed, ChildCrashed) as err:
        raise ModelLoadError(str(err)) from err


_PROGRESS_LINE = re.compile(r": (\d+)/(\d+) accuracy ([\d.]+)%")


def _progress_bar(progress: Progress):
    def feed(line: str) -> None:
        if found := _PROGRESS_LINE.search(line):
            progress.update(int(found[1]) - 1, accuracy=float(found[3]))

    return feed


# ---------------------------------------------------------------- gates and report


def apply_gates(record: dict, gates: Gates, reference_accuracy: float | None) -> list[str]:
    """Names (with numbers) of the gates `record` fails; an unloadable artefact fails `loads`."""
    if record.get("error"):
        return ["loads"]
    failed = []
    if record["accuracy"] < gates.min_accuracy:
        failed.append(f"min_accuracy: {record['accuracy']:.3f} < {gates.min_accuracy:g}")
    if gates.max_accuracy_drop is not None and reference_accuracy is not None:
        drop = reference_accuracy - record["accuracy"]
        if drop > gates.max_accuracy_drop + 1e-12:
            failed.append(f"max_accuracy_drop: {drop:.3f} > {gates.max_accuracy_drop:g}")
    if gates.max_latency_ms_p95 is not None and record["latency_ms_p95"] > gates.max_latency_ms_p95:
        failed.append(f"max_latency_ms_p95: {record['latency_ms_p95']:.1f} > {gates.max_latency_ms_p95:g}")
    if gates.max_size_mb is not None and record["size_mb"] > gates.max_size_mb:
        failed.append(f"max_size_mb: {record['size_mb']:.2f} > {gates.max_size_mb:g}")
    return failed


FP32_LABELS = ("onnx-fp32", "gguf-f32")  # the labels export gives its unquantised fp32 artefacts


def reference_of(records: list[dict]) -> dict | None:
    """The fp32 reference: the PyTorch model, else an fp32 export."""
    ok = [r for r in records if not r.get("error")]
    for test in (lambda r: r["reference"], lambda r: r["label"] in FP32_LABELS):
        found = [r for r in ok if test(r)]
        if found:
            return found[0]
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """The machine a report's numbers belong to, with the kernels llama.cpp runs there."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp": llama_settings(),
    }


@dataclass(frozen=True)
class ValidateResult:
    out_dir: Path
    report: dict


def shippable(report: dict) -> list[dict]:
    """Artefacts of a report that passed their gates and could be shipped (not the PyTorch reference)."""
    return [r for r in report["artefacts"] if r["passed"] and not r["reference"]]


def validate(cfg: ValidateConfig, path: str | Path, data: str | Path, out_dir: str | Path) -> ValidateResult:
    """Validate every artefact behind `path` on `data`; write the report under `out_dir`."""
    artefacts = discover(path)
    problems = load_problems(data, cfg.n_problems)
    records = []
    for artefact in artefacts:
        record = {
            "label": artefact.label,
            "path": str(artefact.path),
            "format": artefact.format,
            "reference": artefact.reference,
            "size_mb": size_mb(artefact.path),
            "threads": cfg.threads,
        }
        print(
            f"[validate] {artefact.label} ({artefact.format}, {record['size_mb']:.2f} MB): {len(problems)} problems",
            file=sys.stderr,
            flush=True,
        )
        try:
            runner = _isolated if cfg.isolate else run_artefact
            record.update(runner(artefact, problems, cfg))
        except Exception as err:  # noqa: BLE001 - one bad artefact must not stop the others
            record["error"] = (
                str(err) if isinstance(err, (ModelLoadError, DataError)) else f"{type(err).__name__}: {err}"
            )
            print(f"[validate] {artefact.label}: FAILED to run: {record['error']}", file=sys.stderr, flush=True)
        records.append(record)
    reference = reference_of(records)
    reference_accuracy = reference["accuracy"] if reference else None
    for record in records:
        for key in REPORT_KEYS:
            record.setdefault(key, None)
        record["failed_gates"] = apply_gates(record, cfg.gates, reference_accuracy)
        record["passed"] = not record["failed_gates"]
        # a pass says nothing about answers when no gate looked at accuracy
        record["accuracy_gated"] = cfg.gates.min_accuracy > 0 or (
            cfg.gates.max_accuracy_drop is not None and reference_accuracy is not None and not record["reference"]
        )
        if reference_accuracy is not None and record["accuracy"] is not None:
            record["accuracy_drop"] = reference_accuracy - record["accuracy"]
    report = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": str(path),
        "data": {"path": str(data), "n": len(problems), "sha256": sha256_file(data)},
        "machine": machine_info(),
        "threads": cfg.threads,
        "max_new_tokens": cfg.max_new_tokens,
        "gates": cfg.gates.model_dump(),
        "reference": reference["label"] if reference else None,
        "artefacts": records,
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        atomic_write_json(staging / "report.json", report)
        atomic_write_text(staging / "report.md", format_report_md(report))
        plot_accuracy_vs_latency(report, staging / "accuracy_vs_latency.png")
    return ValidateResult(out_dir, report)


def _result(record: dict) -> str:
    if not record["passed"]:
        failed = "FAIL: " + "; ".join(record["failed_gates"])
        return failed + (f" ({record['error']})" if record.get("error") else "")
    if record.get("reference"):
        return "reference"
    return "pass" if record.get("accuracy_gated", True) else "pass (accuracy not gated: min_accuracy 0, no reference)"


def validation_rows(records: list[dict]) -> list[dict]:
    """Validation records (a report's, or a manifest's summaries) as table rows, one per artefact."""
    return [
        {
            "artefact": r["label"],
            "format": r["format"],
            "size MB": num(r["size_mb"], ".2f"),
            "accuracy": pct(r["accuracy"]),
            "flexible": pct(r.get("accuracy_flexible")),
            "drop": pct(r.get("accuracy_drop")),
            "no answer": pct(r["no_answer_rate"]),
            "TTFT p50 ms": num(r["ttft_ms_p50"], ".2f"),
            "decode tok/s p50": num(r["decode_tok_s_p50"], ".0f"),
            "latency p50 ms": num(r["latency_ms_p50"], ".1f"),
            "latency p95 ms": num(r["latency_ms_p95"], ".1f"),
            "peak RSS MB": num(r["peak_rss_mb"], ".0f"),
            "result": _result(r),
        }
        for r in records
    ]


def format_report_md(report: dict) -> str:
    machine = report["machine"]
    gates = ", ".join(f"{k}={v}" for k, v in report["gates"].items() if v is not None)
    lines = [
        "# Validation report",
        "",
        f"- source: `{report['source']}`",
        f"- data: `{report['data']['path']}` ({report['data']['n']} problems, greedy, "
        f"max {report['max_new_tokens']} new tokens)",
        f"- machine: {machine['cpu']} ({machine['cores']} cores), {report['threads']} runtime thread(s)",
        f"- llama.cpp: {machine['llama_cpp']['system_info']} (extra buffers: {machine['llama_cpp']['reason']})",
        f"- reference: {report['reference'] or 'none (drop gate not applied)'}",
        f"- gates: {gates}",
        "",
        markdown_table(validation_rows(report["artefacts"])),
        "",
        "Accuracy counts the answer the output marks (`####`, `A:`, `answer is`, `\\boxed{}`); flexible also counts "
        "the last number of an output that marks none (lm-eval's GSM8K flexible-extract), and is never gated. "
        "Peak RSS is the whole runtime process (Python, the runtime library and the model).",
        "",
    ]
    return "\n".join(lines)


def plot_accuracy_vs_latency(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["artefacts"]:
        if r["accuracy"] is None:
            continue
        ax.scatter(r["latency_ms_p50"], 100 * r["accuracy"], color="tab:green" if r["passed"] else "tab:red")
        ax.annotate(
            f"{r['label']} ({r['size_mb']:.2f} MB)",
            (r["latency_ms_p50"], 100 * r["accuracy"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xlabel(f"latency per problem, p50 (ms, {report['threads']} thread(s))")
    ax.set_ylabel("greedy accuracy (%)")
    ax.set_title(f"accuracy vs latency on {report['data']['n']} problems (green: passed gates)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
