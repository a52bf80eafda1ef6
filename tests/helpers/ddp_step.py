"""One RL-trainer step in every process torchrun starts (or in one plain process), for tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/helpers/ddp_step.py MODEL TRACES OUT METHODS

For each method of the comma list METHODS, one step from the same initial student; writes
OUT/METHOD-rank-R.safetensors: the weights after the step and the summed gradients of that step (and the step's
metrics row as OUT/METHOD-rank-R.json). A method written METHOD+fsdp shards the student first (FSDP2); its weights
and gradients are gathered to rank 0, which alone writes them. `grpo-fixed` is a grpo step on a fixed global batch
(16 traces as 4 groups of 4, shared out by group) cut into minibatches of 4 rows: several optimiser steps, π_old
from a pass of its own, and the same step in any number of processes.
"""

import json
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

import rakd.train.collect as collect
from rakd.models.load import load_causal_lm
from rakd.train.collect import Collected, shared_positions
from rakd.train.common import OptimConfig
from rakd.train.config import LossParams, RLConfig
from rakd.train.distributed import World, full_state_dict, is_sharded, shard, world_from_env
from rakd.train.rl import RLTrainer
from rakd.train.sft import SFTConfig, SFTTrainer


def coin(text: str, answer: str) -> float:
    """A reward that is deterministic but mixed within groups (the random model never answers right)."""
    return float(zlib.crc32(text.encode()) % 2)


def main(model_dir: str, traces_path: str, out: str, methods: str) -> None:
    real, collect.reward = collect.reward, coin  # restored: a test may call main() in its own process
    try:
        for method in methods.split(","):
            one_step(model_dir, traces_path, out, method)
    finally:
        collect.reward = real


def one_step(model_dir: str, traces_path: str, out: str, method: str) -> None:
    torch.set_num_threads(1)
    world = world_from_env()
    student, tokenizer = load_causal_lm(model_dir)
    label, method = method, method.removesuffix("+fsdp")
    fixed = method == "grpo-fixed"
    method = "grpo" if fixed else method
    if label.endswith("+fsdp"):
        student = shard(student, world)
    traces = json.loads(Path(traces_path).read_text())
    records = [{"question": t["question"], "answer": t["answer"]} for t in traces]
    cfg = RLConfig(
        steps=1,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=8,
        min_informative_groups=0,
        minibatch_size=4 if fixed else 1024,
        prompts="all",
        optim=OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant"),
    )
    grads = {}

    class Recording(World):
        def sum_gradients(self, model):
            super().sum_gradients(model)
            full = {n: p.grad.full_tensor() if is_sharded(model) else p.grad for n, p in model.named_parameters()}
            grads.update({f"grad.{n}": g.detach().clone() for n, g in full.items()})

    if method == "warmstart":  # the SFT trainer of the warm start, one step on 16 traces
        pairs = [(t["question"], t["completion"]) for t in traces]
        sft_cfg = SFTConfig(steps=1, batch_size=16, optim=OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant"))
        trainer = SFTTrainer(
            student, tokenizer, pairs, sft_cfg, Path(out) / f"work-sft-{world.rank}", seed=0, name="warmstart",
            world=Recording(world.rank, world.size),
        )  # fmt: skip
        trainer.step(0)
        save(student, grads, out, label, world.rank)
        return
    trainer = (FixedBatchTrainer if fixed else RLTrainer)(
        student,
        student,
        tokenizer,
        records,
        traces,
        method,
        LossParams(),
        cfg,
        Path(out) / f"work-{method}-{world.rank}",
        seed=0,
        world=Recording(world.rank, world.size),
    )
    row = trainer.step(0)
    save(student, grads, out, label, world.rank)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{label}-rank-{world.rank}.json").write_text(json.dumps(row))


class FixedBatchTrainer(RLTrainer):
    """grpo on 16 of the traces as 4 groups of 4 rows, each rank taking every other group: the global batch of a
    step is the same in one process and in two."""

    def collect(self, step: int) -> Collected:
        from rakd.train.batches import pack_pairs

        groups = self.world.share([self.traces[4 * g : 4 * g + 4] for g in range(4)])
        picked = [t for group in groups for t in group]
        batch = pack_pairs(self.tokenizer, [(t["question"], t["completion"]) for t in picked])
        rewards = torch.tensor([collect.reward(text, t["answer"]) for text, t in zip(batch.texts, picked)])
        return Collected(batch, rewards, {"reward_mean": 0.0}, shared_positions(self.world, len(groups), 4))


def save(student, grads: dict, out: str, method: str, rank: int) -> None:
    state = {f"weight.{k}": v.detach().clone().contiguous() for k, v in full_state_dict(student).items()}
    if not state:  # a sharded student's weights went to rank 0
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file({**state, **grads}, str(Path(out) / f"{method}-rank-{rank}.safetensors"))


if __name__ == "__main__":
    from rakd.train.distributed import leave_world

    main(*sys.argv[1:5])
    leave_world()  # a worker that exits with its process group alive sometimes dies in gloo's teardown (SIGABRT)
