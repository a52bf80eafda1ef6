"""What the isolated validation child imports: one artefact run on its runtime, problem by problem, measured
(accuracy, time to first token, decode tokens/s, latency, peak memory, size), and the machine it ran on."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from deploy.artefacts import Artefact
from deploy.config import ValidateConfig
from rakd.models.llamacpp import llama_settings
from rakd.verify import extract_answer, reward, reward_flexible


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
