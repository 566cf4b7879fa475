"""Synthetic, exactly labelled tool clouds rendered from the twin's geometry.

Each sample poses the cell kinematically (no physics): the arm puts the tweezer tips near an
object on the table (mink IK), the tool is opened to a random angle and shifted slightly in
the hand, the fingers take a random pinch posture (they occlude the tool), the wrist camera is
jittered around its mount, and one depth + segmentation frame is rendered. Depth noise and
dropout are added, the frame becomes a cloud, and the cloud goes through the perception
pipeline in the tool-mount frame (the frame known from the joint states by forward
kinematics). Tool dimensions vary by tool variant (arm length and width, ±10 % by default).
Labels come from the geometry, so they are exact.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import mujoco
import numpy as np

from dexhier import vocabulary as V
from perception.cloud import CloudConfig, process_cloud
from perception.labels import affordance_labels, tool_variant
from sim import tool as tool_mod
from sim.camera import camera_intrinsics, camera_pose, depth_to_points
from sim.cell import OBJECT_SHAPES, WRIST_CAMERA, CellConfig, ObjectParams, build_cell
from sim.cell_model import segmentation_table
from sim.expert import PinchPostures
from sim.ik import ArmIK, tool_down_rotation
from sim.rendering import CameraRenderer

LABEL_KEYS = (
    "tip_gap", "opening_angle", "max_gap", "object_width", "approach_opening", "contact_opening", "graspable",
)  # fmt: skip


def default_cloud_config() -> CloudConfig:
    """Pipeline settings for tool clouds in the tool-mount frame (z along the tool, m)."""
    return CloudConfig(
        crop_min=(-0.04, -0.05, -0.035),
        crop_max=(0.04, 0.05, 0.22),
        tool_box_min=(-0.025, -0.03, -0.035),
        tool_box_max=(0.025, 0.03, 0.165),
        object_box_min=(-0.04, -0.05, 0.1),
        object_box_max=(0.04, 0.05, 0.22),
    )


@dataclass(frozen=True)
class SyntheticConfig:
    """How synthetic samples vary. Lengths in m, angles in rad.

    Attributes:
        image_width, image_height: wrist-camera depth resolution, pixels.
        samples_per_tool: samples rendered per tool variant (a variant is a compiled model).
        length_scale, width_scale: ranges of the tool arm length / width relative to nominal.
        object_width: pinch-width range of the objects (beyond 30 mm so that training sees
            enough ungraspable ones; evaluation uses 4–30 mm).
        tip_height: range of the tips' height above the object's top.
        in_hand_translation, in_hand_rotation: max shift / tilt of the tool in the hand.
        camera_translation, camera_rotation: max jitter of the wrist camera on its mount.
        tilt: max tilt of the tool from vertical.
        depth_noise: range of the standard deviation of additive depth noise.
        dropout: range of the fraction of depth pixels dropped.
    """

    image_width: int = 320
    image_height: int = 240
    samples_per_tool: int = 64
    length_scale: tuple[float, float] = (0.9, 1.1)
    width_scale: tuple[float, float] = (0.9, 1.1)
    object_width: tuple[float, float] = (0.004, 0.036)
    tip_height: tuple[float, float] = (-0.008, 0.05)
    in_hand_translation: float = 0.003
    in_hand_rotation: float = 0.04
    camera_translation: float = 0.01
    camera_rotation: float = 0.05
    tilt: float = 0.15
    depth_noise: tuple[float, float] = (0.0, 0.0008)
    dropout: tuple[float, float] = (0.0, 0.15)
    cloud: CloudConfig = field(default_factory=default_cloud_config)


def _small_rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    quat = np.zeros(4)
    mujoco.mju_axisAngle2Quat(quat, axis, rng.uniform(0, max_angle))
    return quat


def _mat(quat: np.ndarray) -> np.ndarray:
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, quat)
    return m.reshape(3, 3)


class _ToolScene:
    """One compiled cell with a given tool variant, posed and rendered sample by sample."""

    def __init__(self, cfg: SyntheticConfig, tool: tool_mod.TweezerParams) -> None:
        self.cfg, self.tool = cfg, tool
        self.cell = CellConfig(tool=tool)
        self.model, self.robot = build_cell(self.cell, ObjectParams())
        m = self.model
        self.data = mujoco.MjData(m)
        self.renderer = CameraRenderer(m, cfg.image_width, cfg.image_height)
        self.seg = segmentation_table(m)
        self.intr = camera_intrinsics(m, WRIST_CAMERA, cfg.image_width, cfg.image_height)
        self.cam_id = m.camera(WRIST_CAMERA).id
        self.cam_pos0, self.cam_quat0 = m.cam_pos[self.cam_id].copy(), m.cam_quat[self.cam_id].copy()
        self.obj_geom = m.geom("object_geom").id
        self.obj_qadr = m.jnt_qposadr[m.joint("object_free").id]
        self.tool_qadr = m.jnt_qposadr[m.joint("tweezer_free").id]
        self.hinge_qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in V.TOOL_JOINTS])
        weld = m.equality("tool_weld").id
        self.palm = int(m.eq_obj1id[weld])
        self.rel = m.eq_data[weld, 3:10].copy()
        n = self.robot.n_arm
        self.arm_adr, self.hand_adr = self.robot.qpos_adr[:n], self.robot.qpos_adr[n:]
        names = self.robot.hand_joints
        home = self.robot.home[n:]
        post = PinchPostures()
        self.q_open = np.array([post.open.get(j, h) for j, h in zip(names, home, strict=True)])
        self.q_closed = np.array([post.closed.get(j, h) for j, h in zip(names, home, strict=True)])
        # Tool-tip pose in the flange frame at the nominal mount, for the IK model.
        d = self.data
        d.qpos[self.robot.qpos_adr] = self.robot.home
        self._place_tool(np.zeros(3), np.array([1.0, 0, 0, 0]))
        fl = d.site(self.cell.arm_flange_site)
        tip = d.site(tool_mod.TIP_CENTER_SITE)
        fr = fl.xmat.reshape(3, 3)
        self.ik = ArmIK(
            self.cell, self.robot.arm_joints, fr.T @ (tip.xpos - fl.xpos), fr.T @ tip.xmat.reshape(3, 3)
        )
        self.ik.reset(self.robot.home[:n])

    def _place_tool(self, dpos: np.ndarray, dquat: np.ndarray) -> None:
        """Forward kinematics, then put the tool at the mount, offset by a small in-hand pose."""
        m, d = self.model, self.data
        mujoco.mj_kinematics(m, d)
        p, q = np.zeros(3), np.zeros(4)
        mujoco.mju_mulPose(p, q, d.xpos[self.palm], d.xquat[self.palm], self.rel[:3], self.rel[3:])
        p2, q2 = np.zeros(3), np.zeros(4)
        mujoco.mju_mulPose(p2, q2, p, q, dpos, dquat)
        a = self.tool_qadr
        d.qpos[a : a + 3], d.qpos[a + 3 : a + 7] = p2, q2
        mujoco.mj_kinematics(m, d)

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        cfg, m, d = self.cfg, self.model, self.data
        # Object: shape, size, pose on the table.
        shape = OBJECT_SHAPES[int(rng.integers(len(OBJECT_SHAPES)))]
        width = float(rng.uniform(*cfg.object_width))
        height = width if shape == "sphere" else float(rng.uniform(0.008, 0.03))
        g = self.obj_geom
        m.geom_type[g] = {"box": mujoco.mjtGeom.mjGEOM_BOX, "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
                          "sphere": mujoco.mjtGeom.mjGEOM_SPHERE}[shape]  # fmt: skip
        m.geom_size[g] = [width / 2, width / 2, height / 2] if shape == "box" else [width / 2, height / 2, 0]
        m.geom_rgba[g, :3] = rng.uniform(0.2, 0.95, 3)
        ox, oy = rng.uniform(0.44, 0.56), rng.uniform(-0.1, 0.1)
        yaw = rng.uniform(-math.pi, math.pi)
        a = self.obj_qadr
        d.qpos[a : a + 3] = [ox, oy, height / 2]
        d.qpos[a + 3 : a + 7] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        # Tool tips near the object: above it, or straddling it at grasp height.
        z = height + float(rng.uniform(*cfg.tip_height))
        spread = 0.004 if z < height else 0.015
        target = np.array(
            [ox + rng.uniform(-spread, spread), oy + rng.uniform(-spread, spread), max(z, 0.004)]
        )
        rot = tool_down_rotation(yaw + (math.pi / 2) * int(rng.integers(4))) @ _mat(
            _small_rotation(rng, cfg.tilt)
        )
        arm_q = self.ik.solve(target, rot, iterations=8)
        if np.linalg.norm(self.ik.tcp_pose()[0] - target) > 0.01:
            self.ik.reset(self.robot.home[: self.robot.n_arm])  # unreachable: start over next time
            return None
        # Hand, tool opening, in-hand pose, camera jitter.
        s = float(rng.uniform(0.0, 1.0))
        hand = self.q_open + s * (self.q_closed - self.q_open) + rng.normal(0, 0.03, len(self.q_open))
        d.qpos[self.arm_adr], d.qpos[self.hand_adr] = arm_q, hand
        theta = float(rng.uniform(self.tool.theta_closed, self.tool.theta_open))
        d.qpos[self.hinge_qadr] = theta
        dpos = rng.uniform(-cfg.in_hand_translation, cfg.in_hand_translation, 3)
        self._place_tool(dpos, _small_rotation(rng, cfg.in_hand_rotation))
        m.cam_pos[self.cam_id] = self.cam_pos0 + rng.uniform(
            -cfg.camera_translation, cfg.camera_translation, 3
        )
        q = np.zeros(4)
        mujoco.mju_mulQuat(q, self.cam_quat0, _small_rotation(rng, cfg.camera_rotation))
        m.cam_quat[self.cam_id] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_camlight(m, d)
        # Render, corrupt, back-project, and run the pipeline in the nominal mount frame.
        depth = self.renderer.depth(d, WRIST_CAMERA)
        ids = self.renderer.geom_ids(d, WRIST_CAMERA)
        labels = np.where(ids >= 0, self.seg[np.maximum(ids, 0)], V.SEG_LABELS["background"]).astype(np.int8)
        depth = depth + rng.normal(0.0, rng.uniform(*cfg.depth_noise), depth.shape).astype(np.float32)
        depth[rng.random(depth.shape) < rng.uniform(*cfg.dropout)] = 0.0
        cam_r, cam_t = camera_pose(d, WRIST_CAMERA)
        pts, lab = depth_to_points(depth, self.intr, cam_r, cam_t, labels)
        mount = d.site(self.cell.tool_mount_site)
        to_mount = np.eye(4)
        r_mount = mount.xmat.reshape(3, 3)
        to_mount[:3, :3], to_mount[:3, 3] = r_mount.T, -r_mount.T @ mount.xpos
        cloud = process_cloud(pts, lab, to_mount, config=cfg.cloud)
        if not cloud.valid:
            return None
        lbl = affordance_labels(self.tool, theta, width)
        out = {k: np.float32(getattr(lbl, k)) for k in LABEL_KEYS}
        out.update(tool=cloud.tool, object=cloud.object if cloud.object_valid else
                   np.zeros((cfg.cloud.n_object_points, 3), np.float32),
                   object_valid=np.bool_(cloud.object_valid))  # fmt: skip
        return out

    def close(self) -> None:
        self.renderer.close()


def _generate_chunk(job: tuple[SyntheticConfig, int, int]) -> dict[str, np.ndarray]:
    cfg, seed, n = job
    rng = np.random.default_rng(seed)
    samples: list[dict[str, np.ndarray]] = []
    while len(samples) < n:
        tool = tool_variant(float(rng.uniform(*cfg.length_scale)), float(rng.uniform(*cfg.width_scale)))
        scene = _ToolScene(cfg, tool)
        tries = 0
        while len(samples) < n and tries < cfg.samples_per_tool:
            tries += 1
            s = scene.sample(rng)
            if s is not None:
                samples.append(s)
        scene.close()
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def generate(
    n: int,
    seed: int,
    config: SyntheticConfig | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Generate ``n`` samples: ``tool`` (n, P, 3), ``object`` (n, Q, 3), ``object_valid`` (n,) and the
    labels of ``LABEL_KEYS`` (n,), float32 in m / rad (``graspable`` as 0/1).

    The result depends only on ``seed`` and ``n`` (chunks have fixed sizes and seeds), not on
    ``workers``. ``progress(k)`` is called with the number of samples finished so far.
    """
    cfg = config or SyntheticConfig()
    chunk = cfg.samples_per_tool
    jobs = [(cfg, seed * 100_003 + i, min(chunk, n - i * chunk)) for i in range((n + chunk - 1) // chunk)]
    parts: list[dict[str, np.ndarray]] = []
    done = 0
    if workers <= 1:
        results = map(_generate_chunk, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        results = pool.map(_generate_chunk, jobs)
    for part in results:
        parts.append(part)
        done += len(part["tool"])
        if progress:
            progress(done)
    if workers > 1:
        pool.shutdown()
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
