"""Oracle goals for the low-level policy: subgoals taken from an expert rollout of the same seed.

A stand-in for the high level in evaluation. Before an episode, the privileged expert solves the
same seeded instance in a separate twin and its goal-camera frames and tip gaps are kept. While the
policy runs, a progress index tracks the expert frame nearest to the robot's measured joints
(it only moves forward, within ``window`` frames) and the goal is the frame ``lookahead`` steps
after it (the last frame at the end). Only proprio is used for tracking, never privileged state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dexhier import vocabulary as V
from sim.twin import TwinConfig, TwinEnv


@dataclass(frozen=True)
class OracleConfig:
    """Tracking settings, in control steps. ``hand_weight`` scales hand vs arm joint distances."""

    lookahead: int = 20
    window: int = 30
    hand_weight: float = 0.25

    def __post_init__(self) -> None:
        if self.lookahead < 0 or self.window < 1 or self.hand_weight < 0:
            raise ValueError("lookahead must be >= 0, window >= 1, hand_weight >= 0")


@dataclass
class ExpertReference:
    """An expert rollout: per frame the goal image (T, S, S, 3), joints (T, A) and tip gap (T,)."""

    images: np.ndarray
    joints: np.ndarray
    tip_gap: np.ndarray
    success: bool
    tip_center: np.ndarray | None = None
    """(T, 3) tips' midpoint in ``base_link`` by forward kinematics of the expert's joints at its
    tip gap (``tips=True``), m."""


class OracleGoals:
    """Goals for one twin task, from the expert's rollout of each episode's seed.

    Args:
        env_config: the evaluated env's config (task, cell, image size); the oracle renders only
            ``goal_camera``.
    """

    def __init__(
        self, env_config: TwinConfig, goal_camera: str, config: OracleConfig | None = None, tips: bool = False
    ) -> None:
        from sim.expert import ExpertPolicy

        self.config = config or OracleConfig()
        self._geometry = None
        if tips:
            from perception.cell_geometry import CellGeometry

            self._geometry = CellGeometry(env_config.cell)
        self.goal_camera = goal_camera
        cfg = replace(env_config, render=True, points=False, cameras=(goal_camera,))
        self.env = TwinEnv(cfg)
        self.expert = ExpertPolicy(self.env)
        self.reference: ExpertReference | None = None
        self._progress = 0

    def prepare(self, seed: int) -> ExpertReference:
        """Run the expert on ``seed`` and keep its frames; resets the progress tracking."""
        env, key = self.env, V.rgb_key(self.goal_camera)
        obs = env.reset(seed)
        self.expert.reset()
        images, joints, gaps = [], [], []

        def keep(o: dict[str, np.ndarray]) -> None:
            images.append(o[key])
            joints.append(np.concatenate([o[V.OBS_ARM_QPOS], o[V.OBS_HAND_QPOS]]))
            gaps.append(float(o[V.OBS_TOOL_TIP_GAP][0]))

        keep(obs)
        success = False
        while True:
            obs, _r, terminated, truncated, info = env.step(self.expert.select_action(obs))
            keep(obs)
            if terminated or truncated:
                success = bool(info["success"])
                break
        self.reference = ExpertReference(np.stack(images), np.stack(joints), np.asarray(gaps), success)
        if self._geometry is not None:
            geo, names, tool = self._geometry, env.robot.joint_names, env.tool
            self._names = names
            tips = []
            for q, gap in zip(self.reference.joints, self.reference.tip_gap, strict=True):
                geo.set_joints(names, q, theta=tool.theta_for_gap(gap))
                tips.append(geo.tip_center())
            self.reference.tip_center = np.stack(tips)
        self._progress = 0
        return self.reference

    @property
    def progress(self) -> int:
        """Index of the expert frame matched to the robot's current joints."""
        return self._progress

    def goal(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        """The goal for the current observation: ``goal/rgb`` and ``goal/tool/tip_gap``."""
        ref, cfg = self.reference, self.config
        if ref is None:
            raise RuntimeError("OracleGoals.prepare(seed) must run before goal()")
        q = np.concatenate([np.asarray(obs[V.OBS_ARM_QPOS]), np.asarray(obs[V.OBS_HAND_QPOS])])
        n_arm = len(obs[V.OBS_ARM_QPOS])
        lo, hi = self._progress, min(self._progress + cfg.window, len(ref.joints) - 1)
        if ref.tip_center is not None:
            # Track by the tool's state: the tips (FK of the measured joints) and the tip gap (perceived
            # when given). Joints alone confuse a tool still open above the grasp with the expert's lift.
            geo = self._geometry
            geo.set_joints(self._names, q)
            gap = float(np.asarray(obs.get(V.PERC_TIP_GAP, obs[V.OBS_TOOL_TIP_GAP]))[0])
            dist = np.linalg.norm(ref.tip_center[lo : hi + 1] - geo.tip_center(), axis=1) + np.abs(
                ref.tip_gap[lo : hi + 1] - gap
            )
        else:
            diff = ref.joints[lo : hi + 1] - q
            dist = np.linalg.norm(diff[:, :n_arm], axis=1) + cfg.hand_weight * np.linalg.norm(
                diff[:, n_arm:], axis=1
            )
        # Ties go to the latest frame, so that a still stretch of the expert cannot hold progress.
        self._progress = hi - int(np.argmin(dist[::-1]))
        g = min(self._progress + cfg.lookahead, len(ref.joints) - 1)
        out = {V.GOAL_RGB: ref.images[g], V.GOAL_TOOL_TIP_GAP: np.array([ref.tip_gap[g]])}
        if ref.tip_center is not None:
            out[V.GOAL_TOOL_TIP_CENTER] = ref.tip_center[g]
        return out

    def close(self) -> None:
        self.env.close()
