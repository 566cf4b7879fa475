"""HECRL-style value selection: a goal-conditioned temporal-distance estimate that discards
candidates the low level cannot reach from here.

The network (the progress classifier's architecture: current and candidate stacked on channels,
task FiLM) regresses a normalized distance ``d = k / horizon`` in [0, 1] between the current frame
and a goal frame ``k`` control steps later in the same episode; pairs the robot cannot go through
(the goal from another episode, or from the past: the reversed pair) are labelled 1, as far as
anything gets. Batch mix: 60 % forward pairs (k uniform in 0..horizon), 20 % reversed, 20 % foreign.

Selection (:meth:`ReachabilityEstimator.select`): candidates with ``d > reach`` are unreachable
and discarded; among the rest the one whose distance is nearest ``target`` (the generator's
mean offset / horizon: a subgoal that is real progress, not the current frame) wins; if every
candidate is unreachable, the nearest one.

Images are float (B, 3, S, S) in [-1, 1], as the generator's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dexhier.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from policies.high_level.progress import ProgressConfig, ProgressNet, score_candidates

CHECKPOINT_TYPE = "dexhier.reachability"
MIX = (0.6, 0.2, 0.2)
"""Shares of forward, reversed and foreign pairs in a training batch."""


@dataclass(frozen=True)
class ReachabilityConfig:
    """Sizes and the selection rule. ``horizon`` in control steps; ``reach``, ``target`` in [0, 1]."""

    tasks: tuple[str, ...]
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 64)
    hidden: int = 128
    horizon: int = 60
    reach: float = 0.6
    target: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "channels", tuple(self.channels))
        if not self.tasks:
            raise ValueError("tasks must be non-empty")
        if self.horizon < 1 or not 0 < self.target < self.reach <= 1:
            raise ValueError("need horizon >= 1 and 0 < target < reach <= 1")

    def net_config(self) -> ProgressConfig:
        return ProgressConfig(tasks=self.tasks, image_size=self.image_size, channels=self.channels,
                              hidden=self.hidden)  # fmt: skip


def distance_batch(
    frames: list[torch.Tensor], task_ids: list[int], n: int, horizon: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """(current, goal, task, target distance, kind) with kind 0 forward, 1 reversed, 2 foreign."""
    kinds = rng.choice(3, size=n, p=np.asarray(MIX))
    lengths = np.array([len(f) for f in frames])
    eps = rng.choice(len(frames), size=n, p=lengths / lengths.sum())
    cur, goal, target = [], [], []
    for kind, e in zip(kinds, eps, strict=True):
        f = frames[e]
        t = int(rng.integers(0, len(f)))
        k = int(rng.integers(0, horizon + 1))
        u = min(t + k, len(f) - 1)
        if kind == 0:
            cur.append(f[t]), goal.append(f[u]), target.append((u - t) / horizon)
        elif kind == 1:
            # From the later frame back to the earlier one; k = 0 would be no move at all.
            u = min(t + max(k, horizon // 4), len(f) - 1)
            cur.append(f[u]), goal.append(f[t]), target.append(1.0 if u > t else 0.0)
        else:
            other = frames[int(rng.integers(len(frames)))]
            cur.append(f[t]), goal.append(other[int(rng.integers(len(other)))]), target.append(1.0)
    tasks = torch.tensor([task_ids[e] for e in eps], dtype=torch.long)
    return torch.stack(cur), torch.stack(goal), tasks, torch.tensor(target, dtype=torch.float32), kinds


class ReachabilityEstimator:
    """The network with its config; :meth:`distances` and :meth:`select` for N candidates."""

    def __init__(self, cfg: ReachabilityConfig, net: ProgressNet | None = None) -> None:
        self.config = cfg
        self.net = net if net is not None else ProgressNet(cfg.net_config())

    def forward(self, current: torch.Tensor, goal: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Normalized distances (B,) in [0, 1]."""
        return torch.sigmoid(self.net(current, goal, task))

    def distances(self, current: torch.Tensor, candidates: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """(B, N) distances for ``candidates`` (B, N, 3, S, S) from ``current`` (B, 3, S, S)."""
        return torch.sigmoid(score_candidates(self.net, self.config.image_size, current, candidates, task))

    def select(self, current: torch.Tensor, candidates: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Index (B,) per the module docstring's rule."""
        return self.pick(self.distances(current, candidates, task))

    def pick(self, d: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the chosen candidate from distances (B, N)."""
        cost = (d - self.config.target).abs()
        unreachable = d > self.config.reach
        cost = torch.where(unreachable, 10.0 + d, cost)  # only if all are unreachable: the nearest
        return cost.argmin(1)

    def save(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(directory, CHECKPOINT_TYPE, {"reachability": asdict(self.config)},
                               self.net.state_dict(), {"image": "uint8 RGB -> [-1, 1]"}, metrics)  # fmt: skip

    @classmethod
    def load(cls, directory: str | Path) -> ReachabilityEstimator:
        doc, weights, _ = load_checkpoint(directory, CHECKPOINT_TYPE)
        try:
            cfg = ReachabilityConfig(**doc["config"]["reachability"])
            net = ProgressNet(cfg.net_config())
            net.load_state_dict(weights, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{directory}: bad reachability checkpoint: {err}") from err
        return cls(cfg, net.eval())


def distance_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target)
