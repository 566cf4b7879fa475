"""The configured cell's known geometry at measured joint positions: what perception masks out.

A real cell knows its own robot, tool and fixtures: their shapes come from the same model the twin
is built from (``sim.cell.build_cell`` of the *configured* ``CellConfig``), and their poses from
forward kinematics of the measured joint states. The tweezer's opening is not measured (its hinges
are passive), so the tool's arms are posed at a candidate half-opening angle ``theta`` that
perception fits to the cloud.

Distances are signed distances to the geoms' primitive shapes (m; negative inside). Meshes and
other shapes are approximated by their bounding boxes (``geom_aabb``). Nothing here reads the
twin's simulation state: the model is built from the configuration with a placeholder object.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np

from sim import tool as tool_mod
from sim.camera import camera_pose_matrix
from sim.cell import OBJECT_BODY, CellConfig, ObjectParams, build_cell
from sim.cell_model import set_tool_at_weld, tool_joint_addresses

_G = mujoco.mjtGeom


def _descendants(model: mujoco.MjModel, root: int) -> set[int]:
    out = {root}
    for b in range(root + 1, model.nbody):  # bodies are stored parents first
        if model.body_parentid[b] in out:
            out.add(b)
    return out


def _quat_mat(quat: np.ndarray) -> np.ndarray:
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=np.float64))
    return mat.reshape(3, 3)


def geom_sdf(local: np.ndarray, gtype: int, size: np.ndarray, aabb: np.ndarray) -> np.ndarray:
    """Signed distance (m) of points ``local`` (N, 3), given in the geom's frame, to the geom."""
    if gtype == _G.mjGEOM_SPHERE:
        return np.linalg.norm(local, axis=1) - size[0]
    if gtype == _G.mjGEOM_CAPSULE:
        z = np.clip(local[:, 2], -size[1], size[1])
        return np.sqrt(local[:, 0] ** 2 + local[:, 1] ** 2 + (local[:, 2] - z) ** 2) - size[0]
    if gtype == _G.mjGEOM_CYLINDER:
        radial = np.sqrt(local[:, 0] ** 2 + local[:, 1] ** 2) - size[0]
        axial = np.abs(local[:, 2]) - size[1]
        outside = np.sqrt(np.maximum(radial, 0) ** 2 + np.maximum(axial, 0) ** 2)
        return outside + np.minimum(np.maximum(radial, axial), 0.0)
    if gtype == _G.mjGEOM_BOX:
        centre, half = np.zeros(3), size[:3]
    else:  # ellipsoid, mesh, ...: the bounding box (a conservative mask)
        centre, half = aabb[:3], aabb[3:]
    q = np.abs(local - centre) - half
    pos = np.maximum(q, 0.0)
    return np.sqrt(np.einsum("ij,ij->i", pos, pos)) + np.minimum(q.max(axis=1), 0.0)


