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


def repeats_to_the_end(ids: list[int] | tuple[int, ...], min_repeats: int = 3, min_share: float = 0.25) -> bool:
    """True when `ids` ends in one n-gram repeated back to back: some period p whose copies cover the last
    max(min_repeats * p, min_share * len(ids)) tokens (`1+1=2.` over and over until the token limit)."""
    n = len(ids)
    for period in range(1, n // min_repeats + 1):
        i = n - period - 1
        while i >= 0 and ids[i] == ids[i + period]:
            i -= 1
        if n - 1 - i >= max(min_repeats * period, min_share * n):
            return True
    return False


def run_artefact(artefact: Artefact, problems: list[dict], cfg: ValidateConfig) -> dict:
    """Greedy-decode every problem with the artefact's runtime, one at a time as a device does: accuracy, length,
    truncation and loops, latency and memory. The PyTorch reference decodes in batches (it is the yardstick, not a
    device runtime: no latency)."""
    rss_before = _rss_mb()
    loaded = time.perf_counter()
    if artefact.format == "pytorch":
        generations, load_s = reference_generations(artefact, problems, cfg), None
    else:
        generations, load_s = _generate_one_by_one(artefact, problems, cfg, loaded)
    n, peak_rss = len(problems), _peak_rss_mb()
    correct = [reward(g.text, p["answer"]) == 1.0 for g, p in zip(generations, problems)]
    flexible = [reward_flexible(g.text, p["answer"]) == 1.0 for g, p in zip(generations, problems)]
    truncated = [g.end_token is None and g.new_tokens >= cfg.max_new_tokens for g in generations]
    looped = [cut and repeats_to_the_end(g.ids) for g, cut in zip(generations, truncated)]
    timed = [g for g in generations if g.total_s is not None]
    decode = [g.decode_tok_s for g in timed if g.decode_tok_s is not None]
    return {
        "accuracy": sum(correct) / n,
        "accuracy_flexible": sum(flexible) / n,  # the last number when no answer is marked; never gated
        "no_answer_rate": sum(extract_answer(g.text) is None for g in generations) / n,
        "n": n,
        "ttft_ms_p50": _percentile([1e3 * g.ttft_s for g in timed], 50),
        "ttft_ms_p95": _percentile([1e3 * g.ttft_s for g in timed], 95),
        "decode_tok_s_p50": _percentile(decode, 50),
        "decode_tok_s_p95": _percentile(decode, 95),
        "latency_ms_p50": _percentile([1e3 * g.total_s for g in timed], 50),
        "latency_ms_p95": _percentile([1e3 * g.total_s for g in timed], 95),
        "mean_new_tokens": float(np.mean([g.new_tokens for g in generations])),
        "truncation_rate": sum(truncated) / n,
        "loop_rate": sum(looped) / n,
        "load_s": load_s,
        "peak_rss_mb": peak_rss,
        "rss_before_load_mb": rss_before,
        "runtime_rss_mb": peak_rss - rss_before,  # what loading and running the model added
        "per_problem": {"correct": correct, "new_tokens": [g.new_tokens for g in generations], "loop": looped},
        # (token ids, prompt length) of each problem, for the token agreement (deploy.agreement); not in the report
        "sequences": [[g.sequence, len(g.prompt_ids)] for g in generations],
        "samples": [
            {"question": p["question"], "answer": p["answer"], "output": g.text, "correct": c}
            for g, p, c in zip(generations[:20], problems, correct)
        ],
    }


def _generate_one_by_one(artefact: Artefact, problems: list[dict], cfg: ValidateConfig, loaded: float):
    from deploy.runtimes import open_runtime

    runtime = open_runtime(artefact.format, artefact.path, cfg.threads, cfg.seed)
    load_s = time.perf_counter() - loaded
    for problem in problems[: cfg.warmup]:
        runtime.generate(problem["question"], cfg.max_new_tokens)
    generations, correct, started = [], 0, time.perf_counter()
    for i, problem in enumerate(problems):
        generations.append(runtime.generate(problem["question"], cfg.max_new_tokens))
        correct += reward(generations[-1].text, problem["answer"]) == 1.0
        _report_progress(artefact.label, i + 1, len(problems), correct, started, cfg.progress_every)
    runtime.close()
    return generations, load_s


def _report_progress(label: str, done: int, total: int, correct: int, started: float, every: int) -> None:
    if done % every == 0 or done == total:
        print(
            f"[validate] {label}: {done}/{total} accuracy {100 * correct / done:.1f}% "
            f"({time.perf_counter() - started:.0f}s)",
            file=sys.stderr,
            flush=True,
        )


def reference_generations(artefact: Artefact, problems: list[dict], cfg: ValidateConfig):
    """The PyTorch model's greedy completions of every problem, `cfg.reference_batch` at a time, as `Generation`s
    without timings."""
    import torch

    from deploy.runtimes import Generation
    from rakd.models.load import load_causal_lm
    from rakd.rollout import sample

    torch.set_num_threads(cfg.threads)
    model, tokenizer = load_causal_lm(artefact.path)
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    generations, correct, started = [], 0, time.perf_counter()
    for start in range(0, len(problems), cfg.reference_batch):
        chunk = problems[start : start + cfg.reference_batch]
        batch = sample(
            model, tokenizer, [p["question"] for p in chunk], max_new_tokens=cfg.max_new_tokens, temperature=0.0
        )
        for row, problem in enumerate(chunk):
            prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist()
            new = batch.completion_ids[row][batch.completion_mask[row].bool()].tolist()
            end = new.pop() if new and new[-1] in ends else None
            text = tokenizer.decode(new, skip_special_tokens=True)
            generations.append(Generation(text, len(new), None, None, tuple(prompt), tuple(new), end))
            correct += reward(text, problem["answer"]) == 1.0
        _report_progress(artefact.label, len(generations), len(problems), correct, started, 1)
    return generations


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
