"""The robot cell as a MuJoCo model, built in code from parameters.

The cell: a table whose top is the plane z = 0 of the robot base frame (= world frame), an
arm on the table at the origin, a hand on the arm's flange, a tweezer welded to the hand at
its tool-mount site, one object on the table, a bin, a fixed RGB-D scene camera and a
wrist camera on the hand. Arm and hand come from the default models in
:mod:`sim.robots` or from user MJCF files ("bring your own robot"); their joint names and
limits are then read from those files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from sim import tool as tool_mod
from sim.robots import leap_like_hand, ur5e_like_arm
from sim.tool import TweezerParams

OBJECT_SHAPES: tuple[str, ...] = ("box", "cylinder", "sphere")
"""Shapes the tasks sample for training data and evaluation."""
HELDOUT_SHAPES: tuple[str, ...] = ("capsule", "ellipsoid", "hexprism")
"""Shapes never in training data (``--objects heldout``): an upright capsule, an ellipsoid whose
pinch width is its narrow horizontal axis (1.3x longer across), a hexagonal prism mesh (width
across flats; the expert pinches it at any orientation, 1.0-1.15x the width)."""
ELLIPSOID_ASPECT = 1.3
OBJECT_BODY = "object"
BIN_CENTER = (0.42, 0.30)
"""Bin centre (x, y) on the table, m."""
BIN_INNER_HALF = 0.07
"""Half side of the bin's square opening, m."""
BIN_WALL_HEIGHT = 0.05
SCENE_CAMERA = "scene"
WRIST_CAMERA = "wrist"
WORKSPACE_CAMERA = "workspace"

# Contact groups (bit masks). A pair collides when (contype_a & conaffinity_b) or the reverse.
_GROUP_ENV, _GROUP_OBJECT, _GROUP_TOOL, _GROUP_HAND, _GROUP_ARM = 1, 2, 4, 8, 16
_GROUP_HAND_LINKS = 64  # built-in hand links other than fingertips: no contact with the tool
_OBJECT_AFFINITY = _GROUP_ENV | _GROUP_OBJECT | _GROUP_TOOL | _GROUP_HAND


class CellBuildError(ValueError):
    """A cell could not be built (bad parameters or a malformed user MJCF)."""


@dataclass(frozen=True)
class ObjectParams:
    """One object on the table. Lengths in m, mass in kg, angles in rad.

    ``width`` is the extent the tweezers pinch (diameter for cylinder and sphere);
    ``height`` is the vertical extent (equal to ``width`` for a sphere).
    """

    shape: str = "box"
    width: float = 0.012
    height: float = 0.02
    mass: float = 0.01
    friction: float = 0.8
    rgba: tuple[float, float, float, float] = (0.85, 0.25, 0.2, 1.0)
    xy: tuple[float, float] = (0.5, 0.0)
    yaw: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in OBJECT_SHAPES + HELDOUT_SHAPES:
            valid = ", ".join(OBJECT_SHAPES + HELDOUT_SHAPES)
            raise CellBuildError(f"unknown object shape {self.shape!r}; valid: {valid}")
        if not 0.002 <= self.width <= 0.08 or not 0.002 <= self.height <= 0.1:
            raise CellBuildError(f"object size out of range: width {self.width} m, height {self.height} m")
        if self.mass <= 0 or self.friction <= 0:
            raise CellBuildError("object mass and friction must be positive")

    def mesh_mjcf(self) -> str:
        """The ``<mesh>`` asset of a hexagonal prism (across flats = width), or "" for primitives."""
        if self.shape != "hexprism":
            return ""
        r, h = self.width / math.sqrt(3.0), self.height / 2
        angles = [math.pi / 6 + k * math.pi / 3 for k in range(6)]
        verts = [f"{r * math.cos(a):.6f} {r * math.sin(a):.6f} {z:.6f}" for z in (-h, h) for a in angles]
        return f'<mesh name="object_mesh" vertex="{" ".join(verts)}"/>'

    def geom_mjcf(self) -> str:
        w, h = self.width / 2, self.height / 2
        size = {
            "box": f"{w} {w} {h}",
            "cylinder": f"{w} {h}",
            "sphere": f"{w}",
            "capsule": f"{w} {max(h - w, 0.0005)}",
            "ellipsoid": f"{w} {ELLIPSOID_ASPECT * w} {h}",
            "hexprism": "",
        }[self.shape]
        rgba = " ".join(f"{c:.3f}" for c in self.rgba)
        kind = (
            'type="mesh" mesh="object_mesh"'
            if self.shape == "hexprism"
            else f'type="{self.shape}" size="{size}"'
        )
        return (
            f'<geom name="object_geom" {kind} mass="{self.mass}" '
            f'friction="{self.friction} 0.005 0.0001" rgba="{rgba}" condim="4" '
            'solref="0.004 1" solimp="0.95 0.99 0.0005" '
            f'contype="{_GROUP_OBJECT}" conaffinity="{_OBJECT_AFFINITY}"/>'
        )


ARMS: dict[str, str] = {"ur5e_like": "built-in UR5e-like 6-DoF arm"}
"""Built-in arm models by name; any other value of ``CellConfig.arm`` must be an MJCF path."""
HANDS: dict[str, str] = {"leap_like": "built-in LEAP-like 16-DoF hand"}
"""Built-in hand models by name; any other value of ``CellConfig.hand`` must be an MJCF path."""


@dataclass(frozen=True)
class CameraMount:
    """A fixed camera of the cell: position and look-at target in ``base_link`` (m), vertical
    field of view (deg). The image's up direction is world +z."""

    pos: tuple[float, float, float]
    target: tuple[float, float, float]
    fovy: float

    def __post_init__(self) -> None:
        for name in ("pos", "target"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise CellBuildError(f"camera {name} must be 3 finite numbers (m), got {v.tolist()!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        fwd = np.subtract(self.target, self.pos)
        if np.linalg.norm(fwd) < 1e-3 or np.linalg.norm(np.cross(fwd, (0.0, 0.0, 1.0))) < 1e-6:
            raise CellBuildError("camera target must differ from its position, not straight below or above")
        if not 10.0 <= float(self.fovy) <= 120.0:
            raise CellBuildError(f"camera fovy must be in [10, 120] deg, got {self.fovy}")


WORKSPACE_CAMERA_MOUNT = CameraMount(pos=(0.49, -0.30, 0.16), target=(0.49, 0.0, 0.02), fovy=55.0)
"""The close workspace camera: beside the object patch (0.33 m from its centre, 25 deg below
horizontal), looking across the arm's reach so the tool never stands between it and the object.
Chosen by measured object visibility through expert episodes (``dexhier eval visibility``;
docs/benchmarks.md, "Cameras")."""


@dataclass(frozen=True)
class CellConfig:
    """Parameters of the cell model.

    Attributes:
        arm: a built-in arm name (``ARMS``) or the path of a user MJCF file for the arm.
        arm_flange_site: the site on the arm where the hand attaches (+z out of the flange).
        hand: a built-in hand name (``HANDS``) or the path of a user MJCF file for the hand.
        hand_root_body: the hand's root body (attached to the flange).
        tool_mount_site: site on the hand where the tweezer hangs (+z along the tool).
        tool: tweezer dimensions.
        physics_hz: physics rate (Hz); the timestep is its inverse.
        arm_home: arm home joint positions (rad), or None for the built-in home pose or, for
            a user MJCF, its ``home`` keyframe (zeros if it has none).
        workspace_camera: mount of the close fixed RGB-D camera that sees the tips and the object
            (``WORKSPACE_CAMERA``); a real cell sets its calibrated pose here.
    """

    arm: str = "ur5e_like"
    arm_flange_site: str = ur5e_like_arm.FLANGE_SITE
    hand: str = "leap_like"
    hand_root_body: str = leap_like_hand.ROOT_BODY
    tool_mount_site: str = leap_like_hand.TOOL_MOUNT_SITE
    tool: TweezerParams = field(default_factory=TweezerParams)
    physics_hz: float = 500.0
    arm_home: tuple[float, ...] | None = None
    workspace_camera: CameraMount = WORKSPACE_CAMERA_MOUNT

    def __post_init__(self) -> None:
        if not 50.0 <= self.physics_hz <= 5000.0:
            raise CellBuildError(f"physics_hz must be in [50, 5000], got {self.physics_hz}")
        for value, builtin, what in ((self.arm, ARMS, "arm"), (self.hand, HANDS, "hand")):
            if value not in builtin and not Path(value).is_file():
                raise CellBuildError(
                    f"unknown {what} {value!r}: not a built-in {what} ({', '.join(builtin)}) "
                    f"and not an existing MJCF file"
                )

    @property
    def arm_mjcf(self) -> Path | None:
        """The user arm MJCF path, or None for the built-in arm."""
        return None if self.arm in ARMS else Path(self.arm)

    @property
    def hand_mjcf(self) -> Path | None:
        """The user hand MJCF path, or None for the built-in hand."""
        return None if self.hand in HANDS else Path(self.hand)


@dataclass(frozen=True)
class RobotSpec:
    """Names, addresses and limits of the robot's joints in a compiled cell model.

    Joint arrays are in the order of ``arm_joints + hand_joints`` (the action order).
    """

    arm_joints: tuple[str, ...]
    hand_joints: tuple[str, ...]
    qpos_adr: np.ndarray  # (A,) int
    dof_adr: np.ndarray  # (A,) int
    actuator_ids: np.ndarray  # (A,) int
    lower: np.ndarray  # (A,) rad
    upper: np.ndarray  # (A,) rad
    home: np.ndarray  # (A,) rad

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.arm_joints + self.hand_joints

    @property
    def n_arm(self) -> int:
        return len(self.arm_joints)


def _look_at_quat(pos: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Quaternion (w, x, y, z) of a MuJoCo camera at ``pos`` looking at ``target``."""
    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, fwd)
    mat = np.stack([right, cam_up, -fwd], axis=1)  # camera looks along its -z
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.ravel())
    return quat


def _world_mjcf(cfg: CellConfig, obj: ObjectParams) -> str:
    ts = 1.0 / cfg.physics_hz
    cam_pos = np.array([1.0, 0.1, 0.55])
    cam_quat = _look_at_quat(cam_pos, np.array([0.42, 0.1, 0.12]))
    cam = " ".join(f"{v:.6f}" for v in cam_pos)
    camq = " ".join(f"{v:.6f}" for v in cam_quat)
    wcam = cfg.workspace_camera
    ws = " ".join(f"{v:.6f}" for v in wcam.pos)
    wsq = " ".join(f"{v:.6f}" for v in _look_at_quat(np.array(wcam.pos), np.array(wcam.target)))
    bx, by = BIN_CENTER
    bi, bh, bt = BIN_INNER_HALF, BIN_WALL_HEIGHT / 2, 0.004
    ox, oy = obj.xy
    oz = obj.height / 2 + 0.0005
    q = (math.cos(obj.yaw / 2), 0.0, 0.0, math.sin(obj.yaw / 2))
    env = f'contype="{_GROUP_ENV}" conaffinity="0"'
    green = f'rgba="0.2 0.5 0.3 1" {env}'
    return f"""
<mujoco model="dexhier_cell">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{ts}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="640" offheight="480"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5"/>
    <map znear="0.01" zfar="10"/>
    <quality offsamples="0"/>
  </visual>
  <default>
    {tool_mod.tool_default_class()}
  </default>
  <asset>
    {obj.mesh_mjcf()}
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.5 0.42" rgb2="0.5 0.46 0.38"
             width="256" height="256"/>
    <material name="table" texture="grid" texrepeat="8 8"/>
  </asset>
  <worldbody>
    <!-- No shadows: shadow maps cost ~25x the render time under software EGL (Mesa). -->
    <light pos="0.4 -0.3 1.5" dir="0 0.2 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="table" type="plane" size="0.7 0.7 0.01" pos="0.3 0 0" material="table" {env}/>
    <body name="bin" pos="{bx} {by} 0">
      <geom name="bin_floor" type="box" size="{bi + bt} {bi + bt} 0.002" pos="0 0 0.002" {green}/>
      <geom name="bin_wall_px" type="box" size="{bt} {bi + bt} {bh}" pos="{bi + bt} 0 {bh}" {green}/>
      <geom name="bin_wall_nx" type="box" size="{bt} {bi + bt} {bh}" pos="{-bi - bt} 0 {bh}" {green}/>
      <geom name="bin_wall_py" type="box" size="{bi + bt} {bt} {bh}" pos="0 {bi + bt} {bh}" {green}/>
      <geom name="bin_wall_ny" type="box" size="{bi + bt} {bt} {bh}" pos="0 {-bi - bt} {bh}" {green}/>
    </body>
    <body name="{OBJECT_BODY}" pos="{ox} {oy} {oz}" quat="{q[0]} {q[1]} {q[2]} {q[3]}">
      <freejoint name="object_free"/>
      {obj.geom_mjcf()}
    </body>
    {tool_mod.tweezer_body_mjcf(cfg.tool)}
    <camera name="{SCENE_CAMERA}" pos="{cam}" quat="{camq}" fovy="52"/>
    <camera name="{WORKSPACE_CAMERA}" pos="{ws}" quat="{wsq}" fovy="{wcam.fovy}"/>
  </worldbody>
  <equality>
    {tool_mod.tool_equality_mjcf()}
  </equality>
</mujoco>
"""


@contextlib.contextmanager
def _no_empty_prefix_warning():
    """Silence MuJoCo's note about empty attach prefixes: we keep the robots' own joint names."""
    previous = mujoco.get_mju_user_warning()

    def handler(msg: str) -> None:
        if "empty prefix" not in msg:
            logging.getLogger(__name__).warning("MuJoCo: %s", msg)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def _load_robot_spec(path: Path | None, default_xml: str, what: str) -> mujoco.MjSpec:
    try:
        if path is None:
            return mujoco.MjSpec.from_string(default_xml)
        spec = mujoco.MjSpec.from_file(str(path))
        spec.compile()  # surface errors now, naming the file
        return spec
    except Exception as err:  # MuJoCo raises ValueError with its parser message
        src = str(path) if path is not None else f"built-in {what}"
        raise CellBuildError(f"cannot load the {what} MJCF {src}: {err}") from err


def _joint_names(spec: mujoco.MjSpec) -> tuple[str, ...]:
    names = []
    for j in spec.joints:
        if j.type in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE):
            names.append(j.name)
    return tuple(names)


def _home_from_keyframe(spec: mujoco.MjSpec, joints: tuple[str, ...]) -> np.ndarray | None:
    model = spec.compile()
    kid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, "home")
    if kid < 0:
        return None
    adr = [model.jnt_qposadr[model.joint(j).id] for j in joints]
    return model.key_qpos[kid][adr].copy()


def _set_robot_contacts(body: mujoco.MjsBody, group: int, affinity: int) -> None:
    """Put every colliding geom of a robot subtree into one contact group."""
    for geom in body.find_all(mujoco.mjtObj.mjOBJ_GEOM):
        if geom.contype != 0 or geom.conaffinity != 0:
            geom.contype, geom.conaffinity = group, affinity


def build_cell(cfg: CellConfig, obj: ObjectParams) -> tuple[mujoco.MjModel, RobotSpec]:
    """Compile the cell with one object; returns the model and the robot's joint spec."""
    arm = _load_robot_spec(cfg.arm_mjcf, ur5e_like_arm.arm_mjcf(), "arm")
    hand = _load_robot_spec(cfg.hand_mjcf, leap_like_hand.hand_mjcf(), "hand")
    arm_joints, hand_joints = _joint_names(arm), _joint_names(hand)
    if not arm_joints or not hand_joints:
        raise CellBuildError("the arm and the hand MJCF must each have hinge or slide joints")
    clash = set(arm_joints) & set(hand_joints)
    if clash:
        raise CellBuildError(f"arm and hand share joint names: {sorted(clash)}")
    if cfg.arm_home is not None:
        arm_home = np.asarray(cfg.arm_home, float)
    elif cfg.arm_mjcf is None:
        arm_home = np.asarray(ur5e_like_arm.HOME_QPOS)
    else:
        arm_home = _home_from_keyframe(arm, arm_joints)
    hand_home = _home_from_keyframe(hand, hand_joints) if cfg.hand_mjcf is not None else None

    world = mujoco.MjSpec.from_string(_world_mjcf(cfg, obj))
    flange_names = [s.name for s in arm.sites]
    if cfg.arm_flange_site not in flange_names:
        raise CellBuildError(
            f"arm MJCF has no site {cfg.arm_flange_site!r}; its sites: {', '.join(flange_names) or 'none'}"
        )
    frame = world.worldbody.add_frame(pos=[0, 0, 0])
    with _no_empty_prefix_warning():
        world.attach(arm, prefix="", frame=frame)
    hand_body_names = [b.name for b in hand.bodies]
    if cfg.hand_root_body not in hand_body_names:
        raise CellBuildError(
            f"hand MJCF has no body {cfg.hand_root_body!r}; its bodies: {', '.join(hand_body_names)}"
        )
    if cfg.tool_mount_site not in [s.name for s in hand.sites]:
        raise CellBuildError(f"hand MJCF has no tool-mount site {cfg.tool_mount_site!r}")
    mount_in_palm = _site_pose_in_body(hand, cfg.tool_mount_site, cfg.hand_root_body)
    with _no_empty_prefix_warning():
        world.attach(hand, prefix="", site=world.site(cfg.arm_flange_site))

    palm = world.body(cfg.hand_root_body)
    arm_root = world.body(arm.worldbody.first_body().name)
    # User robots join the cell's contact groups; the built-in ones already use them (their
    # hand lets only the fingertips touch the tool, which keeps the narrow phase small).
    if cfg.arm_mjcf is not None:
        _set_robot_contacts(arm_root, _GROUP_ARM, _GROUP_ENV)
    if cfg.hand_mjcf is not None:
        _set_robot_contacts(palm, _GROUP_HAND, _GROUP_ENV | _GROUP_OBJECT)
    for b in palm.find_all(mujoco.mjtObj.mjOBJ_BODY):
        b.gravcomp = 1.0
    # The tool's base overlaps the palm by design: they are welded, so no contact between them.
    world.add_exclude(bodyname1=cfg.hand_root_body, bodyname2=tool_mod.BASE_BODY)
    world.add_equality(
        type=mujoco.mjtEq.mjEQ_WELD,
        name="tool_weld",
        objtype=mujoco.mjtObj.mjOBJ_BODY,
        name1=cfg.hand_root_body,
        name2=tool_mod.BASE_BODY,
        data=np.concatenate([[0, 0, 0], mount_in_palm, [1.0, 0.0]]),
        solref=[0.005, 1.0],
    )
    wrist_pos = np.array([0.12, -0.06, 0.05])
    wrist_target = np.array([0.0, 0.0, 0.03 + cfg.tool.arm_length])
    palm.add_camera(
        name=WRIST_CAMERA,
        pos=wrist_pos,
        quat=_look_at_quat(wrist_pos, wrist_target, up=(0.0, 1.0, 0.0)),
        fovy=75.0,
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*empty prefix.*")
            model = world.compile()
    except Exception as err:
        raise CellBuildError(f"cannot compile the cell: {err}") from err

    joints = arm_joints + hand_joints
    jids = [model.joint(j).id for j in joints]
    act_for_joint = {}
    for a in range(model.nu):
        if model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT:
            act_for_joint[int(model.actuator_trnid[a, 0])] = a
    missing = [j for j, jid in zip(joints, jids, strict=True) if jid not in act_for_joint]
    if missing:
        raise CellBuildError(f"robot joints without a joint actuator: {missing}")
    lower = np.array([model.jnt_range[j, 0] if model.jnt_limited[j] else -np.pi for j in jids])
    upper = np.array([model.jnt_range[j, 1] if model.jnt_limited[j] else np.pi for j in jids])
    if arm_home is None:
        arm_home = np.zeros(len(arm_joints))
    if hand_home is None:
        hand_home = np.zeros(len(hand_joints))
    if arm_home.shape != (len(arm_joints),):
        raise CellBuildError(f"arm_home needs {len(arm_joints)} values, got {arm_home.shape}")
    home = np.clip(np.concatenate([arm_home, hand_home]), lower, upper)
    spec = RobotSpec(
        arm_joints=arm_joints,
        hand_joints=hand_joints,
        qpos_adr=np.array([model.jnt_qposadr[j] for j in jids]),
        dof_adr=np.array([model.jnt_dofadr[j] for j in jids]),
        actuator_ids=np.array([act_for_joint[j] for j in jids]),
        lower=lower,
        upper=upper,
        home=home,
    )
    return model, spec


def _site_pose_in_body(spec: mujoco.MjSpec, site: str, body: str) -> np.ndarray:
    """Pose (pos 3, quat 4) of ``site`` in the frame of ``body`` at the model's reference pose."""
    model = spec.compile()
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    sid, bid = model.site(site).id, model.body(body).id
    rb, pb = data.xmat[bid].reshape(3, 3), data.xpos[bid]
    rs, ps = data.site_xmat[sid].reshape(3, 3), data.site_xpos[sid]
    pos = rb.T @ (ps - pb)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, (rb.T @ rs).ravel())
    return np.concatenate([pos, quat])
