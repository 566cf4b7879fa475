"""Raw (un-normalized) inputs of the object-centric low level, shared by training and inference.

Everything is relative to the perceived tips so that the policy generalizes across object
positions: the object's centre offset, the point sets and the goal's tips (relative to the object).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dexhier import vocabulary as V
from policies.low_level.object_centric import POINT_SCALE

AGE_CLIP = 100.0
"""Object estimates older than this many frames count as this old."""


def proprio(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(..., A) measured arm then hand joint positions, rad."""
    return np.concatenate([np.asarray(obs[V.OBS_ARM_QPOS]), np.asarray(obs[V.OBS_HAND_QPOS])], axis=-1)


def extra(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(..., 10): tip gap, object centre minus tips (3), width, height, cos 4 yaw, sin 4 yaw,
    log(1 + age), object measured this frame (0/1)."""
    tips = np.asarray(obs[V.PERC_TIP_CENTER])
    obj = np.asarray(obs[V.PERC_OBJECT])
    age = np.minimum(np.asarray(obs[V.PERC_OBJECT_AGE]), AGE_CLIP)
    yaw4 = 4.0 * obj[..., 5:6]
    return np.concatenate(
        [np.asarray(obs[V.PERC_TIP_GAP]), obj[..., :3] - tips, obj[..., 3:5], np.cos(yaw4), np.sin(yaw4),
         np.log1p(age), np.asarray(obs[V.PERC_OBJECT_VALID])],
        axis=-1,
    )  # fmt: skip


def points(obs: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """(..., P, 3) a point set relative to the tips, in units of ``POINT_SCALE``."""
    tips = np.asarray(obs[V.PERC_TIP_CENTER])[..., None, :]
    return ((np.asarray(obs[key], np.float64) - tips) / POINT_SCALE).astype(np.float32)


def goal(goal_gap: np.ndarray, goal_tips: np.ndarray, obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(..., 4): the goal tip gap (m) and the goal tips minus the perceived object centre (m)."""
    centre = np.asarray(obs[V.PERC_OBJECT])[..., :3]
    return np.concatenate([np.asarray(goal_gap), np.asarray(goal_tips) - centre], axis=-1)


def check(obs: Mapping[str, np.ndarray]) -> None:
    """KeyError naming a missing key; ValueError for a non-finite value."""
    for key in (V.OBS_ARM_QPOS, V.OBS_HAND_QPOS, *V.PERCEPTION_KEYS):
        if key not in obs:
            raise KeyError(f"observation has no {key!r} (label-free perception's keys are needed)")
        if not np.all(np.isfinite(np.asarray(obs[key], np.float64))):
            raise ValueError(f"observation {key!r} has non-finite values")
