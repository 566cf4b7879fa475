"""Benchmarks of the twin: physics speed, render time, expert episode time.

All figures are medians of repeated measurements taken in one run; the machine is shared,
so compare ratios measured together rather than absolute numbers across runs.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import mujoco
import numpy as np

from sim.rendering import CameraRenderer
from sim.twin import TwinConfig, TwinEnv


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def bench_twin(episodes: int = 3, progress=None) -> dict[str, Any]:
    """Measure the twin. ``progress(msg)`` is called between stages when given."""
    from sim.expert import ExpertPolicy
    from sim.rollout import run_episode

    say = progress or (lambda msg: None)
    out: dict[str, Any] = {}

    # Physics: raw mj_step throughput in the contact-rich part of a pick (tool squeezing an object).
    say("physics")
    env = TwinEnv(TwinConfig(task="tweezer_pick", render=False, points=False))
    expert = ExpertPolicy(env)
    obs = env.reset(0)
    expert.reset()
    while expert.phase not in ("lift",) and env.data.time < 8.0:
        obs, *_ = env.step(expert.select_action(obs))
    m, d = env.model, env.data
    n = 1000
    scratch = mujoco.MjData(m)
    rtfs = []
    for _ in range(5):
        mujoco.mj_copyData(scratch, m, d)
        t = time.perf_counter()
        for _ in range(n):
            mujoco.mj_step(m, scratch)
        rtfs.append(n * m.opt.timestep / (time.perf_counter() - t))
    out["physics_realtime_factor"] = statistics.median(rtfs)
    out["physics_step_us"] = 1e6 * m.opt.timestep / out["physics_realtime_factor"]
    out["contacts_during_grasp"] = int(d.ncon)

    # Control step of the env without rendering (physics + bookkeeping), as a real-time factor.
    def env_steps() -> None:
        for _ in range(20):
            env.step(np.concatenate([obs["arm/qpos"], obs["hand/qpos"]]))

    env.reset(1)
    ms = _median_ms(env_steps, 5) / 20
    out["env_step_ms_no_render"] = ms
    out["env_realtime_factor_no_render"] = (1000.0 / env.config.control_hz) / ms

    # Rendering: one colour frame of the scene camera, and a full observation at 64x64.
    for size in (64, 128):
        say(f"render {size}")
        r = CameraRenderer(env.model, size, size)
        r.rgb(env.data, "scene")
        out[f"render_ms_{size}"] = _median_ms(lambda r=r: r.rgb(env.data, "scene"), 50)
        out[f"depth_ms_{size}"] = _median_ms(lambda r=r: r.depth(env.data, "scene"), 50)
        r.close()
    env.close()
    full = TwinEnv(TwinConfig(task="tweezer_pick", render=True, points=True))
    full.reset(0)
    out["observation_ms_64"] = _median_ms(full._observe, 30)
    full.close()

    # Expert episodes, without rendering (evaluation) and with 64x64 images (collection).
    for render in (False, True):
        say(f"expert episodes render={render}")
        env = TwinEnv(TwinConfig(task="tweezer_pick", render=render, points=False))
        expert = ExpertPolicy(env)
        walls, sims = [], []
        for seed in range(episodes):
            res = run_episode(env, expert, seed)
            walls.append(res.wall_time)
            sims.append(res.sim_time)
        key = "expert_episode_wall_s" + ("_render64" if render else "")
        out[key] = statistics.median(walls)
        out[key.replace("wall", "sim")] = statistics.median(sims)
        env.close()
    out["episodes"] = episodes
    return out
