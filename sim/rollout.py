"""Running one seeded episode of a policy in the twin."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from sim.twin import TwinEnv
from sim.video import VideoWriter


class RolloutPolicy(Protocol):
    """What a rollout needs from a policy: ``reset()`` per episode, one action per step."""

    def reset(self) -> None: ...

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass
class EpisodeResult:
    """Outcome of one episode. Times in s, widths in m."""

    seed: int
    task: str
    success: bool
    steps: int
    sim_time: float
    wall_time: float
    object: dict = field(default_factory=dict)
    instruction: str = ""
    physics_diverged: bool = False
    policy_info: dict = field(default_factory=dict)
    """What the policy says of its episode (``episode_info()``, optional): the hierarchy's furthest
    stage and retries."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


StepHook = Callable[[dict[str, np.ndarray], np.ndarray, dict[str, Any]], None]


def run_episode(
    env: TwinEnv,
    policy: RolloutPolicy,
    seed: int,
    video: VideoWriter | None = None,
    video_size: tuple[int, int] = (320, 240),
    on_step: StepHook | None = None,
) -> EpisodeResult:
    """Reset ``env`` with ``seed``, run ``policy`` until success or time-out.

    ``on_step(obs, action, info)`` is called after every step with the observation the
    action was computed from (used by the episode recorder).
    """
    start = time.perf_counter()
    obs = env.reset(seed)
    policy.reset()
    steps, info = 0, {"success": False, "physics_diverged": False}
    if video is not None:
        video.append(_video_frame(env, video_size, _inset(policy)))
    while True:
        action = policy.select_action(obs)
        next_obs, _reward, terminated, truncated, info = env.step(action)
        steps += 1
        if on_step is not None:
            on_step(obs, action, info)
        if video is not None:
            video.append(_video_frame(env, video_size, _inset(policy)))
        obs = next_obs
        if terminated or truncated:
            break
    episode_info = getattr(policy, "episode_info", None)
    return EpisodeResult(
        seed=seed,
        task=env.instance.task,
        success=bool(info["success"]),
        steps=steps,
        sim_time=float(env.data.time),
        wall_time=time.perf_counter() - start,
        object=asdict(env.instance.object),
        instruction=env.instance.instruction,
        physics_diverged=bool(info["physics_diverged"]),
        policy_info=dict(episode_info()) if callable(episode_info) else {},
    )


def _inset(policy: RolloutPolicy) -> np.ndarray | None:
    """The policy's current goal image for videos, if it has one (``video_inset()``)."""
    inset = getattr(policy, "video_inset", None)
    if not callable(inset):
        return None
    image = inset()
    return np.zeros((8, 8, 3), np.uint8) if image is None else image  # black until the first goal


def _video_frame(env: TwinEnv, size: tuple[int, int], inset: np.ndarray | None = None) -> np.ndarray:
    """Scene view beside the wrist view, each ``size`` = (width, height); with ``inset`` (a policy's
    goal image, uint8 (S, S, 3)) a third, square panel shows it scaled to the frame height."""
    w, h = size
    panels = [env.render("scene", w, h), env.render("wrist", w, h)]
    if inset is not None:
        idx = np.arange(h) * inset.shape[0] // h  # nearest-neighbour upscale: keeps the pixels honest
        panels.append(np.ascontiguousarray(inset[idx][:, idx]))
    return np.concatenate(panels, axis=1)
