"""The shared vocabulary of dexhier: joint names, observation keys, frames and units.

Every other module imports names from here instead of spelling strings itself, so that
the twin, the episode files, the policies and the ROS nodes agree. This module imports
nothing but the standard library.

Units are SI everywhere in code and on disk: metres, radians, seconds, kilograms,
newtons. Millimetres appear only in human-facing reports (keys ending in ``_mm``).
"""

from __future__ import annotations

# --- Joints ------------------------------------------------------------------------------
# Default cell: a UR5e-like arm and a LEAP-like right hand. A user-supplied robot (MJCF)
# brings its own joint names; code must read them from the robot spec, never assume these.
ARM_JOINTS: tuple[str, ...] = (
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
)
"""Arm joint names (revolute, rad), base to flange."""

FINGERS: tuple[str, ...] = ("if", "mf", "rf", "th")
"""Finger prefixes: index, middle, ring, thumb."""

HAND_JOINTS: tuple[str, ...] = (
    "if_mcp", "if_rot", "if_pip", "if_dip",
    "mf_mcp", "mf_rot", "mf_pip", "mf_dip",
    "rf_mcp", "rf_rot", "rf_pip", "rf_dip",
    "th_cmc", "th_axl", "th_mcp", "th_ipl",
)  # fmt: skip
"""Hand joint names (revolute, rad), LEAP hand naming: four joints per finger."""

TOOL_JOINTS: tuple[str, ...] = ("tweezer_hinge_a", "tweezer_hinge_b")
"""Tweezer arm hinges (rad); positive opens the tool. Coupled by a joint equality."""

TOOL_STATE_NAMES: tuple[str, ...] = ("tip_gap", "opening_angle")
"""Names of the tool-state fields: tip gap (m) and half-opening angle theta (rad)."""
TOOL_STATE_MAX_GAP = "max_gap"
"""Full opening of the tool (m): on ``/dexhier/tool_state`` after ``TOOL_STATE_NAMES`` whenever
perception estimates the tool."""
TOOL_STATE_OBJECT_NAMES: tuple[str, ...] = (
    "approach_opening", "contact_opening", "graspable", "object_x", "object_y", "object_z",
)  # fmt: skip
"""Fields perception appends to ``/dexhier/tool_state`` when the object is in the cloud: approach
and contact openings (m), graspable probability, object centre in the tool-mount frame (m)."""

# --- Frames (ROS frame ids) --------------------------------------------------------------
FRAME_BASE = "base_link"
"""Robot base frame. In the twin it coincides with the world frame; z up, table top at z=0."""
FRAME_FLANGE = "flange"
FRAME_PALM = "palm"
FRAME_TOOL_TIP = "tool_tip"
"""Midpoint between the two tweezer tips."""
FRAME_SCENE_CAMERA = "scene_camera_optical_frame"
FRAME_WRIST_CAMERA = "wrist_camera_optical_frame"
FRAME_WORKSPACE_CAMERA = "workspace_camera_optical_frame"

# --- Cameras ------------------------------------------------------------------------------
CAMERAS: tuple[str, ...] = ("scene", "wrist", "workspace")
"""Camera names. ``scene`` is fixed in the cell, 0.7 m away; ``wrist`` rides on the hand;
``workspace`` is fixed about 0.3 m from the object patch and sees the tips and the object."""
DEFAULT_CAMERAS: tuple[str, ...] = ("scene", "wrist")
"""Cameras the twin renders unless told otherwise (the images the shipped image policies use)."""


# --- Observation keys ----------------------------------------------------------------------
def depth_hd_key(camera: str) -> str:
    """Key of a perception-resolution depth image (float32 (H, W), m, 0 = no return)."""
    return f"depth_hd/{camera}"


def rgb_key(camera: str) -> str:
    """Key of a colour image: uint8 array (H, W, 3)."""
    return f"rgb/{camera}"


