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
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from rakd.data.loaders import DataError, load_task_file
from rakd.io import atomic_dir, atomic_write_json, atomic_write_text, sha256_file
from rakd.isolated import ChildCrashed, ChildFailed, run_isolated
from rakd.models.llamacpp import llama_settings
from rakd.schema import ModelLoadError, StageConfig
from rakd.verify import extract_answer, reward

REPORT_KEYS = ("path", "format", "accuracy", "no_answer_rate", "ttft_ms_p50", "ttft_ms_p95", "decode_tok_s_p50",
               "latency_ms_p50", "latency_ms_p95", "peak_rss_mb", "size_mb", "passed", "failed_gates")


class Gates(StageConfig):
    min_accuracy: float = Field(0.0, ge=0, le=1)
    max_accuracy_drop: float | None = Field(0.05, ge=0, description="absolute drop vs the fp32 reference")
    max_latency_ms_p95: float | None = Field(None, gt=0)
    max_size_mb: float | None = Field(None, gt=0)


class ValidateConfig(StageConfig):
    n_problems: int = Field(500, ge=1, description="first N problems of the data file")
    max_new_tokens: int = Field(64, ge=1)
    threads: int = Field(1, ge=1, description="runtime threads, as on the device")
    warmup: int = Field(1, ge=0, description="untimed problems first (loads caches, JIT)")
    seed: int = 0
    isolate: bool = Field(True, description="one spawned process per artefact (own peak RSS, crash isolation)")
    gates: Gates = Field(default_factory=Gates)
    progress_every: int = Field(50, ge=1)


@dataclass(frozen=True)
class Artefact:
    label: str
    format: Literal["gguf", "onnx", "pytorch"]
    path: Path
    reference: bool = False


# ---------------------------------------------------------------- discovery


def is_run_dir(path: Path) -> bool:
    """A pipeline run directory: it brings a student and/or exports, its test split and a validate/ folder."""
    return path.is_dir() and ((path / "export").is_dir() or (path / "student").is_dir())


def _folder_format(path: Path) -> str | None:
    if any(path.glob("*.onnx")):
        return "onnx"
    if (path / "config.json").is_file():
        return "pytorch"
    return None


