"""Differential inverse kinematics of the arm for the tool-tip frame (mink, DAQP QP solver).

The IK model is the arm alone with a site ``ik_tcp`` at the tool-tip centre, placed from
the flange by the pose the cell measures (hand mount + tool weld), so the IK solves for the
tool tips without the hand's or the tool's joints in the problem.
"""

from __future__ import annotations

import math

import mink
import mujoco
import numpy as np

from sim.cell import CellConfig
from sim.robots import ur5e_like_arm

IK_SITE = "ik_tcp"


def tool_down_rotation(yaw: float) -> np.ndarray:
    """Rotation (3, 3) of a tool frame pointing straight down with its pinch axis (y) at ``yaw`` (rad)."""
    y = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([np.cross(y, z), y, z], axis=1)


class ArmIK:
    """Tool-tip IK for the arm of a cell.

    Args:
        cell: the cell configuration (which arm MJCF and flange site).
        arm_joints: the arm's joint names, in action order.
        tcp_pos, tcp_rot: the tool-tip pose in the flange frame (m, rotation (3, 3)).
        dt: integration step of the differential IK, s.
    """

    def __init__(
        self,
        cell: CellConfig,
        arm_joints: tuple[str, ...],
        tcp_pos: np.ndarray,
        tcp_rot: np.ndarray,
        dt: float = 0.05,
    ) -> None:
        spec = (
            mujoco.MjSpec.from_file(str(cell.arm_mjcf))
            if cell.arm_mjcf
            else mujoco.MjSpec.from_string(ur5e_like_arm.arm_mjcf())
        )
        flange = spec.site(cell.arm_flange_site)
        fq = np.array(flange.quat, float)
        tq = np.zeros(4)
        mujoco.mju_mat2Quat(tq, np.asarray(tcp_rot, float).ravel())
        p, q = np.zeros(3), np.zeros(4)
        mujoco.mju_mulPose(p, q, np.array(flange.pos, float), fq / np.linalg.norm(fq), tcp_pos, tq)
        flange.parent.add_site(name=IK_SITE, pos=p, quat=q)
        self.model = spec.compile()
        self.dt = dt
        self._qadr = np.array([self.model.jnt_qposadr[self.model.joint(j).id] for j in arm_joints])
        self._conf = mink.Configuration(self.model)
        self._frame = mink.FrameTask(
            IK_SITE, "site", position_cost=1.0, orientation_cost=0.5, lm_damping=1e-3
        )
        self._posture = mink.PostureTask(self.model, cost=1e-3)
        self._limits = [mink.ConfigurationLimit(self.model)]

    def reset(self, arm_q: np.ndarray) -> None:
        """Start from arm joint positions ``arm_q`` (rad); they also become the posture target."""
        q = np.zeros(self.model.nq)
        q[self._qadr] = arm_q
        self._conf.update(q)
        self._posture.set_target(q.copy())

    @property
    def q(self) -> np.ndarray:
        """Current IK solution for the arm joints (rad)."""
        return self._conf.q[self._qadr].copy()

    def solve(self, pos: np.ndarray, rot: np.ndarray, iterations: int = 3) -> np.ndarray:
        """Move the solution towards tool-tip pose (``pos`` m, ``rot`` (3, 3)); returns arm joints (rad)."""
        self._frame.set_target(mink.SE3.from_rotation_and_translation(mink.SO3.from_matrix(rot), pos))
        for _ in range(iterations):
            tasks = [self._frame, self._posture]
            vel = mink.solve_ik(self._conf, tasks, self.dt, solver="daqp", damping=1e-3, limits=self._limits)
            self._conf.integrate_inplace(vel, self.dt)
        return self.q

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Tool-tip pose of the current solution: (position (3,), rotation (3, 3))."""
        return (
            self._conf.get_transform_frame_to_world(IK_SITE, "site").translation(),
            self._conf.get_transform_frame_to_world(IK_SITE, "site").rotation().as_matrix(),
        )
