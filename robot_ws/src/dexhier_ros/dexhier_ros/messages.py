"""Conversions between ROS messages and numpy, with the checks a real driver makes.

Joint arrays are always matched by name. Trajectories are validated the way ros2_control's
joint_trajectory_controller validates them (non-empty joint names and points, known joints, every
controller joint present, strictly increasing ``time_from_start``, finite positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CameraInfo, Image, JointState, Joy
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from sim.camera import Intrinsics

EPISODE_QOS = QoSProfile(depth=5, durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""QoS of ``/dexhier/sim/episode``: latched, so a node that starts late still learns the episode."""


GOAL_QOS = QoSProfile(depth=1)
"""QoS of the low level's goals (``/dexhier/subgoal/image``, ``/dexhier/tool_goal``): reliable, as the
high level's commands to the low level, keeping only the newest (an older goal is void)."""


class MessageError(ValueError):
    """A message was malformed or does not fit its consumer; the text says why, in one line."""


def _split_ns(seconds: float) -> tuple[int, int]:
    """(sec, nanosec) of a time in seconds; rounding 2.9999999999 gives (3, 0), never (2, 0)."""
    sec, nsec = divmod(int(round(seconds * 1e9)), 1_000_000_000)
    return sec, nsec


def to_time(seconds: float) -> Time:
    sec, nsec = _split_ns(seconds)
    return Time(sec=sec, nanosec=nsec)


def from_time(stamp: Time | Duration) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def to_duration(seconds: float) -> Duration:
    sec, nsec = _split_ns(seconds)
    return Duration(sec=sec, nanosec=nsec)


def joint_state(names: Sequence[str], position: np.ndarray, velocity: np.ndarray, stamp: float) -> JointState:
    msg = JointState()
    msg.header.stamp = to_time(stamp)
    msg.header.frame_id = "base_link"
    msg.name = list(names)
    msg.position = [float(v) for v in position]
    msg.velocity = [float(v) for v in velocity]
    return msg


