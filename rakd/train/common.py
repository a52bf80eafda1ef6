"""What every trainer shares: optimiser and schedule, device and precision, logs and progress."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from rakd.train.config import OptimConfig


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # e.g. a copy of a frozen teacher: say so, not torch's "empty parameter list"
        raise ValueError(f"{type(model).__name__}: no trainable parameters (every one has requires_grad=False)")
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fuses_adamw(params) or None
    )


FUSED_ADAMW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fuses_adamw(params: list[torch.Tensor]) -> bool:
    """Whether AdamW takes torch's fused kernel for `params`: plain (unsharded) floating tensors on a CPU or a
    CUDA device. On a CPU torch's default is a Python loop over the tensors, several times slower (81M
    parameters: 0.31 s a step against 0.085 fused on 2 cores); sharded (DTensor) parameters keep the default."""
    from torch.distributed.tensor import DTensor

    return all(
        not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") and p.dtype in FUSED_ADAMW_DTYPES
        for p in params
    )


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up to 1, then cosine decay to `min_lr_ratio` (or constant)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total: int, cfg: OptimConfig, scale: Callable[[int], float] | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of `cfg` over `total` steps; `scale(step)`, where given, multiplies it (read at every step, so
    it may change while training: a decay begun at a plateau)."""
    if scale is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, cfg))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, cfg) * scale(step))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_bf16_units(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 matrix units (the AMX-BF16 flag in /proc/cpuinfo): there bf16 matmuls under
    autocast ran 5.4x fp32's (2217 against 412 GFLOP/s, 2-core Intel Xeon). AVX512_BF16 alone is not enough: on a
    2-core Intel Xeon with it and without AMX, bf16 autocast ran matmuls at 0.5x fp32 (152 against 269-322
    GFLOP/s) and an SFT step of a 15-layer SmolLM2 1.7x slower; elsewhere bf16 is emulated and slower too."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no way to tell, take fp32
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags


def resolve_precision(setting: str, device: torch.device, cpuinfo: str | None = None) -> str:
    """`fp32` or `bf16` for a `precision` setting: `auto` is bf16 on CUDA and on a CPU with bf16 units, else fp32."""
    if setting != "auto":
        return setting
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16_units(cpuinfo)):
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str = "fp32"):
    """bf16 autocast for precision `bf16` (weights and optimiser state stay fp32; matmuls run in bf16), nothing
    for `fp32`. `precision` is a resolved one (`resolve_precision`)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision {precision!r}: expected fp32 or bf16 (resolve 'auto' first)")
    return contextlib.nullcontext()


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A per-step seed derived from the run seed, so a resumed run samples what an unbroken one would."""
    return (seed * 1_000_003 + step * 7919 + salt) % (2**31)


class MetricsLog:
    """Append-only JSONL of per-step metrics; truncated back to `step` on resume."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        rows = self.rows()
        kept = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows if r.get("step", 0) <= step)
        self.path.write_text(kept)
