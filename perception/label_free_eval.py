"""``dexhier eval perception`` and ``bench affordance``'s label-free keys: label-free perception
(``LabelFreePerception``) on the twin's depth images during expert episodes.

Only depth images, intrinsics and measured joint positions go in, as from a real cell; the twin's
privileged state (tip gap, object pose, the task's object parameters) is the oracle the errors are
measured against. Episode ``i`` uses seed ``seed + i`` in any worker.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from dexhier import vocabulary as V

CAMERAS = ("workspace", "wrist")
"""The cameras perception uses: the object from the workspace camera, the tool's opening from the
wrist camera (measured: docs/benchmarks.md, "Label-free perception")."""


@dataclass(frozen=True)
class PerceptionEvalRequest:
    """Episodes to perceive. ``size`` is the depth images' (width, height) in px."""

    tasks: tuple[str, ...] = ("tweezer_pick",)
    episodes: int = 100
    seed: int = 1000
    every: int = 5
    size: tuple[int, int] = (320, 240)
    workers: int = 1

    def __post_init__(self) -> None:
        from sim.tasks import TASKS

        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown tasks {unknown}; valid: {', '.join(sorted(TASKS))}")
        if self.episodes < 1 or self.every < 1 or self.workers < 1:
            raise ValueError("episodes, every and workers must be >= 1")


def _twin(task: str, size: tuple[int, int]):
    from sim.twin import TwinConfig, TwinEnv

    return TwinEnv(
        TwinConfig(task=task, cameras=CAMERAS, points=False, image_width=size[0], image_height=size[1])
    )


def _episode(job: tuple[str, int, int, tuple[int, int]]) -> list[dict[str, Any]]:
    """Per-frame errors of one expert episode."""
    from perception.observer import ObjectObserver
    from sim.expert import ExpertPolicy

    task, seed, every, size = job
    env = _twin(task, size)
    try:
        # Perception as the stack runs it: the observer searches the object near its last estimate.
        expert, observer = ExpertPolicy(env), ObjectObserver(env.config.cell)
        obs = env.reset(seed)
        expert.reset()
        names, rows, step, done = env.robot.joint_names, [], 0, False
        while not done:
            if step % every == 0:
                q = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
                t0 = time.perf_counter()
                est = observer.perceive({c: obs[V.depth_key(c)] for c in CAMERAS}, names, q)
                ms = 1000.0 * (time.perf_counter() - t0)
                observer.update(est)
                truth, obj = env.privileged_state(), env.instance.object
                rows.append({
                    "task": task, "phase": expert.phase, "ms": ms,
                    "valid": est.valid, "object_valid": est.object_valid,
                    "gap_err": abs(est.tip_gap - env.tip_gap()),
                    "centroid_err": float(np.linalg.norm(est.object_center - truth.object_pos)),
                    "width_err": abs(est.object_width - obj.width),
                    "height_err": abs(est.object_height - obj.height),
                })  # fmt: skip
            obs, _, term, trunc, _ = env.step(expert.select_action(obs))
            done, step = term or trunc, step + 1
        return rows
    finally:
        env.close()


def iter_episodes(req: PerceptionEvalRequest) -> Iterator[list[dict[str, Any]]]:
    jobs = [(t, req.seed + i, req.every, req.size) for t in req.tasks for i in range(req.episodes)]
    if req.workers == 1:
        yield from map(_episode, jobs)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(req.workers, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(_episode, jobs)


def _mm(values: Sequence[float]) -> tuple[float, float]:
    arr = 1000.0 * np.asarray(values, float)
    return (float(arr.mean()), float(np.quantile(arr, 0.95))) if len(arr) else (float("nan"), float("nan"))


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Errors over every frame where the estimate is valid, and how often it is not.

    ``invalid_fraction`` counts frames without a valid tool state or without a valid object.
    """
    if not rows:
        raise ValueError("no frames")
    tool = [r for r in rows if r["valid"]]
    obj = [r for r in rows if r["object_valid"]]
    out: dict[str, Any] = {"frames": len(rows)}
    out["tip_gap_mae_mm"], out["tip_gap_p95_mm"] = _mm([r["gap_err"] for r in tool])
    out["object_centroid_err_mm"], out["object_centroid_p95_mm"] = _mm([r["centroid_err"] for r in obj])
    out["object_width_err_mm"], out["object_width_p95_mm"] = _mm([r["width_err"] for r in obj])
    out["object_height_err_mm"], _ = _mm([r["height_err"] for r in obj])
    out["invalid_fraction"] = float(np.mean([not (r["valid"] and r["object_valid"]) for r in rows]))
    out["tool_invalid_fraction"] = 1.0 - len(tool) / len(rows)
    out["object_invalid_fraction"] = 1.0 - len(obj) / len(rows)
    ms = [r["ms"] for r in rows]
    out["perceive_p50_ms"], out["perceive_p99_ms"] = statistics.median(ms), float(np.quantile(ms, 0.99))
    out["by_phase"] = {}
    for phase in sorted({r["phase"] for r in rows}):
        sel = [r for r in rows if r["phase"] == phase]
        o = [r for r in sel if r["object_valid"]]
        out["by_phase"][phase] = {
            "frames": len(sel),
            "tip_gap_mae_mm": _mm([r["gap_err"] for r in sel if r["valid"]])[0],
            "object_centroid_err_mm": _mm([r["centroid_err"] for r in o])[0],
            "object_width_err_mm": _mm([r["width_err"] for r in o])[0],
            "object_invalid_fraction": 1.0 - len(o) / len(sel),
        }
    return out


def evaluate(req: PerceptionEvalRequest, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for ep in iter_episodes(req):
        rows.extend(ep)
        if progress:
            progress(1)
    res = {"tasks": list(req.tasks), "episodes": req.episodes, "seed": req.seed, "cameras": list(CAMERAS)}
    res.update(summarize(rows))
    return res


def bench(repeats: int = 200, size: tuple[int, int] = (320, 240)) -> dict[str, float]:
    """Latency of ``perceive_depth`` on one workspace + wrist depth pair during the expert's
    descent (the object and the tool both in view): p50 / p99 over ``repeats``."""
    from perception.object_perception import LabelFreePerception
    from sim.camera import camera_intrinsics
    from sim.expert import ExpertPolicy

    env = _twin("tweezer_pick", size)
    try:
        expert = ExpertPolicy(env)
        obs = env.reset(0)
        expert.reset()
        while expert.phase not in ("descend", "close"):
            obs, *_ = env.step(expert.select_action(obs))
        perception = LabelFreePerception(env.config.cell)
        depths = {c: obs[V.depth_key(c)] for c in CAMERAS}
        intr = {c: camera_intrinsics(env.model, c, *size) for c in CAMERAS}
        q = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
        names = env.robot.joint_names
    finally:
        env.close()
    times, est = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        est = perception.perceive_depth(depths, intr, names, q)
        times.append(1000.0 * (time.perf_counter() - t0))
    return {
        "label_free_p50_ms": statistics.median(times),
        "label_free_p99_ms": float(np.quantile(times, 0.99)),
        "label_free_valid": bool(est is not None and est.valid and est.object_valid),
    }