def discover(path: str | Path) -> list[Artefact]:
    """The artefacts behind `path` (a model file/folder, a package, or a run directory)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: not a model: expected a .gguf file or a model folder")
        return [Artefact(f"gguf-{_short(path.stem)}", "gguf", path)]
    if (path / "manifest.json").is_file():
        from deploy.package import package_artefacts

        return package_artefacts(path)
    if is_run_dir(path):
        return _run_artefacts(path)
    fmt = _folder_format(path)
    if fmt is None:
        raise ModelLoadError(f"{path}: not a model: no .onnx file, no config.json, no manifest.json, no export/")
    return [Artefact(f"{fmt}-{path.name}" if fmt == "pytorch" else path.name, fmt, path, reference=fmt == "pytorch")]


def _short(stem: str) -> str:
    return stem[len("model-"):] if stem.startswith("model-") else stem


def _run_artefacts(run_dir: Path) -> list[Artefact]:
    found = []
    if (run_dir / "student" / "config.json").is_file():
        found.append(Artefact("pytorch", "pytorch", run_dir / "student", reference=True))
    export = run_dir / "export"
    if export.is_dir():
        for item in sorted(export.iterdir()):
            if item.is_dir() and any(item.glob("*.onnx")):
                found.append(Artefact(item.name, "onnx", item))
            elif item.suffix == ".gguf":
                found.append(Artefact(f"gguf-{_short(item.stem)}", "gguf", item))
    if not found:
        raise ModelLoadError(f"{run_dir}: run directory without student/ or exported artefacts in export/")
    return found


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
    correct, no_answer, ttft, latency, decode, tokens, outputs = 0, 0, [], [], [], [], []
    started = time.perf_counter()
    for i, problem in enumerate(problems):
        out = runtime.generate(problem["question"], cfg.max_new_tokens)
        score = reward(out.text, problem["answer"])
        correct += score == 1.0
        no_answer += extract_answer(out.text) is None
        ttft.append(1e3 * out.ttft_s)
        latency.append(1e3 * out.total_s)
        tokens.append(out.new_tokens)
        if out.decode_tok_s is not None:
            decode.append(out.decode_tok_s)
        outputs.append({"question": problem["question"], "answer": problem["answer"], "output": out.text,
                        "correct": score == 1.0})
        done = i + 1
        if done % cfg.progress_every == 0 or done == len(problems):
            print(f"[validate] {artefact.label}: {done}/{len(problems)} accuracy {100 * correct / done:.1f}% "
                  f"({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    runtime.close()
    n, peak_rss = len(problems), _peak_rss_mb()
    return {
        "accuracy": correct / n, "no_answer_rate": no_answer / n, "n": n,
        "ttft_ms_p50": _percentile(ttft, 50), "ttft_ms_p95": _percentile(ttft, 95),
        "decode_tok_s_p50": _percentile(decode, 50), "decode_tok_s_p95": _percentile(decode, 95),
        "latency_ms_p50": _percentile(latency, 50), "latency_ms_p95": _percentile(latency, 95),
        "mean_new_tokens": float(np.mean(tokens)), "load_s": load_s,
        "peak_rss_mb": peak_rss, "rss_before_load_mb": rss_before,
        "runtime_rss_mb": peak_rss - rss_before,  # what loading and running the model added
        "samples": outputs[:20],
    }


def run_artefact_spec(spec: dict) -> dict:
    """`run_artefact` from a JSON spec: what the isolated child process calls."""
    artefact = Artefact(**{**spec["artefact"], "path": Path(spec["artefact"]["path"])})
    return run_artefact(artefact, spec["problems"], ValidateConfig.model_validate(spec["config"]))


def _isolated(artefact: Artefact, problems: list[dict], cfg: ValidateConfig) -> dict:
    """`run_artefact` in a fresh process: its own imports, memory and crashes."""
    spec = {"artefact": {**asdict(artefact), "path": str(artefact.path)}, "problems": problems,
            "config": cfg.model_dump(mode="json")}
    try:
        return run_isolated("deploy.validate:run_artefact_spec", spec, progress_prefix="[validate]",
                            what=f"{artefact.path}: the {artefact.format} runtime")
    except (ChildFailed, ChildCrashed) as err:
        raise ModelLoadError(str(err)) from err


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


def reference_of(records: list[dict]) -> dict | None:
    """The fp32 reference: the PyTorch model, else an fp32 export."""
    ok = [r for r in records if not r.get("error")]
    for test in (lambda r: r["reference"], lambda r: r["label"] in ("onnx-fp32", "gguf-f32")):
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
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "llama_cpp": llama_settings()}


@dataclass(frozen=True)
class ValidateResult:
    out_dir: Path
    report: dict

    @property
    def passed(self) -> list[dict]:
        return [r for r in self.report["artefacts"] if r["passed"]]


def shippable(report: dict) -> list[dict]:
    """Artefacts of a report that passed their gates and could be shipped (not the PyTorch reference)."""
    return [r for r in report["artefacts"] if r["passed"] and not r["reference"]]


def validate(cfg: ValidateConfig, path: str | Path, data: str | Path, out_dir: str | Path) -> ValidateResult:
    """Validate every artefact behind `path` on `data`; write the report under `out_dir`."""
    artefacts = discover(path)
    problems = load_problems(data, cfg.n_problems)
    records = []
    for artefact in artefacts:
        record = {"label": artefact.label, "path": str(artefact.path), "format": artefact.format,
                  "reference": artefact.reference, "size_mb": size_mb(artefact.path), "threads": cfg.threads}
        print(f"[validate] {artefact.label} ({artefact.format}, {record['size_mb']:.2f} MB): "
              f"{len(problems)} problems", file=sys.stderr, flush=True)
        try:
            runner = _isolated if cfg.isolate else run_artefact
            record.update(runner(artefact, problems, cfg))
        except Exception as err:  # noqa: BLE001 - one bad artefact must not stop the others
            record["error"] = str(err) if isinstance(err, (ModelLoadError, DataError)) else f"{type(err).__name__}: {err}"
            print(f"[validate] {artefact.label}: FAILED to run: {record['error']}", file=sys.stderr, flush=True)
        records.append(record)
    reference = reference_of(records)
    reference_accuracy = reference["accuracy"] if reference else None
    for record in records:
        for key in REPORT_KEYS:
            record.setdefault(key, None)
        record["failed_gates"] = apply_gates(record, cfg.gates, reference_accuracy)
        record["passed"] = not record["failed_gates"]
        if reference_accuracy is not None and record["accuracy"] is not None:
            record["accuracy_drop"] = reference_accuracy - record["accuracy"]
    report = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(path),
        "data": {"path": str(data), "n": len(problems), "sha256": sha256_file(data)},
        "machine": machine_info(),
        "threads": cfg.threads, "max_new_tokens": cfg.max_new_tokens,
        "gates": cfg.gates.model_dump(), "reference": reference["label"] if reference else None,
        "artefacts": records,
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        atomic_write_json(staging / "report.json", report)
        atomic_write_text(staging / "report.md", format_report_md(report))
        plot_accuracy_vs_latency(report, staging / "accuracy_vs_latency.png")
    return ValidateResult(out_dir, report)


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(report: dict) -> str:
    lines = [f"{'artefact':<18} {'size MB':>8} {'acc':>6} {'no-ans':>6} {'TTFT p50':>9} {'tok/s p50':>9} "
             f"{'lat p50':>8} {'lat p95':>8} {'RSS MB':>7}  status"]
    for r in report["artefacts"]:
        accuracy = None if r["accuracy"] is None else 100 * r["accuracy"]
        no_answer = None if r["no_answer_rate"] is None else 100 * r["no_answer_rate"]
        status = "ref" if r["reference"] and r["passed"] else "pass" if r["passed"] else "FAIL " + "; ".join(r["failed_gates"])
        lines.append(f"{r['label']:<18} {r['size_mb']:8.2f} {_fmt(accuracy, '5.1f'):>5}% {_fmt(no_answer, '5.1f'):>5}% "
                     f"{_fmt(r['ttft_ms_p50'], '7.2f'):>7}ms {_fmt(r['decode_tok_s_p50'], '9.0f'):>9} "
                     f"{_fmt(r['latency_ms_p50'], '6.1f'):>6}ms {_fmt(r['latency_ms_p95'], '6.1f'):>6}ms "
                     f"{_fmt(r['peak_rss_mb'], '7.0f'):>7}  {status}")
    return "\n".join(lines)


def format_report_md(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Validation report", "",
        f"- source: `{report['source']}`",
        f"- data: `{report['data']['path']}` ({report['data']['n']} problems, greedy, max {report['max_new_tokens']} new tokens)",
        f"- machine: {machine['cpu']} ({machine['cores']} cores), {report['threads']} runtime thread(s)",
        f"- reference: {report['reference'] or 'none (drop gate not applied)'}",
        f"- gates: " + ", ".join(f"{k}={v}" for k, v in report["gates"].items() if v is not None), "",
        "| artefact | format | size MB | accuracy | no answer | TTFT p50 ms | TTFT p95 ms | decode tok/s p50 "
        "| latency p50 ms | latency p95 ms | peak RSS MB | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["artefacts"]:
        result = "pass" if r["passed"] else "FAIL: " + "; ".join(r["failed_gates"])
        if r.get("error"):
            result += f" ({r['error']})"
        accuracy = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        no_answer = "-" if r["no_answer_rate"] is None else f"{100 * r['no_answer_rate']:.1f}%"
        lines.append(f"| {r['label']} | {r['format']} | {r['size_mb']:.2f} | {accuracy} | {no_answer} "
                     f"| {_fmt(r['ttft_ms_p50'], '.2f')} | {_fmt(r['ttft_ms_p95'], '.2f')} | {_fmt(r['decode_tok_s_p50'], '.0f')} "
                     f"| {_fmt(r['latency_ms_p50'], '.1f')} | {_fmt(r['latency_ms_p95'], '.1f')} "
                     f"| {_fmt(r['peak_rss_mb'], '.0f')} | {result} |")
    lines += ["", "Peak RSS is the whole runtime process (Python, the runtime library and the model).", ""]
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
        ax.annotate(f"{r['label']} ({r['size_mb']:.2f} MB)", (r["latency_ms_p50"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"latency per problem, p50 (ms, {report['threads']} thread(s))")
    ax.set_ylabel("greedy accuracy (%)")
    ax.set_title(f"accuracy vs latency on {report['data']['n']} problems (green: passed gates)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

