"""Conversions between ROS messages and numpy, with the checks a real driver makes.

Joint arrays are always matched by name. Trajectories are validated the way ros2_control's
joint_trajectory_controller validates them (non-empty joint names and points, known joints, every
controller joint present, strictly increasing ``time_from_start``, finite positions).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CameraInfo, Image, JointState, Joy
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dexhier.safety import MAX_NAMES
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
    """Positions of ``names`` from a JointState (any order); MessageError if some are missing or NaN,
    or the message names more than ``MAX_NAMES`` joints."""
    if len(msg.name) > MAX_NAMES:
        raise MessageError(f"joint_states names {len(msg.name)} joints (at most {MAX_NAMES})")
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
    if len(msg.velocity) != len(msg.name) or len(msg.name) > MAX_NAMES:
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


MAX_POINTS = 10_000
"""Most points a trajectory may carry (a JTC goal of 500 s at 20 Hz)."""
LIMIT_TOLERANCE = 1e-6
"""rad a trajectory point may lie past a joint limit (rounding), as a JTC's limit check allows."""


def parse_trajectory(
    msg: JointTrajectory,
    controller_joints: Sequence[str],
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a trajectory for a controller of ``controller_joints``.

    Returns (times (T,) s, positions (T, J) in ``controller_joints`` order). Raises MessageError
    with the reason ros2_control would give for rejecting it; with ``lower`` / ``upper`` (rad, in
    ``controller_joints`` order) a position outside the joint limits rejects the whole goal too.
    """
    if not msg.joint_names:
        raise MessageError("empty joint_names")
    if not msg.points:
        raise MessageError("empty trajectory (no points)")
    if len(msg.joint_names) > MAX_NAMES or len(msg.points) > MAX_POINTS:
        raise MessageError(f"oversized: {len(msg.joint_names)} joints, {len(msg.points)} points "
                           f"(at most {MAX_NAMES} and {MAX_POINTS})")  # fmt: skip
    if len(set(msg.joint_names)) != len(msg.joint_names):
        raise MessageError("duplicate joint names")
    known = set(controller_joints)
    unknown = [n for n in msg.joint_names if n not in known]
    if unknown:
        raise MessageError(f"unknown joints {unknown[:10]}")
    index = {n: i for i, n in enumerate(msg.joint_names)}
    missing = [n for n in controller_joints if n not in index]
    if missing:
        raise MessageError(f"partial goal: missing joints {missing}")
    order = [index[n] for n in controller_joints]
    times, rows = [], []
    for i, p in enumerate(msg.points):
        if len(p.positions) != len(msg.joint_names):
            raise MessageError(
                f"point {i} has {len(p.positions)} positions for {len(msg.joint_names)} joints"
            )
        q = np.asarray(p.positions, dtype=np.float64)[order]
        if not np.all(np.isfinite(q)):
            raise MessageError(f"point {i} has non-finite positions")
        if lower is not None and upper is not None:
            out = np.flatnonzero((q < lower - LIMIT_TOLERANCE) | (q > upper + LIMIT_TOLERANCE))
            if len(out):
                j = out[0]
                raise MessageError(f"point {i}: {controller_joints[j]} at {q[j]:.4g} rad is outside its "
                                   f"limits [{lower[j]:.4g}, {upper[j]:.4g}]")  # fmt: skip
        times.append(from_time(p.time_from_start))
        rows.append(q)
    t = np.asarray(times)
    if not np.all(np.isfinite(t)):
        raise MessageError("non-finite time_from_start")
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


MAX_IMAGE_SIDE = 8192
"""Largest image width or height decoded (px)."""


def image_array(msg: Image) -> np.ndarray:
    """Decode ``rgb8`` / ``bgr8`` (→ RGB uint8) and ``32FC1`` (→ float32 metres); MessageError otherwise.

    The data must hold exactly ``step × height`` bytes (``sensor_msgs/Image``'s contract): longer or
    shorter data, a step shorter than a row, or a zero or huge size is rejected before any copy.
    """
    h, w = msg.height, msg.width
    pixel = {"rgb8": 3, "bgr8": 3, "32FC1": 4}.get(msg.encoding)
    if pixel is None:
        raise MessageError(f"unsupported image encoding {msg.encoding!r}; expected rgb8, bgr8 or 32FC1")
    if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE):
        raise MessageError(f"{msg.encoding} image {w}x{h}: need 1 to {MAX_IMAGE_SIDE} px a side")
    if msg.step < pixel * w or len(msg.data) != msg.step * h:
        raise MessageError(
            f"{msg.encoding} image {w}x{h} with step {msg.step} has {len(msg.data)} bytes "
            f"(need step >= {pixel * w} and exactly step x height)"
        )
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(h, msg.step)[:, : pixel * w]
    if msg.encoding == "32FC1":
        dt = np.dtype(">f4" if msg.is_bigendian else "<f4")
        return rows.copy().view(dt).reshape(h, w).astype(np.float32)
    img = rows.reshape(h, w, 3)
    return img[..., ::-1].copy() if msg.encoding == "bgr8" else img.copy()


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


# ------------------------------------------------------------------ episode status (/dexhier/sim/episode)
EPISODE_MAX_CHARS = 65_536
"""Longest /dexhier/sim/episode document parsed (characters)."""
SEED_MAX = 2**63 - 1
"""Largest seed accepted: every consumer (numpy, torch, MuJoCo scenes) takes it."""


def _int_in(lo: int, hi: int):
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise MessageError(f"need an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
        return v

    return check


def _finite(lo: float, hi: float):
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and lo <= v <= hi):
            raise MessageError(f"need a finite number in [{lo:g}, {hi:g}], got {str(v)[:40]!r}")
        return float(v)

    return check


def _text(limit: int):
    def check(v: Any) -> str:
        if not isinstance(v, str) or len(v) > limit:
            raise MessageError(f"need a string of at most {limit} characters")
        return v

    return check


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise MessageError(f"need true or false, got {str(v)[:40]!r}")
    return v


EPISODE_FIELDS = {
    "episode": _int_in(0, 2**31 - 1), "seed": _int_in(0, SEED_MAX), "steps": _int_in(0, 2**31 - 1),
    "done": _flag, "success": _flag, "clock": _finite(0.0, 1e12), "time": _finite(0.0, 1e12),
    "task": _text(128), "instruction": _text(4096),
    "object_width": lambda v: None if v is None else _finite(0.0, 10.0)(v),
}  # fmt: skip
"""The twin's episode status fields and their checks; other keys are dropped."""


def _no_constant(name: str) -> Any:
    raise MessageError(f"{name} is not a number JSON allows")


def parse_episode(text: str, required: Sequence[str] = ("episode", "seed")) -> dict[str, Any]:
    """The fields of a ``/dexhier/sim/episode`` message (JSON), each checked against its bounds.

    Returns the known fields present (``EPISODE_FIELDS``), unknown ones dropped. MessageError (a
    ValueError) when the text is too long, not a JSON object, nested too deep, a field is out of its
    bounds (a seed of -1, 2**64 or 1e400), or a ``required`` field is missing.
    """
    if not isinstance(text, str) or len(text) > EPISODE_MAX_CHARS:
        raise MessageError(f"episode message longer than {EPISODE_MAX_CHARS} characters")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise MessageError("episode message nested too deep") from None
    except json.JSONDecodeError as err:
        raise MessageError(f"episode message is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise MessageError(f"episode message is a JSON {type(doc).__name__}, not an object")
    out = {}
    for key, check in EPISODE_FIELDS.items():
        if key in doc:
            try:
                out[key] = check(doc[key])
            except MessageError as err:
                raise MessageError(f"episode field {key!r}: {err}") from None
    missing = [k for k in required if k not in out]
    if missing:
        raise MessageError(f"episode message lacks {', '.join(missing)}")
    return out
