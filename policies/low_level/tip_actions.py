"""Tip-frame actions: the object-centric low level can act in the tool-tip frame instead of joints.

An action step is ``[tips target - tips now (3, m), yaw target - yaw now (1, rad), hand joint
targets - hand joints now (n_hand, rad)]``; the tool points straight down (the expert's tool frame),
so position and yaw are its pose. The arm joints follow from the tool-tip IK the expert uses
(``sim.ik.ArmIK``, mink differential IK), so the network learns object-relative Cartesian
targets instead of the arm's inverse kinematics. Poses of measured or commanded joints come from
forward kinematics of the configured cell (``CellGeometry``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from perception.cell_geometry import CellGeometry
from sim.cell import CellConfig
from sim.ik import ArmIK, tool_down_rotation


def wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(angle) + math.pi) % (2 * math.pi) - math.pi


class TipKinematics:
    """Tool-tip pose (position, pinch-axis yaw) of joint vectors, and the IK back to the arm."""

    def __init__(self, joint_names: Sequence[str], cell: CellConfig | None = None) -> None:
        self.geo = CellGeometry(cell)
        self.names = tuple(joint_names)
        self.n_arm = len(self.geo.robot.arm_joints)
        geo, m = self.geo, self.geo.model
        geo.set_joints(self.names, np.asarray(geo.robot.home, float))
        flange = m.site(geo.cell.arm_flange_site).id
        fp, fr = geo.data.site_xpos[flange].copy(), geo.data.site_xmat[flange].reshape(3, 3).copy()
        tip = m.site("tweezer_tip_center").id
        tp, tr = geo.data.site_xpos[tip], geo.data.site_xmat[tip].reshape(3, 3)
        self.tcp_pos, self.tcp_rot = fr.T @ (tp - fp), fr.T @ tr
        self._tip = tip
        self.ik: ArmIK | None = None

    def pose(self, q: np.ndarray) -> tuple[np.ndarray, float]:
        """Tips' midpoint (3,) m and pinch-axis yaw (rad) of joints ``q`` (A,)."""
        self.geo.set_joints(self.names, q)
        rot = self.geo.data.site_xmat[self._tip].reshape(3, 3)
        return self.geo.data.site_xpos[self._tip].copy(), math.atan2(rot[1, 1], rot[0, 1])

    def poses(self, qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, 3) positions and (T,) yaws of joint rows ``qs`` (T, A)."""
        out = [self.pose(q) for q in qs]
        return np.stack([p for p, _ in out]), np.array([y for _, y in out])

    def reset_ik(self, arm_q: np.ndarray, dt: float) -> None:
        if self.ik is None:
            self.ik = ArmIK(self.geo.cell, self.geo.robot.arm_joints, self.tcp_pos, self.tcp_rot, dt=dt)
        self.ik.reset(arm_q)

    def joints(self, q_now: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Absolute joint targets (K, A) for tip-frame action offsets (K, 4 + n_hand), through the
        IK from its current solution; ``q_now`` (A,) is the measured joints the offsets refer to."""
        pos, yaw = self.pose(q_now)
        out = np.empty((len(offsets), len(q_now)))
        for k, a in enumerate(offsets):
            arm = self.ik.solve(pos + a[:3], tool_down_rotation(yaw + float(a[3])))
            out[k, : self.n_arm] = arm
            out[k, self.n_arm :] = q_now[self.n_arm :] + a[4:]
        return out


def tip_rows(kin: TipKinematics, joints: np.ndarray) -> np.ndarray:
    """The tip-frame form (T, 4 + n_hand) of joint rows (T, A): [position, yaw, hand joints];
    ``OCData`` takes offsets of commanded rows from measured ones."""
    pos, yaw = kin.poses(joints)
    return np.concatenate([pos, yaw[:, None], joints[:, kin.n_arm :]], axis=1)