class CellGeometry:
    """Geoms of the robot, the tool and the fixtures of a configured cell, posed by joint states.

    Lifecycle: build once per cell (compiles the model, ~50 ms), then per frame call
    :meth:`set_joints` with the measured joints, and query distances. Not thread-safe.
    """

    def __init__(self, cell: CellConfig | None = None) -> None:
        self.cell = cell or CellConfig()
        self.model, self.robot = build_cell(self.cell, ObjectParams())
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._adr = dict(zip(self.robot.joint_names, self.robot.qpos_adr, strict=True))
        self._tool_qadr, _ = tool_joint_addresses(m)
        self._mount_site = m.site(self.cell.tool_mount_site).id
        arm_bodies = {m.body(b).id for b in tool_mod.ARM_BODIES}
        skip = {0, m.body(OBJECT_BODY).id}  # the table is a plane fitted from the cloud; the object is sought
        visible = [g for g in range(m.ngeom) if m.geom_rgba[g, 3] > 0 and m.geom_group[g] < 3]
        self.tool_arm_geoms = np.array([g for g in visible if m.geom_bodyid[g] in arm_bodies], dtype=np.int64)
        self.static_geoms = np.array(
            [
                g
                for g in visible
                if m.geom_bodyid[g] not in arm_bodies | skip and m.geom_type[g] != _G.mjGEOM_PLANE
            ],
            dtype=np.int64,
        )
        self.theta_range = (self.cell.tool.theta_closed, self.cell.tool.theta_open + 0.02)
        self.tip_sites = [m.site(s).id for s in tool_mod.TIP_SITES]
        self._base_body = m.body(tool_mod.BASE_BODY).id
        # Per arm: (body position and rotation in the tool base, hinge point and unit axis in the
        # arm body, [(geom id, geom position, rotation in the arm body)]), for the vectorized fit.
        self._arms = []
        for body_name, joint in zip(tool_mod.ARM_BODIES, self._tool_qadr, strict=True):
            b = m.body(body_name).id
            jid = int(np.nonzero(m.jnt_qposadr == joint)[0][0])
            geoms = [(g, m.geom_pos[g].copy(), _quat_mat(m.geom_quat[g])) for g in self.tool_arm_geoms
                     if m.geom_bodyid[g] == b]  # fmt: skip
            axis = m.jnt_axis[jid] / np.linalg.norm(m.jnt_axis[jid])
            self._arms.append(
                (m.body_pos[b].copy(), _quat_mat(m.body_quat[b]), m.jnt_pos[jid].copy(), axis, geoms)
            )

    # ------------------------------------------------------------------ posing
    def set_joints(
        self, names: Sequence[str], positions: Sequence[float], theta: float | None = None
    ) -> None:
        """Pose the robot at measured joints (matched by name) and the tool at half-opening ``theta``
        (rad; None keeps the last). Raises ValueError on non-finite values or missing arm joints."""
        q = np.asarray(positions, dtype=np.float64)
        if q.shape != (len(names),) or not np.all(np.isfinite(q)):
            raise ValueError(f"need {len(names)} finite joint positions, got shape {q.shape}")
        missing = set(self.robot.arm_joints) - set(names)
        if missing:
            raise ValueError(f"missing arm joints: {sorted(missing)}")
        for name, value in zip(names, q, strict=True):
            adr = self._adr.get(name)
            if adr is not None:
                self.data.qpos[adr] = value
        if theta is not None:
            self.data.qpos[self._tool_qadr] = theta
        mujoco.mj_kinematics(self.model, self.data)
        self._place_tool()

    def set_theta(self, theta: float, theta_b: float | None = None) -> None:
        """Re-pose only the tool's arms at half-opening ``theta`` (rad); ``theta_b`` sets the second
        arm's angle apart (default: the same)."""
        self.data.qpos[self._tool_qadr[0]] = theta
        self.data.qpos[self._tool_qadr[1]] = theta if theta_b is None else theta_b
        mujoco.mj_kinematics(self.model, self.data)
        self._place_tool()

    def _place_tool(self) -> None:
        # The tool hangs on a weld, not a joint: put its free body where the weld holds it.
        set_tool_at_weld(self.model, self.data)
        mujoco.mj_kinematics(self.model, self.data)

    # ------------------------------------------------------------------ queries
    def mount_pose(self) -> np.ndarray:
        """(4, 4) pose of the tool-mount site in the base frame."""
        pose = np.eye(4)
        pose[:3, :3] = self.data.site_xmat[self._mount_site].reshape(3, 3)
        pose[:3, 3] = self.data.site_xpos[self._mount_site]
        return pose

    def camera_pose(self, camera: str) -> np.ndarray:
        """(4, 4) pose of ``camera``'s optical frame in the base frame at the current joints: the
        calibrated mount of a fixed camera, forward kinematics for one on the hand.
        KeyError for a camera the cell does not have."""
        try:
            self.model.camera(camera)
        except KeyError:
            names = [self.model.camera(i).name for i in range(self.model.ncam)]
            raise KeyError(f"no camera {camera!r} in the cell; it has {names}") from None
        mujoco.mj_camlight(self.model, self.data)
        return camera_pose_matrix(self.data, camera)

    def tip_center(self) -> np.ndarray:
        """(3,) midpoint of the two tips at the current pose and ``theta``, base frame (m)."""
        return np.mean([self.data.site_xpos[s] for s in self.tip_sites], axis=0)

    def distance(self, points: np.ndarray, geoms: np.ndarray) -> np.ndarray:
        """(N,) smallest signed distance (m) of base-frame ``points`` (N, 3) to ``geoms``."""
        m, d = self.model, self.data
        best = np.full(len(points), np.inf)
        for g in geoms:
            rot = d.geom_xmat[g].reshape(3, 3)
            local = (points - d.geom_xpos[g]) @ rot
            best = np.minimum(best, geom_sdf(local, int(m.geom_type[g]), m.geom_size[g], m.geom_aabb[g]))
        return best

    def tool_arm_distance_grid(
        self, points: np.ndarray, thetas: np.ndarray, per_arm: bool = False
    ) -> np.ndarray:
        """(K, N) distance (m) of base-frame ``points`` (N, 3) to the tool's arms at each of the
        half-openings ``thetas`` (K,) rad, in one vectorized pass (no kinematics per angle);
        ``per_arm``: (2, K, N), each arm's own distance."""
        m, d = self.model, self.data
        rot = d.xmat[self._base_body].reshape(3, 3)
        in_base = (points - d.xpos[self._base_body]) @ rot
        cos, sin = np.cos(-thetas)[:, None, None], np.sin(-thetas)[:, None, None]
        out = np.full((len(self._arms), len(thetas), len(points)), np.inf)
        for arm, (body_pos, body_rot, hinge, axis, geoms) in enumerate(self._arms):
            v = (in_base - body_pos) @ body_rot - hinge  # in the arm body at theta = 0, about the hinge
            # Rodrigues: the point rotated by -theta about the hinge axis is the arm rotated by +theta.
            cross, dot = np.cross(axis, v), (v @ axis)[:, None]
            q = v[None] * cos + cross[None] * sin + axis * dot[None] * (1.0 - cos) + hinge
            flat = q.reshape(-1, 3)
            for g, gpos, grot in geoms:
                sdf = geom_sdf((flat - gpos) @ grot, int(m.geom_type[g]), m.geom_size[g], m.geom_aabb[g])
                out[arm] = np.minimum(out[arm], sdf.reshape(len(thetas), len(points)))
        return out if per_arm else out.min(axis=0)

    def near_geoms(self, points: np.ndarray, geoms: np.ndarray, margin: float) -> np.ndarray:
        """Boolean (N,): points within ``margin`` (m) of any of ``geoms``. Each geom's distance is
        computed only for the points inside its bounding sphere (``geom_rbound`` + margin)."""
        m, d = self.model, self.data
        mask = np.zeros(len(points), bool)
        if len(points) == 0:
            return mask
        for g in geoms:
            centre, radius = d.geom_xpos[g], m.geom_rbound[g] + margin
            diff = points - centre
            near = np.nonzero(np.einsum("ij,ij->i", diff, diff) <= radius * radius)[0]
            if len(near) == 0:
                continue
            local = diff[near] @ d.geom_xmat[g].reshape(3, 3)
            mask[near[geom_sdf(local, int(m.geom_type[g]), m.geom_size[g], m.geom_aabb[g]) <= margin]] = True
        return mask
