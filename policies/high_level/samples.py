"""Generated subgoals next to the real future frames: the picture and the numbers for a report.

``subgoal_samples`` draws (frame t, frame t + k, task) triples from episode datasets, samples
candidates with the generator, and lays them out one triple per row: the current frame, the real
future frame, then the candidates, each upscaled (nearest neighbour, so pixels stay honest) to
``cell`` px. It also returns per-pixel MSEs in the generator's [-1, 1] units.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from policies.high_level.generator import SubgoalGenerator, model_to_images
from policies.high_level.training import SubgoalPairs


def subgoal_samples(
    generator: SubgoalGenerator,
    data: Sequence[str | Path],
    rows: int = 6,
    candidates: int = 3,
    seed: int = 0,
    cell: int = 64,
) -> tuple[np.ndarray, dict[str, float]]:
    """(grid uint8 (rows * cell, (2 + candidates) * cell, 3), metrics).

    Metrics: ``mse_first`` (the first candidate vs the real future), ``mse_best`` (the closest
    candidate), ``mse_copy_current`` (repeating the current frame). Raises ValueError for a dataset
    task the generator does not know.
    """
    cfg = generator.config
    pairs = SubgoalPairs(data, cfg.camera, cfg.image_size, min_steps=2)
    unknown = sorted(set(pairs.tasks) - set(cfg.tasks))
    if unknown:
        raise ValueError(f"the data holds tasks {unknown} this generator does not know ({list(cfg.tasks)})")
    rng = np.random.default_rng(seed)
    cur, fut, ids = pairs.sample(rows, cfg.offsets, cfg.tasks, rng)
    x = generator.sample(cur, ids, candidates=candidates, gen=torch.Generator().manual_seed(seed))
    err = ((x - fut[:, None]) ** 2).mean(dim=(2, 3, 4))  # (rows, candidates)
    metrics = {
        "mse_first": float(err[:, 0].mean()),
        "mse_best": float(err.min(dim=1).values.mean()),
        "mse_copy_current": float(((cur - fut) ** 2).mean()),
        "rows": rows,
        "candidates": candidates,
    }
    idx = np.arange(cell) * cfg.image_size // cell
    grid = []
    for r in range(rows):
        panels = [cur[r : r + 1], fut[r : r + 1], x[r]]
        row = np.concatenate([model_to_images(p)[:, idx][:, :, idx] for p in panels], axis=0)
        grid.append(np.concatenate(list(row), axis=1))
    return np.concatenate(grid, axis=0), metrics
