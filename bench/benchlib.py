"""What every benchmark shares: one results folder per run with its `meta.json`, the machine, and timing.

A run writes into `bench/results/<bench>-<date>/` (or `--out`): its numbers (JSON, Markdown, PNG) and
`meta.json` with the commit (`-dirty` when the work tree had changes), the rakd version, the date, the command
and the machine, so every figure says where it came from.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    from deploy.measure import cpu_model as model

    return model()


def machine(device: str = "cpu") -> str:
    """`<CPU model>, N cores`, or the GPU's name on a CUDA device."""
    if str(device).startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)} (host: {cpu_model()}, {os.cpu_count()} cores)"
    return f"{cpu_model()}, {os.cpu_count()} cores"


def timed(fn: Callable[[], object], repeats: int = 3, sync: Callable[[], None] | None = None) -> float:
    """The best wall time of `repeats` calls of `fn` in seconds (`sync` waits for an accelerator first)."""
    best = float("inf")
    for _ in range(repeats):
        if sync:
            sync()
        started = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak(
    precision: str = "fp32",
    threads: int | None = None,
    shape: tuple[int, int, int] = (2048, 2048, 2048),
    repeats: int = 5,
) -> float:
    """GFLOP/s of the best of `repeats` (m x k) @ (k x n) matmuls on the CPU in `precision` (fp32, or bf16 under the
    autocast the trainers use, its casts included): the peak the benches hold achieved rates against, or with a
    phase's own shape (decoding: m = the rows decoded together) the ceiling of that phase's matmuls."""
    import torch

    from rakd.train.common import autocast

    if threads:
        torch.set_num_threads(threads)
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    with autocast(torch.device("cpu"), precision):
        seconds = timed(lambda: a @ b, repeats=repeats)
    return 2 * m * k * n / seconds / 1e9


def commit() -> str:
    """HEAD's commit, with `-dirty` when tracked files other than benchmark results differ from it (a bench that keeps
    several results folders rewrites some before it names the code in the next); "unknown" outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    head = git("rev-parse", "HEAD")
    if not head:
        return "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    return head + ("-dirty" if changed else "")


def results_dir(name: str, out: str | Path | None = None) -> Path:
    """The folder of this run's results: `out`, else `bench/results/<name>-<today>`; created."""
    folder = Path(out) if out is not None else RESULTS / f"{name}-{datetime.date.today()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_meta(folder: Path, device: str = "cpu", **extra) -> dict:
    """`folder/meta.json`: commit, rakd version, date, command, machine, plus `extra`; returns it."""
    import rakd

    meta = {
        "commit": commit(),
        "rakd_version": rakd.__version__,
        "date": str(datetime.date.today()),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine(device),
        **extra,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta
