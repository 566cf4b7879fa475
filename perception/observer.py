"""Label-free perception as an observation: the ``perception/*`` keys a policy reads.

``ObjectObserver`` runs ``LabelFreePerception`` on a frame's perception depth images and the
measured joints, and keeps the last valid estimates: while the object is occluded it has not
moved unless touched, so its last estimate is held (``perception/object_age`` counts the frames
since it was measured); the same for the tool state. The collector records these keys and the
policies read them, in-process and on a cell alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dexhier import vocabulary as V
from perception.object_perception import LabelFreePerception, Perceived, PerceptionConfig
from sim.camera import camera_intrinsics
from sim.cell import CellConfig

CAMERAS: tuple[str, ...] = ("workspace", "wrist")
"""Perception's cameras: the object from the fixed workspace camera, the tool's opening from the
wrist camera (chosen by measurement: docs/benchmarks.md, "Label-free perception")."""
TOOL_CAMERA = "wrist"


class ObjectObserver:
    """Per-frame ``perception/*`` keys from depth images and joint states, holding the last
    valid estimates. Lifecycle: ``reset()`` at every episode start, then ``observe`` per step."""

    track_frames = 40
    track_noise = 0.01
    """m: an object estimate may move this much without the tips moving (perception noise)."""
    """The last object estimate anchors the search for this many frames after it was measured."""

    def __init__(self, cell: CellConfig | None = None, config: PerceptionConfig | None = None) -> None:
        self.perception = LabelFreePerception(cell, config)
        self.n_points = self.perception.config.n_points
        self._intr: dict[tuple[str, tuple[int, int]], object] = {}
        self.reset()

    def reset(self) -> None:
        self._tool: Perceived | None = None
        self._object: Perceived | None = None
        self._age = 0
        self._mount_at_object = np.zeros(3)

    def intrinsics(self, camera: str, shape: tuple[int, int]):
        """Pinhole intrinsics of a cell camera for a depth image of ``shape`` (H, W)."""
        key = (camera, shape)
        if key not in self._intr:
            model = self.perception.geometry.model
            self._intr[key] = camera_intrinsics(model, camera, shape[1], shape[0])
        return self._intr[key]

    def observe_depth(
        self, depths: Mapping[str, np.ndarray], joint_names: Sequence[str], joint_positions: Sequence[float]
    ) -> dict[str, np.ndarray]:
        """The perception keys for one frame (camera -> float (H, W) depth in m)."""
        return self.update(self.perceive(depths, joint_names, joint_positions))

    def perceive(
        self, depths: Mapping[str, np.ndarray], joint_names: Sequence[str], joint_positions: Sequence[float]
    ) -> Perceived:
        """This frame's estimate, the object searched near its last estimate (no state change:
        ``update`` folds it in)."""
        intr = {c: self.intrinsics(c, np.shape(d)[:2]) for c, d in depths.items()}
        # Track the object from its last estimate while that is recent: the cluster nearest the tips
        # can be something else (tool residue where the tips touch the table).
        prior = None
        if self._object is not None and self._age <= self.track_frames:
            # It has not moved unless the tips carried it: allow some noise plus the tips' travel.
            try:
                self.perception.geometry.set_joints(joint_names, joint_positions)
                travel = np.linalg.norm(self.perception.geometry.mount_pose()[:3, 3] - self._mount_at_object)
                prior = (self._object.object_center, self.track_noise + float(travel))
            except ValueError:
                prior = None
        return self.perception.perceive_depth(
            depths, intr, joint_names, joint_positions, tool_camera=TOOL_CAMERA, prior=prior
        )

    def observe(self, obs: Mapping[str, np.ndarray], joint_names: Sequence[str]) -> dict[str, np.ndarray]:
        """The perception keys from a twin or cell observation with ``depth_hd/<camera>`` keys."""
        q = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
        return self.observe_depth({c: obs[V.depth_hd_key(c)] for c in CAMERAS}, joint_names, q)

    def update(self, est: Perceived) -> dict[str, np.ndarray]:
        """Fold one estimate into the held state and return the keys."""
        if est.valid:
            self._tool = est
        if est.object_valid:
            self._object, self._age = est, 0
            self._mount_at_object = self.perception.geometry.mount_pose()[:3, 3].copy()
        else:
            self._age += 1
        tool, obj = self._tool, self._object
        tip = np.zeros(3)
        if tool is not None:  # at the current joints (already posed) and the last measured opening
            self.perception.geometry.set_theta(tool.opening_angle)
            tip = self.perception.geometry.tip_center()
        zeros = np.zeros((self.n_points, 3), np.float32)
        return {
            V.PERC_VALID: np.array([1.0 if est.valid else 0.0]),
            V.PERC_TIP_GAP: np.array([tool.tip_gap if tool else 0.0]),
            V.PERC_TIP_CENTER: tip,
            V.PERC_OBJECT_VALID: np.array([1.0 if est.object_valid else 0.0]),
            V.PERC_OBJECT_AGE: np.array([float(self._age if obj else 10_000)]),
            V.PERC_OBJECT: (
                np.array([*obj.object_center, obj.object_width, obj.object_height, obj.object_yaw])
                if obj
                else np.zeros(6)
            ),
            V.PERC_TOOL_POINTS: tool.tool_points if tool else zeros,
            V.PERC_OBJECT_POINTS: obj.object_points if obj else zeros,
        }
