"""``dexhier bench subgoal``: latency of one high-level decision, generation + selection.

One call samples N candidate subgoals (one batched UNet pass per denoising step, three-way CFG
batch) and scores them with the progress classifier, on one CPU thread. Without checkpoints the
default architectures run with random weights: latency depends on the architecture, not on the
weights, so the figure is valid before anything is trained (and says so in its output).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.high_level.generator import GeneratorConfig, SubgoalGenerator
from policies.high_level.progress import ProgressClassifier, ProgressConfig


def bench_subgoal(
    generator: Path | None, classifier: Path | None, candidates: int, steps: int | None, repeats: int
) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = (
        SubgoalGenerator.load(generator) if generator else SubgoalGenerator(GeneratorConfig(tasks=("task",)))
    )
    cfg = gen.config
    clf = ProgressClassifier.load(classifier) if classifier else ProgressClassifier(
        ProgressConfig(tasks=cfg.tasks, image_size=cfg.image_size)
    )  # fmt: skip
    if clf.config.image_size != cfg.image_size:
        raise ValueError(
            f"the classifier's images are {clf.config.image_size} px, the generator's {cfg.image_size}"
        )
    current = torch.rand(1, 3, cfg.image_size, cfg.image_size) * 2 - 1
    task = torch.zeros(1, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    times, gen_times = [], []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        cands = gen.sample(current, task, candidates=candidates, steps=steps, gen=g)
        t1 = time.perf_counter()
        clf.select(current, cands, task)
        t2 = time.perf_counter()
        if i >= 2:  # warm-up calls excluded
            times.append(t2 - t0)
            gen_times.append(t1 - t0)
    ms = 1000 * np.asarray(times)
    return {
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.quantile(ms, 0.99)),
        "generation_p50_ms": float(np.median(1000 * np.asarray(gen_times))),
        "candidates": candidates,
        "steps": steps or cfg.steps,
        "image_size": cfg.image_size,
        "generator_params_m": sum(p.numel() for p in gen.unet.parameters()) / 1e6,
        "trained_weights": bool(generator),
    }
