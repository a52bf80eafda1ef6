"""Data-parallel training across processes started by `torchrun` (gloo on CPU, NCCL on CUDA).

What DDP does, written out because the loss weighting needs the global batch anyway: every rank computes the
gradient of its share of the loss, weighted by its share of the global batch (rows for `seq_mean`, tokens for
`token_mean`), and the gradients are summed across ranks before clipping and the optimiser step. Every rank then
takes the same optimiser step, so the weights stay identical without being broadcast; rank 0 alone writes
checkpoints, metrics and outputs.

With `distill.fsdp` the student is sharded instead (torch's FSDP2, `fully_shard` on each decoder layer and the
root): each rank holds 1/N of its weights, gradients and optimiser state. The loss weighting stays the same (FSDP
averages the gradients it reduce-scatters, so the weights are scaled by N to sum them, as gloo has no pre-scaled
sum); rollouts and evaluation run on the gathered weights (`full_weights`, where forward passes are local and
ranks may run different numbers of them); checkpoints and the final student are gathered to rank 0.

Outside torchrun (no WORLD_SIZE, or 1) every helper is a no-op: one process is world size 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
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

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over ranks (float64, on the CPU); `tensor` itself in a world of one."""
        if not self.active:
            return tensor
        summed = tensor.to(dtype=torch.float64, device=_device())
        dist.all_reduce(summed)
        return summed.cpu()

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

    def grad_scale(self, model: torch.nn.Module) -> float:
        """What a loss weighted by `fraction` is multiplied by so that the gradients are summed across ranks:
        the world size for a sharded model (FSDP averages), 1 otherwise (`sum_gradients` sums)."""
        return float(self.size) if is_sharded(model) else 1.0

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient across ranks (one flat all-reduce); a sharded model's gradients were
        reduced by FSDP in its backward pass already."""
        if not self.active or is_sharded(model):
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


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """`model` sharded across the ranks in place (FSDP2: each decoder layer, then the root)."""
    from torch.distributed.fsdp import fully_shard

    if not world.active:
        raise ValueError("distill.fsdp: sharding needs more than one process (set distill.nproc > 1)")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"distill.fsdp: no decoder layers at model.model.layers in {type(model).__name__}")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp_modules(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """A sharded model's weights gathered on every rank for the block (a collective: every rank enters), kept
    gathered through its forward passes, which are then local: sampling and evaluation may run a different
    number of them on each rank. Nothing for a plain model."""
    modules = _fsdp_modules(model)
    for module in modules:
        module.unshard()
        module.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(True)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state on the CPU: a sharded model's gathered to rank 0 (a collective; other ranks get
    an empty dict), a plain model's own."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state (every rank passes it) into a plain or sharded model."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True))


def optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimiser's state to checkpoint: a sharded model's gathered to rank 0 by parameter name."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    if not is_sharded(model):
        kernels = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, (fused, foreach) in zip(optimizer.param_groups, kernels):  # the kernel is this run's choice,
            group["fused"], group["foreach"] = fused, foreach  # not the one of the run that wrote the state
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def plain_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """A sharded model as an ordinary one on rank 0 (a collective; None on the other ranks), to evaluate and
    save; a plain model itself."""
    if not is_sharded(model):
        return model
    state = full_state_dict(model)
    if not state:
        return None
    original = type(model).__bases__[-1]  # FSDP2 subclasses the model's class as (FSDPModule, cls)
    copy = original(model.config)
    copy.load_state_dict(state)
    copy.generation_config = model.generation_config
    return copy.to(next(model.parameters()).device).eval()


def clip_gradients(model: torch.nn.Module, max_norm: float) -> float:
    """`clip_grad_norm_` over every parameter; the total norm as a float (a sharded model's is a DTensor)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


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


def leave_world() -> None:
    """Destroy the process group before a torchrun worker exits. A worker that exited with it alive (rank 1 leaves
    as soon as RL ends, while rank 0 evaluates and saves) sometimes died in gloo's teardown at interpreter exit
    ("terminate called without an active exception", SIGABRT), failing a stage that had finished."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