def depth_key(camera: str) -> str:
    """Key of a depth image: float32 array (H, W), metres along the optical axis; 0 = no return."""
    return f"depth/{camera}"


OBS_ARM_QPOS = "arm/qpos"
"""float64 (6,) arm joint positions, rad, in ``ARM_JOINTS`` order of the robot spec."""
OBS_ARM_QVEL = "arm/qvel"
"""float64 (6,) arm joint velocities, rad/s."""
OBS_HAND_QPOS = "hand/qpos"
"""float64 (16,) hand joint positions, rad."""
OBS_HAND_QVEL = "hand/qvel"
"""float64 (16,) hand joint velocities, rad/s."""
OBS_TOOL_TIP_GAP = "tool/tip_gap"
"""float64 (1,) tweezer tip gap, m, as measured by the twin (at run time: perception)."""
OBS_POINTS = "points"
"""float32 (N, 3) point cloud in ``FRAME_BASE``, m, from the scene camera's depth."""
OBS_POINTS_LABEL = "points/label"
"""int8 (N,) segmentation label per point, values from ``SEG_LABELS``."""

# --- Perception keys (label-free perception's estimate, recorded next to the observation) ---
PERC_VALID = "perception/valid"
"""float64 (1,): 1 when the tool state below was measured in this frame, else 0 (held)."""
PERC_TIP_GAP = "perception/tip_gap"
"""float64 (1,): perceived tweezer tip gap, m."""
PERC_TIP_CENTER = "perception/tip_center"
"""float64 (3,): midpoint of the tips in ``base_link`` (forward kinematics at the fitted opening), m."""
PERC_OBJECT_VALID = "perception/object_valid"
"""float64 (1,): 1 when the object was measured in this frame, 0 when held or never seen."""
PERC_OBJECT_AGE = "perception/object_age"
"""float64 (1,): frames since the object estimate was measured (0 = fresh)."""
PERC_OBJECT = "perception/object"
"""float64 (6,): object centre x, y, z (m, ``base_link``), width across its faces, height (m), yaw (rad)."""
PERC_TOOL_POINTS = "perception/tool_points"
"""float32 (P, 3): farthest-point-sampled tool points in ``base_link``, m."""
PERC_OBJECT_POINTS = "perception/object_points"
"""float32 (P, 3): farthest-point-sampled object points in ``base_link``, m."""
PERCEPTION_KEYS: tuple[str, ...] = (
    PERC_VALID, PERC_TIP_GAP, PERC_TIP_CENTER, PERC_OBJECT_VALID, PERC_OBJECT_AGE, PERC_OBJECT,
    PERC_TOOL_POINTS, PERC_OBJECT_POINTS,
)  # fmt: skip

ACTION = "action"
"""float64 (A,) absolute joint position targets, arm joints then hand joints, rad."""
ACTION_REQUEST = "action/request"
"""The raw requested action, before clamping to joint limits."""

SEG_LABELS: dict[str, int] = {"background": 0, "table": 1, "robot": 2, "tool": 3, "object": 4, "bin": 5}
"""Segmentation label values used in ``OBS_POINTS_LABEL``."""

# --- Rates ---------------------------------------------------------------------------------
CONTROL_HZ_DEFAULT = 20.0
"""Policy / action rate, Hz."""
PHYSICS_HZ_DEFAULT = 500.0
"""Physics integration rate of the twin, Hz."""


def camera_pose_key(camera: str) -> str:
    """Key of a camera's pose: float64 (4, 4) transform of its optical frame in ``FRAME_BASE``."""
    return f"camera_pose/{camera}"


STEP_TIME = "time"
"""float64 scalar: time of the step, s, on the clock that was running (sim time in the twin)."""

