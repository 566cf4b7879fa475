"""``dexhier bench lowlevel``: chunk latency of the BESO policy and its DDPM-100 peer, and success.

Latency is one ``predict_chunk`` call on one CPU thread from a real twin observation: input
checks, normalization, the CNN image encoding (observation and goal images), all denoising passes
and the de-normalization. The success part runs seeded oracle-goal episodes of the BESO policy at
1, 3 and 10 denoising steps and of the DDPM peer at its 100 steps, on the same seeds in one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ms = 1000 * np.asarray(samples)
    return float(np.median(ms)), float(np.quantile(ms, 0.99))


def _observation(checkpoint: Path, task: str, seed: int) -> tuple[dict, dict]:
    """A real observation and goal from the twin (the expert's frame 10 steps later as the goal)."""
    from dexhier import vocabulary as V
    from dexhier.goal_rollout import LowLevelOptions, env_config
    from sim.expert import ExpertPolicy
    from sim.twin import TwinEnv

    env = TwinEnv(env_config(task, LowLevelOptions(checkpoint=str(checkpoint))))
    obs = env.reset(seed)
    expert = ExpertPolicy(env)
    expert.reset()
    goal_obs = obs
    for _ in range(10):
        goal_obs = env.step(expert.select_action(goal_obs))[0]
    env.close()
    from dexhier.checkpoints import read_config
    from policies.low_level.policy import CHECKPOINT_TYPE

    cam = read_config(checkpoint, CHECKPOINT_TYPE)["config"]["policy"]["goal_camera"]
    goal = {V.GOAL_RGB: goal_obs[V.rgb_key(cam)], V.GOAL_TOOL_TIP_GAP: goal_obs[V.OBS_TOOL_TIP_GAP]}
    return obs, goal


def chunk_latency(
    checkpoint: Path, repeats: int, obs: dict, goal: dict, **overrides: Any
) -> dict[str, float]:
    """p50 / p99 (ms) of ``predict_chunk`` and of the conditioning (image encoding) alone."""
    import torch

    from policies.low_level.policy import LowLevelPolicy

    policy = LowLevelPolicy.load(checkpoint, **overrides)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        policy.predict_chunk(obs, goal, gen)
    total, encode = [], []
    proprio = policy.proprio(obs)
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_chunk(obs, goal, gen)
        total.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            policy._condition(proprio, obs, goal)
        encode.append(time.perf_counter() - t0)
    p50, p99 = _percentiles(total)
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "encode_p50_ms": _percentiles(encode)[0],
        "steps": policy.config.steps,
    }


def bench_lowlevel(
    checkpoint: Path,
    peer: Path | None,
    repeats: int = 300,
    peer_repeats: int = 50,
    task: str = "tweezer_pick",
    episodes: int = 20,
    seed: int = 1000,
    workers: int = 2,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """The figures of ``dexhier bench lowlevel`` (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    obs, goal = _observation(checkpoint, task, seed)
    progress(f"latency of {checkpoint} ({repeats} chunks, 1 thread)")
    edm = chunk_latency(checkpoint, repeats, obs, goal)
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "threads": 1, "steps": edm["steps"],
                           "p50_ms": edm["p50_ms"], "p99_ms": edm["p99_ms"],
                           "encode_p50_ms": edm["encode_p50_ms"]}  # fmt: skip
    if peer is not None:
        progress(f"latency of the peer {peer} ({peer_repeats} chunks)")
        ddpm = chunk_latency(peer, peer_repeats, obs, goal)
        out.update({"peer_checkpoint": str(peer), "ddpm100_steps": ddpm["steps"],
                    "ddpm100_p50_ms": ddpm["p50_ms"], "ddpm100_p99_ms": ddpm["p99_ms"],
                    "speedup_vs_ddpm100": ddpm["p50_ms"] / edm["p50_ms"]})  # fmt: skip
    if episodes > 0:
        from dexhier.evaluation import EvalRequest, iter_results

        def success(options: dict[str, Any], label: str) -> float:
            req = EvalRequest("lowlevel", task, episodes, seed, workers=workers, options=options)
            t0 = time.perf_counter()
            results = list(iter_results(req))
            rate = sum(r.success for r in results) / len(results)
            progress(
                f"{label}: {100 * rate:.0f}% of {episodes} {task} episodes ({time.perf_counter() - t0:.0f} s)"
            )
            return rate

        out["success_task"], out["success_episodes"], out["success_seed"] = task, episodes, seed
        for steps in (1, 3, 10):
            out[f"success_at_{steps}_steps"] = success({"checkpoint": str(checkpoint), "steps": steps},
                                                       f"BESO {steps} steps")  # fmt: skip
        if peer is not None:
            out["ddpm100_success"] = success({"checkpoint": str(peer)}, "DDPM-100 peer")
            out["success_drop_vs_ddpm100_points"] = 100 * (out["ddpm100_success"] - out["success_at_3_steps"])
    out["latency_repeats"] = repeats
    return out
