"""Training pieces every policy trainer shares: data parallelism, the learning-rate schedule, EMA,
and the loop (`fit`): progress, periodic validation and checkpoints.

Data parallel: under ``torchrun --nproc_per_node N`` (env ``WORLD_SIZE`` > 1) each rank draws its own
batches and `allreduce_gradients` averages the gradients (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size); joins the process group (gloo) when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank() if world > 1 else 0), world


def allreduce_gradients(net: torch.nn.Module, world: int) -> None:
    """Average the gradients of ``net`` over the ``world`` ranks, in one flat all-reduce."""
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    i = 0
    for g in grads:
        g.copy_(flat[i : i + g.numel()].view_as(g))
        i += g.numel()


def warmup_cosine(step: int, steps: int, warmup: int, lr: float) -> float:
    """Learning rate at ``step``: linear warm-up for ``warmup`` steps, cosine decay to 0 at ``steps``."""
    return lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> None:
    """EMA of the weights; the decay warms up as ``(1 + step) / (10 + step)`` so early weights fade."""
    d = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p, 1 - d)


class Trainable(Protocol):
    """What `fit` drives: a trainer with a step counter, one optimizer step, validation and saving."""

    step: int
    world: int

    def train_step(self) -> float: ...

    def validate(self) -> dict[str, float]: ...

    def save(self, metrics: dict[str, Any]) -> None: ...


def fit(
    trainer: Trainable,
    steps: int,
    checkpoint_every: int,
    log: Callable[[str], None],
    bar: Any = None,
    describe: Callable[[dict[str, Any]], str] = lambda m: "",
) -> dict[str, Any]:
    """Run ``trainer`` up to ``steps``: progress on ``bar`` (tqdm-like), validation + checkpoint every
    ``checkpoint_every`` steps and at the end, a log line each time (``describe`` adds the metrics
    worth reading). Returns the last metrics; every rank waits for the others before returning."""
    t0 = time.perf_counter()
    if trainer.step:
        log(f"resuming at step {trainer.step}")
    if bar is not None:
        bar.update(trainer.step)
    metrics: dict[str, Any] = {}
    losses: list[float] = []
    while trainer.step < steps:
        losses.append(trainer.train_step())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        if trainer.step % checkpoint_every == 0 or trainer.step == steps:
            metrics = {**trainer.validate(), "train_loss": float(np.mean(losses[-200:])),
                       "step": trainer.step, "train_seconds": time.perf_counter() - t0,
                       "world_size": trainer.world}  # fmt: skip
            trainer.save(metrics)
            log(f"step {trainer.step}: loss {metrics['train_loss']:.4f}{describe(metrics)}")
    if not metrics:
        metrics = trainer.validate()
    if trainer.world > 1:
        dist.barrier()
    return metrics