# --- Goals of the low-level policy ------------------------------------------------------------
GOAL_RGB = "goal/rgb"
"""uint8 (H, W, 3) goal (subgoal) image of the policy's goal camera."""
GOAL_TOOL_TIP_GAP = "goal/tool/tip_gap"
"""float64 (1,) goal tip gap of the tool, m."""
GOAL_TOOL_TIP_CENTER = "goal/tool/tip_center"
"""float64 (3,): the goal position of the tips' midpoint in ``base_link``, m (object-centric low level)."""

# --- Teleop recordings ------------------------------------------------------------------------
STEP_WALL_TIME = "time/wall"
"""float64 scalar: wall-clock (UNIX) time of the step, s; teleop recordings."""
TELEOP_LINEAR = "teleop/linear"
"""float64 (3,) raw device request: tool-tip velocity as a fraction of the maximum, base frame."""
TELEOP_ANGULAR = "teleop/angular"
"""float64 (3,) raw device request: angular velocity as a fraction of the maximum, base frame."""
TELEOP_GRIP = "teleop/grip"
"""float64 scalar: raw device request of the hand synergy, in [-1, 1], + opens."""
TELEOP_CLUTCH = "teleop/clutch"
"""bool scalar: the device's clutch (arm motion engaged)."""
TELEOP_VALID = "teleop/valid"
"""bool scalar: False when the device command was unusable (NaN, out of range) and ignored."""
TELEOP_HAND_KEYPOINTS = "teleop/hand_keypoints"
"""float64 (21, 3) raw hand keypoints of a handpose device, wrist frame, m; NaN when there were none."""
TELEOP_SPEED_SCALE = "teleop/speed_scale"
"""float64 scalar: the speed step the request was scaled by, in (0, 1]."""
TELEOP_POWER_GRASP = "teleop/power_grasp"
"""bool scalar: the hand synergy was the power grasp (else the tool pinch)."""
SAFETY_HELD = "safety/held"
"""bool scalar: True when the safety supervisor forwarded no fresh command (hold, e-stop, reject)."""

# --- Topics of the policy graph ------------------------------------------------------------------
TOPIC_TOOL_STATE = "/dexhier/tool_state"
"""sensor_msgs/JointState from perception: ``TOOL_STATE_NAMES``, ``TOOL_STATE_MAX_GAP`` and, when the
object is seen, ``TOOL_STATE_OBJECT_NAMES`` (matched by name)."""
TOPIC_SUBGOAL_IMAGE = "/dexhier/subgoal/image"
"""sensor_msgs/Image (rgb8): the low level's goal image, from the high level (or its stand-in)."""
TOPIC_TOOL_GOAL = "/dexhier/tool_goal"
"""sensor_msgs/JointState, joint ``tip_gap`` (m): the low level's tool goal."""
TOPIC_SIM_EPISODE = "/dexhier/sim/episode"
"""std_msgs/String (JSON): the twin's episode; learned nodes read only its number, seed and clock."""
TOPIC_HIGHLEVEL_STAGE = "/dexhier/highlevel/stage"
"""std_msgs/String (JSON): the high level's grasp stage, retries, tool goal and replan step."""

# --- Teleop topics (recorded to MCAP next to the episode) ------------------------------------------
TOPIC_JOINT_STATES = "/joint_states"
TOPIC_TELEOP_JOY = "/dexhier/teleop/joy"
"""sensor_msgs/Joy: the raw device request (axes: linear xyz, angular xyz, grip; buttons: clutch)."""


def command_topic(group: str) -> str:
    """Topic of a policy's (or teleop's) raw joint request for ``group`` ("arm" or "hand")."""
    return f"/dexhier/command/{group}"


def controller_topic(group: str) -> str:
    """Topic of the command the safety supervisor forwards to the ``group`` controller (JTC)."""
    return f"/{group}_controller/joint_trajectory"


def camera_topic(camera: str) -> str:
    """Colour image topic of ``camera``; the scene camera is ``/camera`` (docs/ARCHITECTURE.md)."""
    return "/camera/color/image_raw" if camera == "scene" else f"/{camera}_camera/color/image_raw"
