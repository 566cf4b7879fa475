"""The subgoal filter: GHIL-Glue's progress classifier, scoring (current image, candidate, task).

A small CNN sees the current image and the candidate stacked on channels (so it compares them
pixel by pixel from the first layer), the task enters as a learned embedding that scales and shifts
the pooled features (FiLM), and an MLP gives one logit: does the candidate show progress on the
task from here? Trained with binary cross-entropy on GHIL-Glue's batch mix:

    50 % positives      (s_t, s_t+k, task)          k in the generator's offsets
    20 % wrong task     (s_t, s_t+k, task')          only when the data has several tasks
    20 % reversed       (s_t+k, s_t, task)
    10 % wrong goal     (s_t, s'_u, task)            s' from another episode

(with a single task the wrong-task share goes to reversed pairs). Selection is the argmax of the
logits over the N candidates, with no threshold.

Images are float (B, 3, S, S) in [-1, 1], as the generator's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dexhier.checkpoints import CheckpointError, load_checkpoint, save_checkpoint

CHECKPOINT_TYPE = "dexhier.progress_classifier"


@dataclass(frozen=True)
class ProgressConfig:
    """Classifier size; ``image_size`` must equal the generator's."""

    tasks: tuple[str, ...]
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 64)
    hidden: int = 128
    dropout: float = 0.1
    mix: tuple[float, float, float, float] = (0.5, 0.2, 0.2, 0.1)
    """Shares of positives, wrong-task, reversed and wrong-goal pairs in a batch."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "mix", tuple(self.mix))
        if not self.tasks:
            raise ValueError("tasks must be non-empty")
        if len(self.mix) != 4 or any(m < 0 for m in self.mix) or abs(sum(self.mix) - 1) > 1e-6:
            raise ValueError(f"mix must be 4 shares summing to 1, got {self.mix}")
        if self.image_size < 8 or not self.channels:
            raise ValueError("image_size must be >= 8 and channels non-empty")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ProgressNet(nn.Module):
    """(current, candidate, task id) -> progress logit; (B, 3, S, S) x 2, (B,) -> (B,)."""

    def __init__(self, cfg: ProgressConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 6
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        self.film = nn.Embedding(len(cfg.tasks), 2 * c_in)
        nn.init.zeros_(self.film.weight)  # starts as the identity: scale 1, shift 0
        self.head = nn.Sequential(
            nn.Linear(c_in, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.SiLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 1),
        )  # fmt: skip

    def forward(self, current: torch.Tensor, candidate: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        h = self.trunk(torch.cat([current, candidate], 1)).mean((2, 3))
        scale, shift = self.film(task).chunk(2, -1)
        return self.head(h * (1 + scale) + shift).squeeze(-1)


@torch.no_grad()
def score_candidates(
    net: ProgressNet, size: int, current: torch.Tensor, candidates: torch.Tensor, task: torch.Tensor
) -> torch.Tensor:
    """The net's outputs (B, N) for each of N candidates (B, N, 3, S, S) from ``current`` (B, 3, S, S);
    ValueError for images of another size."""
    b, n = candidates.shape[:2]
    if current.shape[1:] != (3, size, size) or candidates.shape[2:] != (3, size, size):
        raise ValueError(f"images must be (..., 3, {size}, {size}), got {tuple(current.shape)}, "
                         f"{tuple(candidates.shape)}")  # fmt: skip
    net.eval()
    cur = current.repeat_interleave(n, 0)
    return net(cur, candidates.flatten(0, 1), task.repeat_interleave(n, 0)).view(b, n)


def progress_batch(
    frames: list[torch.Tensor],
    task_ids: list[int],
    n: int,
    offsets: tuple[int, int],
    n_tasks: int,
    mix: tuple[float, float, float, float],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """A training batch: (current, candidate, task, label, kind); kind 0..3 as in the module docstring.

    ``frames``: per episode float (T, 3, S, S); ``task_ids``: per episode.
    """
    p = np.array(mix, dtype=float)
    if n_tasks < 2:  # no wrong task exists: those pairs become reversed ones
        p[2] += p[1]
        p[1] = 0.0
    kinds = rng.choice(4, size=n, p=p / p.sum())
    lengths = np.array([len(f) for f in frames])
    eps = rng.choice(len(frames), size=n, p=lengths / lengths.sum())
    cur, cand, tasks = [], [], []
    for kind, e in zip(kinds, eps, strict=True):
        f = frames[e]
        k = int(rng.integers(offsets[0], offsets[1] + 1))
        t = int(rng.integers(0, max(1, len(f) - k)))
        u = min(t + k, len(f) - 1)
        task = task_ids[e]
        if kind == 1:
            task = int((task + rng.integers(1, n_tasks)) % n_tasks)
        if kind == 2:
            t, u = u, t
        goal = f[u]
        if kind == 3:
            other = frames[int(rng.integers(len(frames)))]
            goal = other[int(rng.integers(len(other)))]
        cur.append(f[t])
        cand.append(goal)
        tasks.append(task)
    label = torch.as_tensor(kinds == 0, dtype=torch.float32)
    return torch.stack(cur), torch.stack(cand), torch.tensor(tasks, dtype=torch.long), label, kinds


class ProgressClassifier:
    """The classifier with its config; `select` picks the best of N candidates."""

    def __init__(self, cfg: ProgressConfig, net: ProgressNet | None = None) -> None:
        self.config = cfg
        self.net = net if net is not None else ProgressNet(cfg)

    def scores(self, current: torch.Tensor, candidates: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Logits (B, N) for ``candidates`` (B, N, 3, S, S) from ``current`` (B, 3, S, S)."""
        return score_candidates(self.net, self.config.image_size, current, candidates, task)

    def select(self, current: torch.Tensor, candidates: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the candidate with the highest progress logit."""
        return self.scores(current, candidates, task).argmax(1)

    def save(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(directory, CHECKPOINT_TYPE, {"progress": self.config.to_json()},
                               self.net.state_dict(), {"image": "uint8 RGB -> [-1, 1]"}, metrics)  # fmt: skip

    @classmethod
    def load(cls, directory: str | Path) -> ProgressClassifier:
        doc, weights, _ = load_checkpoint(directory, CHECKPOINT_TYPE)
        try:
            cfg = ProgressConfig(**doc["config"]["progress"])
            net = ProgressNet(cfg)
            net.load_state_dict(weights, strict=True)
        except (KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{directory}: bad progress classifier checkpoint: {err}") from err
        return cls(cfg, net.eval())


def bce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, label)