def joint_positions(msg: JointState, names: Sequence[str]) -> np.ndarray:
    """Positions of ``names`` from a JointState (any order); MessageError if some are missing or NaN."""
    if len(msg.position) != len(msg.name):
        raise MessageError(f"joint_states has {len(msg.name)} names but {len(msg.position)} positions")
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise MessageError(f"joint_states lacks joints {missing}")
    out = np.array([msg.position[index[n]] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise MessageError("joint_states has non-finite positions")
    return out


def joint_velocities(msg: JointState, names: Sequence[str]) -> np.ndarray:
    """Velocities (rad/s) of ``names`` from a JointState; NaN where the message has none.

    Drivers may leave ``velocity`` empty (it is optional in JointState); positions are checked by
    `joint_positions`, so names missing here are already an error there.
    """
    if len(msg.velocity) != len(msg.name):
        return np.full(len(names), np.nan)
    index = {n: i for i, n in enumerate(msg.name)}
    return np.array([msg.velocity[index[n]] if n in index else np.nan for n in names], dtype=np.float64)


def trajectory(names: Sequence[str], positions: np.ndarray, times: Sequence[float]) -> JointTrajectory:
    """A JointTrajectory reaching ``positions`` (T, J) at ``times`` (T,) s after its start (stamp 0 = now)."""
    msg = JointTrajectory()
    msg.joint_names = list(names)
    for q, t in zip(np.atleast_2d(positions), times, strict=True):
        msg.points.append(
            JointTrajectoryPoint(positions=[float(v) for v in q], time_from_start=to_duration(t))
        )
    return msg


def parse_trajectory(msg: JointTrajectory, controller_joints: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate a trajectory for a controller of ``controller_joints``.

    Returns (times (T,) s, positions (T, J) in ``controller_joints`` order). Raises MessageError
    with the reason ros2_control would give for rejecting it.
    """
    if not msg.joint_names:
        raise MessageError("empty joint_names")
    if not msg.points:
        raise MessageError("empty trajectory (no points)")
    if len(set(msg.joint_names)) != len(msg.joint_names):
        raise MessageError("duplicate joint names")
    unknown = [n for n in msg.joint_names if n not in controller_joints]
    if unknown:
        raise MessageError(f"unknown joints {unknown}")
    missing = [n for n in controller_joints if n not in msg.joint_names]
    if missing:
        raise MessageError(f"partial goal: missing joints {missing}")
    order = [list(msg.joint_names).index(n) for n in controller_joints]
    times, rows = [], []
    for i, p in enumerate(msg.points):
        if len(p.positions) != len(msg.joint_names):
            raise MessageError(
                f"point {i} has {len(p.positions)} positions for {len(msg.joint_names)} joints"
            )
        q = np.asarray(p.positions, dtype=np.float64)[order]
        if not np.all(np.isfinite(q)):
            raise MessageError(f"point {i} has non-finite positions")
        times.append(from_time(p.time_from_start))
        rows.append(q)
    t = np.asarray(times)
    if t[0] < 0:
        raise MessageError("negative time_from_start")
    if np.any(np.diff(t) <= 0):
        raise MessageError("time_from_start is not strictly increasing")
    return t, np.stack(rows)


def image(array: np.ndarray, stamp: float, frame_id: str) -> Image:
    """``rgb8`` for uint8 (H, W, 3), ``32FC1`` (metres) for float32 (H, W)."""
    msg = Image()
    msg.header.stamp = to_time(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        msg.encoding, msg.step = "rgb8", 3 * msg.width
    elif array.dtype == np.float32 and array.ndim == 2:
        msg.encoding, msg.step = "32FC1", 4 * msg.width
    else:
        raise MessageError(f"cannot encode an image of dtype {array.dtype} and shape {array.shape}")
    msg.is_bigendian = 0
    msg.data = np.ascontiguousarray(array).tobytes()
    return msg


def image_array(msg: Image) -> np.ndarray:
    """Decode ``rgb8`` / ``bgr8`` (→ RGB uint8) and ``32FC1`` (→ float32 metres); MessageError otherwise."""
    h, w = msg.height, msg.width
    if msg.encoding in ("rgb8", "bgr8"):
        need = h * w * 3
        if msg.step < 3 * w or len(msg.data) < msg.step * h or need == 0:
            raise MessageError(f"{msg.encoding} image {w}x{h} with step {msg.step} has {len(msg.data)} bytes")
        rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(h, msg.step)[:, : 3 * w]
        img = rows.reshape(h, w, 3)
        return img[..., ::-1].copy() if msg.encoding == "bgr8" else img.copy()
    if msg.encoding == "32FC1":
        if msg.step < 4 * w or len(msg.data) < msg.step * h or h * w == 0:
            raise MessageError(f"32FC1 image {w}x{h} with step {msg.step} has {len(msg.data)} bytes")
        dt = np.dtype(">f4" if msg.is_bigendian else "<f4")
        rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(h, msg.step)[:, : 4 * w]
        return rows.copy().view(dt).reshape(h, w).astype(np.float32)
    raise MessageError(f"unsupported image encoding {msg.encoding!r}; expected rgb8, bgr8 or 32FC1")


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """A camera's uint8 (H, W, 3) RGB image at a policy's input size: the centred largest square,
    area-resized as the subgoal generator resizes its inputs. MessageError if smaller than ``size``."""
    h, w = image.shape[:2]
    side = min(h, w)
    if side < size:
        raise MessageError(f"{w}x{h} image, smaller than the {size}x{size} the policy takes")
    y0, x0 = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
    from policies.high_level.generator import resize_image  # only a cell's cameras need it

    return resize_image(square, size)


def camera_info(intr: Intrinsics, stamp: float, frame_id: str) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = to_time(stamp)
    msg.header.frame_id = frame_id
    msg.width, msg.height = intr.width, intr.height
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in intr.matrix().ravel()]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def joy(axes: Sequence[float], buttons: Sequence[int], stamp: float) -> Joy:
    """A ``sensor_msgs/Joy`` stamped ``stamp`` (s)."""
    msg = Joy()
    msg.header.stamp = to_time(stamp)
    msg.axes = [float(a) for a in axes]
    msg.buttons = [int(b) for b in buttons]
    return msg
