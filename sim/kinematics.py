"""Forward kinematics of the cell's robot from named joint positions (no simulation state).

A real cell knows where its tool mount is from its joint encoders; perception uses that pose to
crop and canonicalize tool clouds. This computes it from the same model the twin uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np

from sim.camera import camera_pose_matrix
from sim.cell import CellConfig, ObjectParams, build_cell


class ToolMountKinematics:
    """Pose of the hand's tool-mount site in the base frame, from joint positions matched by name."""

    def __init__(self, cell: CellConfig | None = None) -> None:
        self.cell = cell or CellConfig()
        self.model, self.robot = build_cell(self.cell, ObjectParams())
        self.data = mujoco.MjData(self.model)
        self._adr = dict(zip(self.robot.joint_names, self.robot.qpos_adr, strict=True))
        self._site = self.model.site(self.cell.tool_mount_site).id

    def pose(self, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
        """(4, 4) pose; joints missing from ``names`` keep their last value. ValueError on NaN / length."""
        q = np.asarray(positions, dtype=np.float64)
        if q.shape != (len(names),) or not np.all(np.isfinite(q)):
            raise ValueError(f"need {len(names)} finite joint positions, got {q.shape}")
        arm = set(self.robot.arm_joints)
        if not arm <= set(names):
            raise ValueError(f"missing arm joints: {sorted(arm - set(names))}")
        for name, value in zip(names, q, strict=True):
            if name in self._adr:
                self.data.qpos[self._adr[name]] = value
        mujoco.mj_kinematics(self.model, self.data)
        return self._mount_pose()

    def _mount_pose(self) -> np.ndarray:
        pose = np.eye(4)
        pose[:3, :3] = self.data.site_xmat[self._site].reshape(3, 3)
        pose[:3, 3] = self.data.site_xpos[self._site]
        return pose

    def camera_in_mount(self, camera: str) -> np.ndarray:
        """(4, 4) pose of ``camera``'s optical frame (x right, y down, z forward) in the tool-mount
        frame, from the model: the hand-eye calibration of a camera on the hand, by design.

        Raises KeyError for a camera the model does not have.
        """
        mujoco.mj_forward(self.model, self.data)  # camera poses need more than mj_kinematics
        try:
            cam = camera_pose_matrix(self.data, camera)
        except KeyError as err:
            names = [self.model.camera(i).name for i in range(self.model.ncam)]
            raise KeyError(f"no camera {camera!r} in the cell model; it has {names}") from err
        return np.linalg.inv(self._mount_pose()) @ cam
