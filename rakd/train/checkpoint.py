"""Training checkpoints: `step-N/` folders written atomically, resumed from the latest.

Model weights are safetensors; optimiser, scheduler and RNG states are plain
tensors and numbers, read back with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rakd.io import atomic_dir
from rakd.train.distributed import (
    World,
    full_state_dict,
    is_sharded,
    load_full_state_dict,
    load_optimizer_state,
    optimizer_state,
)

_STEP = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    folder: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    keep: int = 2,
    world: World | None = None,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path | None:
    """Write `folder/step-<step>/` atomically and keep only the newest `keep` checkpoints. Every rank calls it
    (a sharded model's state is gathered first); rank 0 alone writes. `extra`: more tensors a trainer keeps, each
    name as `<name>.safetensors` in the checkpoint."""
    world = world or World()
    if not world.main and not is_sharded(model):
        return None
    # clone: tied weights share storage, which safetensors refuses to write twice
    state = {k: v.detach().cpu().clone().contiguous() for k, v in full_state_dict(model).items()}
    optim = optimizer_state(model, optimizer)
    if not world.main:
        return None
    target = Path(folder) / f"step-{step}"
    with atomic_dir(target) as staging:
        save_file(state, staging / "model.safetensors")
        torch.save(
            {
                "optimizer": optim,
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "sharded": is_sharded(model),
            },
            staging / "trainer_state.pt",
        )
        for name, tensors in (extra or {}).items():
            if tensors:
                save_file(tensors, staging / f"{name}.safetensors")
        (staging / "step.json").write_text(json.dumps({"step": step}) + "\n")
    for old in list_checkpoints(folder)[:-keep]:
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first (staging folders never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and (p / "step.json").is_file()
    ]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    """Restore states from checkpoint `path`; returns the step it was taken after. Every rank reads the files
    (a sharded model takes its shard of them)."""
    path = Path(path)
    state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    if bool(state.get("sharded", False)) != is_sharded(model):
        raise ValueError(
            f"{path}: written {'with' if state.get('sharded') else 'without'} distill.fsdp, resumed "
            f"{'with' if is_sharded(model) else 'without'} it; resume with the setting the run was started with"
        )
    weights = load_file(path / "model.safetensors", device="cpu" if is_sharded(model) else _device_of(model))
    load_full_state_dict(model, weights)
    load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(json.loads((path / "step.json").read_text())["step"])


def _device_of(model) -> str:
    return str(next(model.parameters()).device)


class CheckpointedTrainer:
    """What every trainer shares: `out_dir/checkpoints/step-N/`, `out_dir/metrics.jsonl`, and resume from the newest
    checkpoint (the metrics log is cut back to it). Subclasses set model, optimizer, scheduler, log and out_dir."""

    model: torch.nn.Module
    out_dir: Path
    start_step: int = 0
    world: World = World()  # under torchrun every rank holds the same weights: rank 0 alone writes them

    def resume(self) -> int:
        checkpoints = list_checkpoints(self.out_dir / "checkpoints")
        if checkpoints:
            self.start_step = load_checkpoint(checkpoints[-1], self.model, self.optimizer, self.scheduler)
            self.restore_extra(checkpoints[-1])
        if self.world.main:  # rank 0 writes the log; rows past the checkpoint (all, without one) are redone
            self.log.truncate_after(self.start_step)
        return self.start_step

    def save(self, step: int) -> None:
        save_checkpoint(
            self.out_dir / "checkpoints",
            step,
            self.model,
            self.optimizer,
            self.scheduler,
            world=self.world,
            extra=self.checkpoint_extra(),
        )

    def checkpoint_extra(self) -> dict[str, dict[str, torch.Tensor]]:
        """More tensors to keep in each checkpoint (`save_checkpoint`'s `extra`); none by default."""
        return {}

    def restore_extra(self, checkpoint: Path) -> None:
        """Read back what `checkpoint_extra` kept, from the checkpoint folder being resumed."""
