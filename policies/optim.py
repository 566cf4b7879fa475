"""Training pieces every policy trainer shares: data parallelism, the learning-rate schedule, EMA.

Data parallel: under ``torchrun --nproc_per_node N`` (env ``WORLD_SIZE`` > 1) each rank draws its own
batches and `allreduce_gradients` averages the gradients (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import math
import os

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
