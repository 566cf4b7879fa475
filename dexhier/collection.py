"""Expert data collection: seeded expert episodes written in the episode format.

Episode ``i`` uses seed ``seed + i`` and is stored as index ``i``; workers write different
indices into the same dataset, each episode committed atomically.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dexhier import vocabulary as V
from dexhier.episodes import EpisodeWriter
from sim.camera import camera_intrinsics
from sim.rollout import EpisodeResult, run_episode
from sim.twin import TwinConfig, TwinEnv


@dataclass(frozen=True)
class CollectRequest:
    """An expert collection run. ``image_size`` is (width, height) in pixels."""

    task: str
    episodes: int
    seed: int
    out: Path
    workers: int = 1
    image_size: tuple[int, int] = (64, 64)
    only_success: bool = False
    perception: bool = False
    """Also run label-free perception every step and record its ``perception/*`` keys (and the
    workspace camera's image); the object-centric low level trains on them."""

    def __post_init__(self) -> None:
        TwinConfig(task=self.task)
        if self.episodes < 1 or self.workers < 1:
            raise ValueError("episodes and workers must be >= 1")


def twin_config(req: CollectRequest) -> TwinConfig:
    w, h = req.image_size
    if req.perception:
        from perception.observer import CAMERAS

        return TwinConfig(task=req.task, image_width=w, image_height=h, render=True, points=False,
                          cameras=V.CAMERAS, perception_cameras=CAMERAS)  # fmt: skip
    return TwinConfig(task=req.task, image_width=w, image_height=h, render=True, points=False)


def dataset_meta(env: TwinEnv) -> dict[str, Any]:
    """Dataset-level metadata: names, sizes and rates every episode of the dataset shares."""
    cfg = env.config
    return {
        "source": "expert",
        "task": cfg.task,
        "arm_joints": list(env.robot.arm_joints),
        "hand_joints": list(env.robot.hand_joints),
        "action_names": list(env.action_spec.names),
        "action_lower": env.action_spec.lower.tolist(),
        "action_upper": env.action_spec.upper.tolist(),
        "cameras": list(cfg.cameras),
        "image_size": [cfg.image_width, cfg.image_height],
        "intrinsics": {
            cam: camera_intrinsics(env.model, cam, cfg.image_width, cfg.image_height).matrix().tolist()
            for cam in cfg.cameras
        },
        "control_hz": cfg.control_hz,
        "physics_hz": cfg.cell.physics_hz,
        "tool": {
            "arm_length": env.tool.arm_length,
            "gap_at_zero": env.tool.gap_at_zero,
            "max_gap": env.tool.max_gap,
        },
        "frame": V.FRAME_BASE,
        **(
            {"perception": {"cameras": list(cfg.perception_cameras), "size": list(cfg.perception_size)}}
            if cfg.perception_cameras
            else {}
        ),
    }


def _step_record(env: TwinEnv, obs: dict[str, np.ndarray], info: dict[str, Any], t: float) -> dict[str, Any]:
    rec: dict[str, Any] = {V.STEP_TIME: t}
    for key in (V.OBS_ARM_QPOS, V.OBS_ARM_QVEL, V.OBS_HAND_QPOS, V.OBS_HAND_QVEL, V.OBS_TOOL_TIP_GAP):
        rec[key] = obs[key]
    for cam in env.config.cameras:
        rec[V.rgb_key(cam)] = obs[V.rgb_key(cam)]
        rec[V.depth_key(cam)] = obs[V.depth_key(cam)]
        rec[V.camera_pose_key(cam)] = obs[V.camera_pose_key(cam)]
    rec[V.ACTION] = info["action_sent"]
    rec[V.ACTION_REQUEST] = info["action_request"]
    return rec


_WORKER: dict[str, Any] = {}


def _collect_one(job: tuple[CollectRequest, int]) -> EpisodeResult:
    req, index = job
    key = (req.task, req.image_size, str(req.out), req.perception)
    if _WORKER.get("key") != key:  # one env per worker process and request
        from sim.expert import ExpertPolicy

        if "env" in _WORKER:
            _WORKER["env"].close()
        env = TwinEnv(twin_config(req))
        writer = EpisodeWriter(req.out, dataset_meta(env))
        observer = None
        if req.perception:
            from perception.observer import ObjectObserver

            observer = ObjectObserver(env.config.cell)
        _WORKER.update(key=key, env=env, expert=ExpertPolicy(env), writer=writer, observer=observer)
    env, expert, writer, observer = _WORKER["env"], _WORKER["expert"], _WORKER["writer"], _WORKER["observer"]
    if observer is not None:
        observer.reset()
    steps: list[dict[str, Any]] = []
    poses: list[dict[str, np.ndarray]] = []

    def record(obs: dict[str, np.ndarray], action: np.ndarray, info: dict[str, Any]) -> None:
        # obs is the observation the action was computed from; its time is one period earlier.
        t = float(env.data.time) - 1.0 / env.config.control_hz
        steps.append(_step_record(env, obs, info, t))
        st = info["privileged"]
        poses.append({"privileged/object_pos": st.object_pos, "privileged/tip_center": st.tip_center})
        if observer is not None:
            poses[-1].update(observer.observe(obs, env.robot.joint_names))

    result = run_episode(env, expert, req.seed + index, on_step=record)
    if req.only_success and not result.success:
        return result
    with writer.begin(index, env.episode_metadata()) as rec:
        for s, p in zip(steps, poses, strict=True):
            rec.add_step({**s, **p})
        rec.commit(success=result.success, meta={"final_sim_time": result.sim_time})
    return result


def collect(req: CollectRequest) -> Iterator[EpisodeResult]:
    """Run the collection; yields each episode's result in index order."""
    req.out.mkdir(parents=True, exist_ok=True)
    env = TwinEnv(twin_config(req))
    EpisodeWriter(req.out, dataset_meta(env))  # create (or check) dataset.json once, up front
    env.close()
    jobs = [(req, i) for i in range(req.episodes)]
    if req.workers == 1:
        for job in jobs:
            yield _collect_one(job)
        return
    with ProcessPoolExecutor(
        max_workers=min(req.workers, len(jobs)), mp_context=mp.get_context("spawn")
    ) as pool:
        yield from pool.map(_collect_one, jobs)
