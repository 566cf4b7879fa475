"""The MuJoCo twin of the cell as a :class:`~sim.backend.Backend`.

One control step (default 20 Hz) holds the joint-position targets for ``physics_hz /
control_hz`` physics steps (default 500 Hz → 25 substeps). Observations carry only what a
real cell measures (images, depth, cloud, joint states, the tool opening); ground truth is
returned in ``info["privileged"]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np

from dexhier import vocabulary as V
from sim import tool as tool_mod
from sim.backend import ActionSpec, ArraySpec, Backend, StepResult
from sim.camera import camera_intrinsics, camera_pose, camera_pose_matrix, depth_to_points
from sim.cell import (
    HELDOUT_SHAPES,
    OBJECT_BODY,
    OBJECT_SHAPES,
    SCENE_CAMERA,
    CellConfig,
    RobotSpec,
    build_cell,
)
from sim.cell_model import segmentation_table, set_tool_at_weld, tool_joint_addresses
from sim.rendering import CameraRenderer
from sim.tasks import PrivilegedState, TaskInstance, make_task

OBJECT_SETS: dict[str, tuple[str, ...]] = {"train": OBJECT_SHAPES, "heldout": HELDOUT_SHAPES}
"""Object shape sets by name (``TwinConfig.objects``)."""
_SETTLE_TIME = 0.1  # s of physics after a reset so that contacts settle before t = 0


@dataclass(frozen=True)
class TwinConfig:
    """Configuration of the twin.

    Attributes:
        task: registered task name (see ``sim.tasks.TASKS``).
        cell: the cell model's parameters (robot files, tool, physics rate).
        image_width, image_height: camera image size, pixels.
        cameras: which cameras to render.
        render: render images (and the cloud); False gives proprio-only observations.
        points: add a point cloud from ``points_camera``'s depth (needs ``render``).
        points_camera: which camera's depth makes the point cloud.
        points_size: (width, height) of the cloud camera's depth, px; None renders it at the image
            size (a cell's depth camera usually has more pixels than the policy's images).
        perception_cameras: cameras whose depth is rendered at ``perception_size`` for label-free
            perception (``depth_hd/<camera>`` keys, next to any policy-size ``depth/<camera>``).
        perception_size: (width, height) of those depth images, px.
        objects: ``train`` samples the task's object shapes; ``heldout`` shapes never in training
            data (``sim.cell.HELDOUT_SHAPES``).
        control_hz: action rate, Hz; must divide ``cell.physics_hz``.
        time_limit: episode length, s; None uses the task's limit.
    """

    task: str = "tweezer_pick"
    cell: CellConfig = field(default_factory=CellConfig)
    image_width: int = 64
    image_height: int = 64
    cameras: tuple[str, ...] = V.DEFAULT_CAMERAS
    render: bool = True
    points: bool = True
    points_camera: str = SCENE_CAMERA
    points_size: tuple[int, int] | None = None
    perception_cameras: tuple[str, ...] = ()
    perception_size: tuple[int, int] = (320, 240)
    objects: str = "train"
    control_hz: float = V.CONTROL_HZ_DEFAULT
    time_limit: float | None = None

    def __post_init__(self) -> None:
        make_task(self.task)  # validates the name
        if self.objects not in OBJECT_SETS:
            raise ValueError(f"unknown objects {self.objects!r}; valid: {', '.join(OBJECT_SETS)}")
        ratio = self.cell.physics_hz / self.control_hz
        if self.control_hz <= 0 or abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(
                f"physics_hz ({self.cell.physics_hz}) must be a multiple of control_hz ({self.control_hz})"
            )
        unknown = (set(self.cameras) | set(self.perception_cameras)) - set(V.CAMERAS)
        if unknown:
            raise ValueError(f"unknown cameras {sorted(unknown)}; valid: {', '.join(V.CAMERAS)}")
        if self.points_size is not None:
            object.__setattr__(self, "points_size", tuple(int(v) for v in self.points_size))
            if len(self.points_size) != 2 or min(self.points_size) < 8:
                raise ValueError(f"points_size must be (width, height) >= 8 px, got {self.points_size}")
        object.__setattr__(self, "perception_size", tuple(int(v) for v in self.perception_size))
        if len(self.perception_size) != 2 or min(self.perception_size) < 8:
            raise ValueError(f"perception_size must be (width, height) >= 8 px, got {self.perception_size}")
        if self.perception_cameras and not self.render:
            raise ValueError("perception_cameras need render=True")
        if self.points and (not self.render or self.points_camera not in self.cameras):
            raise ValueError(f"points need render=True and the {self.points_camera!r} camera in cameras")

    @property
    def n_substeps(self) -> int:
        return round(self.cell.physics_hz / self.control_hz)


class TwinEnv(Backend):
    """The cell in MuJoCo. See the module docstring for timing; units are SI."""

    name = "mujoco_twin"

    def __init__(self, config: TwinConfig | None = None) -> None:
        self.config = config or TwinConfig()
        self.task = make_task(self.config.task)
        self.time_limit = self.config.time_limit or self.task.time_limit
        self.tool = self.config.cell.tool
        self.instance: TaskInstance | None = None
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._renderer: CameraRenderer | None = None
        self._points_renderer: CameraRenderer | None = None  # the cloud's, when points_size is set
        self._perception_renderer: CameraRenderer | None = None  # depth_hd, when perception_cameras
        self._video_renderer: CameraRenderer | None = None  # for render(): any size, on demand
        self._video_key: tuple | None = None
        self._succeeded = False
        # Build once with a default object so that specs exist before the first reset.
        self._load(self.task.sample(np.random.default_rng(0)))

    # ----------------------------------------------------------------- specs
    @property
    def robot(self) -> RobotSpec:
        return self._robot

    @property
    def action_spec(self) -> ActionSpec:
        r = self._robot
        return ActionSpec(names=r.joint_names, lower=r.lower.copy(), upper=r.upper.copy())

    @property
    def observation_spec(self) -> dict[str, ArraySpec]:
        cfg, r = self.config, self._robot
        spec = {
            V.OBS_ARM_QPOS: ArraySpec((len(r.arm_joints),), "float64", "rad"),
            V.OBS_ARM_QVEL: ArraySpec((len(r.arm_joints),), "float64", "rad/s"),
            V.OBS_HAND_QPOS: ArraySpec((len(r.hand_joints),), "float64", "rad"),
            V.OBS_HAND_QVEL: ArraySpec((len(r.hand_joints),), "float64", "rad/s"),
            V.OBS_TOOL_TIP_GAP: ArraySpec((1,), "float64", "m", "tweezer tip gap"),
        }
        if cfg.render:
            hw = (cfg.image_height, cfg.image_width)
            for cam in cfg.cameras:
                spec[V.rgb_key(cam)] = ArraySpec((*hw, 3), "uint8")
                spec[V.depth_key(cam)] = ArraySpec(hw, "float32", "m", "0 = no return")
                spec[V.camera_pose_key(cam)] = ArraySpec((4, 4), "float64", "m", "optical frame in base")
        w, h = cfg.perception_size
        for cam in cfg.perception_cameras:
            spec[V.depth_hd_key(cam)] = ArraySpec((h, w), "float32", "m", "perception depth; 0 = no return")
        if cfg.points:
            spec[V.OBS_POINTS] = ArraySpec((-1, 3), "float32", "m", f"in {V.FRAME_BASE}")
            spec[V.OBS_POINTS_LABEL] = ArraySpec((-1,), "int8", "", "values of SEG_LABELS")
        return spec

    # ------------------------------------------------------------- lifecycle
    def _load(self, inst: TaskInstance) -> None:
        model, robot = build_cell(self.config.cell, inst.object)
        self.model, self._robot = model, robot
        self.data = mujoco.MjData(model)
        self._tool_qadr, self._tool_dadr = tool_joint_addresses(model)
        self._object_body = model.body(OBJECT_BODY).id
        self._seg_table = segmentation_table(model)
        tool_bodies = [model.body(b).id for b in (tool_mod.BASE_BODY, *tool_mod.ARM_BODIES)]
        self._tool_geoms = set(np.nonzero(np.isin(model.geom_bodyid, tool_bodies))[0].tolist())
        self._tip_pads = (model.geom("tweezer_arm_a_tip_pad").id, model.geom("tweezer_arm_b_tip_pad").id)
        self._object_geom = model.geom("object_geom").id
        if self.config.render:
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = CameraRenderer(model, self.config.image_width, self.config.image_height)
            if self.config.perception_cameras:
                if self._perception_renderer is not None:
                    self._perception_renderer.close()
                self._perception_renderer = CameraRenderer(model, *self.config.perception_size)
            if self.config.points and self.config.points_size is not None:
                if self._points_renderer is not None:
                    self._points_renderer.close()
                self._points_renderer = CameraRenderer(model, *self.config.points_size)
        self.instance = inst

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        inst = self.task.sample(rng, OBJECT_SETS[self.config.objects])
        self._load(inst)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        r = self._robot
        q0 = r.home.copy()
        q0[: r.n_arm] += rng.uniform(-0.02, 0.02, r.n_arm)  # a little start-pose diversity
        d.qpos[r.qpos_adr] = q0
        d.ctrl[r.actuator_ids] = q0
        d.qpos[self._tool_qadr] = self.tool.theta_open
        mujoco.mj_forward(m, d)
        self._place_tool_at_weld()
        for _ in range(round(_SETTLE_TIME * self.config.cell.physics_hz)):
            mujoco.mj_step(m, d)
        d.time = 0.0
        self.task.reset()
        self._succeeded = False
        self._seed = seed
        return self._observe()

    def _place_tool_at_weld(self) -> None:
        """Put the free tool exactly where the weld holds it, so it does not jump."""
        set_tool_at_weld(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)

    def step(self, action: np.ndarray) -> StepResult:
        request = self._validate_action(action)
        r, m, d = self._robot, self.model, self.data
        sent = np.clip(request, r.lower, r.upper)
        d.ctrl[r.actuator_ids] = sent
        for _ in range(self.config.n_substeps):
            mujoco.mj_step(m, d)
        diverged = not np.all(np.isfinite(d.qpos)) or d.warning[mujoco.mjtWarning.mjWARN_BADQACC].number > 0
        state = self.privileged_state()
        dt = 1.0 / self.config.control_hz
        if not self._succeeded:
            self._succeeded = self.task.update(state, self.instance, dt)
        terminated = self._succeeded
        truncated = (d.time >= self.time_limit - 1e-9) or diverged
        info: dict[str, Any] = {
            "action_request": request,
            "action_sent": sent,
            "action_clamped": sent != request,
            "success": self._succeeded,
            "privileged": state,
            "physics_diverged": diverged,
        }
        return self._observe(), float(self._succeeded), terminated, truncated, info

    def _validate_action(self, action: np.ndarray) -> np.ndarray:
        try:
            a = np.array(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"action must be a numeric array of {self._robot_size()} joint targets") from err
        if a.shape != (self._robot_size(),):
            raise ValueError(
                f"action has shape {a.shape}; expected ({self._robot_size()},) = "
                f"{len(self._robot.arm_joints)} arm + {len(self._robot.hand_joints)} hand joint targets"
            )
        if not np.all(np.isfinite(a)):
            bad = [self._robot.joint_names[i] for i in np.nonzero(~np.isfinite(a))[0]]
            raise ValueError(f"action has non-finite values for joints {bad}")
        return a

    def _robot_size(self) -> int:
        return len(self._robot.joint_names)

    def close(self) -> None:
        renderers = (self._renderer, self._points_renderer, self._perception_renderer, self._video_renderer)
        for renderer in renderers:
            if renderer is not None:
                renderer.close()
        self._renderer = self._points_renderer = self._perception_renderer = self._video_renderer = None
        self._video_key = None

    # ----------------------------------------------------------- observation
    @property
    def tool_qpos_adr(self) -> np.ndarray:
        """qpos addresses (2,) of the tweezer hinges in the current model."""
        return self._tool_qadr

    def opening_angle(self) -> float:
        """Half-opening angle of the tweezer (rad): the mean of its two hinge angles."""
        return float(np.mean(self.data.qpos[self._tool_qadr]))

    def tip_gap(self) -> float:
        """Tip gap (m) measured from the two hinge angles."""
        return self.tool.tip_gap(self.opening_angle())

    def _observe(self) -> dict[str, np.ndarray]:
        cfg, d, r = self.config, self.data, self._robot
        obs: dict[str, np.ndarray] = {
            V.OBS_ARM_QPOS: d.qpos[r.qpos_adr[: r.n_arm]].copy(),
            V.OBS_ARM_QVEL: d.qvel[r.dof_adr[: r.n_arm]].copy(),
            V.OBS_HAND_QPOS: d.qpos[r.qpos_adr[r.n_arm :]].copy(),
            V.OBS_HAND_QVEL: d.qvel[r.dof_adr[r.n_arm :]].copy(),
            V.OBS_TOOL_TIP_GAP: np.array([self.tip_gap()]),
        }
        if cfg.render:
            for cam in cfg.cameras:
                obs[V.rgb_key(cam)] = self._renderer.rgb(d, cam)
                obs[V.depth_key(cam)] = self._renderer.depth(d, cam)
                obs[V.camera_pose_key(cam)] = camera_pose_matrix(d, cam)
        for cam in cfg.perception_cameras:
            obs[V.depth_hd_key(cam)] = self._perception_renderer.depth(d, cam)
        if cfg.points:
            cam = cfg.points_camera
            renderer = self._points_renderer or self._renderer
            w, h = cfg.points_size or (cfg.image_width, cfg.image_height)
            ids = renderer.geom_ids(d, cam)
            labels = np.where(ids >= 0, self._seg_table[np.maximum(ids, 0)], V.SEG_LABELS["background"])
            rot, trans = camera_pose(d, cam)
            intr = camera_intrinsics(self.model, cam, w, h)
            depth = obs[V.depth_key(cam)] if self._points_renderer is None else renderer.depth(d, cam)
            pts, lab = depth_to_points(depth, intr, rot, trans, labels.astype(np.int8))
            obs[V.OBS_POINTS], obs[V.OBS_POINTS_LABEL] = pts, lab
        return obs

    def render(self, camera: str, width: int, height: int) -> np.ndarray:
        """A colour frame of any size (for videos and figures), uint8 (H, W, 3)."""
        key = (width, height)
        if self._video_key != (key, id(self.model)):
            if self._video_renderer is not None:
                self._video_renderer.close()
            self._video_renderer = CameraRenderer(self.model, width, height)
            self._video_key = (key, id(self.model))
        return self._video_renderer.rgb(self.data, camera)

    def privileged_state(self) -> PrivilegedState:
        m, d = self.model, self.data
        tip_a = d.site(tool_mod.TIP_SITES[0]).xpos.copy()
        tip_b = d.site(tool_mod.TIP_SITES[1]).xpos.copy()
        touches, pads = False, set()
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            if self._object_geom not in (g1, g2):
                continue
            other = g2 if g1 == self._object_geom else g1
            if other in self._tool_geoms:
                touches = True
                if other in self._tip_pads:
                    pads.add(other)
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(m, d, mujoco.mjtObj.mjOBJ_BODY, self._object_body, vel, 0)
        return PrivilegedState(
            time=float(d.time),
            object_pos=d.xpos[self._object_body].copy(),
            object_quat=d.xquat[self._object_body].copy(),
            object_linvel=vel[3:].copy(),
            tip_a=tip_a,
            tip_b=tip_b,
            tip_center=d.site(tool_mod.TIP_CENTER_SITE).xpos.copy(),
            tip_gap=self.tip_gap(),
            object_touches_tool=touches,
            object_pinched=len(pads) == 2,
        )

    def flange_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Flange site pose in the base frame: (position (3,), rotation (3, 3))."""
        s = self.data.site(self.config.cell.arm_flange_site)
        return s.xpos.copy(), s.xmat.reshape(3, 3).copy()

    def tool_mount_pose(self) -> np.ndarray:
        """Pose (4, 4) of the hand's tool-mount site in the base frame.

        It follows from the joint positions by forward kinematics (no privileged state): the
        tool's nominal frame, which perception uses to crop and canonicalize tool clouds.
        """
        s = self.data.site(self.config.cell.tool_mount_site)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = s.xmat.reshape(3, 3), s.xpos
        return pose

    def episode_metadata(self) -> dict[str, Any]:
        """JSON-able description of the current episode (task, object, seed)."""
        inst = self.instance
        return {
            "task": inst.task,
            "instruction": inst.instruction,
            "seed": getattr(self, "_seed", None),
            "target_gap": inst.target_gap,
            "object": dataclasses.asdict(inst.object),
            "control_hz": self.config.control_hz,
            "physics_hz": self.config.cell.physics_hz,
            "time_limit": self.time_limit,
        }


def tcp_in_flange(env: TwinEnv) -> tuple[np.ndarray, np.ndarray]:
    """Pose of the tool tip centre in the flange frame: (position (3,), rotation (3, 3))."""
    fp, fr = env.flange_pose()
    tip = env.data.site(tool_mod.TIP_CENTER_SITE)
    return fr.T @ (tip.xpos - fp), fr.T @ tip.xmat.reshape(3, 3)
