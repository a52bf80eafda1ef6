"""Data-parallel training across processes started by `torchrun` (gloo on CPU, NCCL on CUDA).

What DDP does, written out because the loss weighting needs the global batch anyway: every rank computes the
gradient of its share of the loss, weighted by its share of the global batch (rows for `seq_mean`, tokens for
`token_mean`), and the gradients are summed across ranks before clipping and the optimiser step. Every rank then
takes the same optimiser step, so the weights stay identical without being broadcast; rank 0 alone writes
checkpoints, metrics and outputs.

Outside torchrun (no WORLD_SIZE, or 1) every helper is a no-op: one process is world size 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def share(self, items: list) -> list:
        """This rank's slice of a list every rank holds in the same order."""
        return items[self.rank :: self.size] if self.active else items

    def sum(self, value: float) -> float:
        return self._reduce(value, "SUM")

    def max(self, value: float) -> float:
        return self._reduce(value, "MAX")

    def fraction(self, units: float) -> float:
        """This rank's share of a global batch measured in `units` (rows or tokens): the weight of its loss, so
        that the summed gradients are those of the whole batch. 1 in a world of one."""
        return units / max(self.sum(units), 1e-12) if self.active else 1.0

    def _reduce(self, value: float, op: str) -> float:
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=_device())
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
        return float(tensor.item())

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient across ranks (one flat all-reduce)."""
        if not self.active:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def world_from_env() -> World:
    """The process group torchrun describes in the environment (initialised once), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("RAKD_DIST_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size())


def launch_torchrun(stage: str, module: str, cfg, spec: Path, run_dir: Path, nproc: int, threads: int, log) -> None:
    """Run a stage's worker (`python -m MODULE SPEC RUN_DIR`) in `nproc` processes under torchrun on this machine
    (`--standalone`; one GPU each on CUDA): `cfg` (a pydantic model) is written to `spec` for the workers to read.
    A failed worker is a `RuntimeError` naming the stage."""
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps(cfg.model_dump(mode="json")))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", module, str(spec), str(run_dir),
    ]  # fmt: skip
    log(f"[{stage}] {nproc} processes: {' '.join(command)}")
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(max(1, threads))})
    if done.returncode:
        raise RuntimeError(f"{stage} under torchrun ({nproc} processes) exited with {done.returncode}")
