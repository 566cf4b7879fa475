"""Seeded closed-loop evaluation of a policy in the twin, in parallel worker processes.

Episode ``i`` of a run uses seed ``seed + i`` whatever the number of workers, so results
do not depend on ``--workers``. The result is a table of success by object width, a JSON
object and a short markdown report.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sim.rollout import EpisodeResult, RolloutPolicy, run_episode
from sim.twin import TwinConfig, TwinEnv

WIDTH_BINS_MM: tuple[tuple[float, float], ...] = ((4, 10), (10, 16), (16, 22), (22, 30))
"""Object-width bins (mm) of the success table; the last bin includes its upper edge."""


def _make_expert(env: TwinEnv, options: Any) -> RolloutPolicy:
    from sim.expert import ExpertPolicy

    return ExpertPolicy(env)


def _expert_env(task: str, options: Any) -> TwinConfig:
    return TwinConfig(task=task, render=False, points=False)


def _lowlevel_options(options: dict[str, Any]) -> Any:
    from dexhier.goal_rollout import LowLevelOptions

    return LowLevelOptions(**options)


def _make_lowlevel(env: TwinEnv, options: Any) -> RolloutPolicy:
    from dexhier.goal_rollout import make_goal_policy

    return make_goal_policy(env, options)


def _lowlevel_env(task: str, options: Any) -> TwinConfig:
    from dexhier.goal_rollout import env_config

    return env_config(task, options)


def _hierarchical_options(options: dict[str, Any]) -> Any:
    from dexhier.hierarchical_rollout import HierarchicalOptions

    return HierarchicalOptions(**options)


def _make_hierarchical(env: TwinEnv, options: Any) -> RolloutPolicy:
    from dexhier.hierarchical_rollout import build_controller

    return build_controller(env, options)


def _hierarchical_env(task: str, options: Any) -> TwinConfig:
    from dexhier.hierarchical_rollout import env_config

    return env_config(task, options)


@dataclass(frozen=True)
class PolicyEntry:
    """A policy the evaluator can run.

    ``parse_options`` turns the request's option dict into the policy's typed options (checked in
    the main process before any worker starts), ``env_config`` builds the twin config it needs
    (cameras, image size) and ``factory`` builds it for an env.
    """

    factory: Callable[[TwinEnv, Any], RolloutPolicy]
    env_config: Callable[[str, Any], TwinConfig]
    description: str
    parse_options: Callable[[dict[str, Any]], Any] = lambda options: None


POLICIES: dict[str, PolicyEntry] = {
    "expert": PolicyEntry(_make_expert, _expert_env, description="privileged scripted expert"),
    "lowlevel": PolicyEntry(
        _make_lowlevel,
        _lowlevel_env,
        description="learned low-level policy (BESO or its DDPM peer) with --goal-source goals",
        parse_options=_lowlevel_options,
    ),
    "hierarchical": PolicyEntry(
        _make_hierarchical,
        _hierarchical_env,
        description="the whole hierarchy: perception, subgoal generator + filter, stage tracking, low level",
        parse_options=_hierarchical_options,
    ),
}
"""Policies by name. Learned policies register here as they land."""


@dataclass(frozen=True)
class EvalRequest:
    policy: str
    task: str
    episodes: int
    seed: int
    workers: int = 1
    video_dir: Path | None = None
    videos: int = 0
    """Number of episodes (the first ones) to record when ``video_dir`` is set; 0 = all."""
    options: dict[str, Any] = field(default_factory=dict)
    """Policy options (e.g. the low level's checkpoint, steps, goal source); JSON-able."""
    objects: str = "train"
    """Object shapes: ``train`` (the tasks' shapes) or ``heldout`` (never in training data)."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; valid policies: {', '.join(POLICIES)}")
        TwinConfig(task=self.task)  # validates the task name
        if self.episodes < 1:
            raise ValueError("episodes must be >= 1")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        POLICIES[self.policy].parse_options(self.options)  # bad options fail here, not in a worker
        TwinConfig(task=self.task, objects=self.objects)

    @property
    def label(self) -> str:
        """Short name of the evaluated policy for file names (policy + checkpoint name)."""
        ckpt = self.options.get("checkpoint")
        if not ckpt:
            return self.policy
        extra = "".join(
            f"-{k}{v}" for k, v in sorted(self.options.items()) if k not in ("checkpoint", "goal_source")
        )
        return f"{self.policy}-{Path(ckpt).name}{extra}"


_WORKER_ENV: dict[str, tuple[TwinEnv, RolloutPolicy]] = {}


def _episode(job: tuple[str, str, int, str | None, dict[str, Any], str]) -> EpisodeResult:
    """Run one episode in this process, reusing the process's env and policy."""
    policy_name, task, seed, video_path, options, objects = job
    key = json.dumps([policy_name, task, options, objects], sort_keys=True)
    if key not in _WORKER_ENV:
        entry = POLICIES[policy_name]
        parsed = entry.parse_options(options)
        env = TwinEnv(replace(entry.env_config(task, parsed), objects=objects))
        _WORKER_ENV[key] = (env, entry.factory(env, parsed))
    env, policy = _WORKER_ENV[key]
    if video_path is None:
        return run_episode(env, policy, seed)
    from sim.video import VideoWriter

    with VideoWriter(video_path, fps=env.config.control_hz) as video:
        return run_episode(env, policy, seed, video=video)


def iter_results(req: EvalRequest) -> Iterator[EpisodeResult]:
    """Yield episode results in seed order as they complete."""
    jobs = []
    for i in range(req.episodes):
        seed = req.seed + i
        video = None
        if req.video_dir is not None and (req.videos == 0 or i < req.videos):
            video = str(Path(req.video_dir) / f"{req.task}_{req.label}_seed{seed}.mp4")
        jobs.append((req.policy, req.task, seed, video, dict(req.options), req.objects))
    if req.workers == 1:
        for job in jobs:
            yield _episode(job)
        return
    ctx = mp.get_context("spawn")  # a fresh process per worker: no inherited GL or DDS state
    with ProcessPoolExecutor(max_workers=min(req.workers, len(jobs)), mp_context=ctx) as pool:
        yield from pool.map(_episode, jobs)


def summarize(req: EvalRequest, results: list[EpisodeResult]) -> dict[str, Any]:
    """The JSON summary of a run."""
    by_bin = {}
    for lo, hi in WIDTH_BINS_MM:
        last = hi == WIDTH_BINS_MM[-1][1]
        sel = [
            r
            for r in results
            if lo <= 1000 * r.object["width"] < hi or (last and 1000 * r.object["width"] == hi)
        ]
        by_bin[f"{lo:g}-{hi:g}"] = {
            "episodes": len(sel),
            "success_rate": (sum(r.success for r in sel) / len(sel)) if sel else None,
        }
    successes = sum(r.success for r in results)
    reached = [r.policy_info["furthest_stage"] for r in results if "furthest_stage" in r.policy_info]
    stages = {"furthest_stage": dict(sorted(Counter(reached).items()))} if reached else {}
    return {
        "policy": req.policy,
        "options": dict(req.options),
        "task": req.task,
        "objects": req.objects,
        "episodes": len(results),
        "seed": req.seed,
        "workers": req.workers,
        "success_rate": successes / len(results),
        "successes": successes,
        "success_by_width_mm": by_bin,
        "median_episode_sim_s": statistics.median(r.sim_time for r in results),
        "median_episode_wall_s": statistics.median(r.wall_time for r in results),
        "physics_diverged": sum(r.physics_diverged for r in results),
        **stages,
        "per_episode": [r.to_json() for r in results],
    }


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text success table by object width."""
    lines = [
        f"policy={summary['policy']} task={summary['task']} "
        f"episodes={summary['episodes']} seed={summary['seed']}",
        f"{'width (mm)':>12} {'episodes':>9} {'success':>8}",
    ]
    for name, row in summary["success_by_width_mm"].items():
        rate = "-" if row["success_rate"] is None else f"{100 * row['success_rate']:.1f}%"
        lines.append(f"{name:>12} {row['episodes']:>9} {rate:>8}")
    lines.append(f"{'all':>12} {summary['episodes']:>9} {100 * summary['success_rate']:>7.1f}%")
    return "\n".join(lines)


def write_report(summary: dict[str, Any], path: Path, command: str, videos: list[Path]) -> None:
    """A short markdown report of a run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    failed = [e["seed"] for e in summary["per_episode"] if not e["success"]]
    first, n = summary["seed"], summary["episodes"]
    lines = [
        f"# Evaluation: {summary['policy']} on {summary['task']}"
        + (" (through the ROS 2 graph)" if summary.get("through_ros") else ""),
        "",
        f"Command: `{command}`",
        "",
        f"- episodes: {n} (seeds {first}..{first + n - 1})",
        f"- success rate: **{100 * summary['success_rate']:.1f}%** ({summary['successes']}/{n})",
        f"- median episode length: {summary['median_episode_sim_s']:.2f} s simulated, "
        f"{summary['median_episode_wall_s']:.2f} s wall",
        f"- failed seeds: {failed if failed else 'none'}",
        "",
        "| object width (mm) | episodes | success |",
        "|---|---|---|",
    ]
    for name, row in summary["success_by_width_mm"].items():
        rate = "-" if row["success_rate"] is None else f"{100 * row['success_rate']:.1f}%"
        lines.append(f"| {name} | {row['episodes']} | {rate} |")
    if videos:
        lines += ["", "Videos (scene camera | wrist camera):", ""]
        lines += [f"- [{v.name}]({os.path.relpath(v, path.parent)})" for v in videos]
    path.write_text("\n".join(lines) + "\n")
