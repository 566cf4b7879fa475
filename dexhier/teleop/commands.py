"""What every teleop device produces: one `DeviceCommand` per poll.

Motion is given as fractions of the session's maximum speeds, so devices do not need to know
the robot: ``linear`` and ``angular`` are in [-1, 1] per axis of the robot base frame
(``FRAME_BASE``: x forward, y left, z up; angular = roll, pitch, yaw rates about those axes).
``grip`` in [-1, 1] moves the hand synergy: + opens the tool (or the hand), - closes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class TeleopEvent(enum.StrEnum):
    """Discrete requests from the operator, besides motion."""

    START = "start"  # start recording an episode
    SAVE = "save"  # end the episode and keep it (operator says: success)
    FAIL = "fail"  # end the episode and keep it, marked failed
    DISCARD = "discard"  # end the episode and drop it
    RERECORD = "rerecord"  # drop the episode in flight and start it again
    QUIT = "quit"  # stop the session (an episode in flight is kept, marked incomplete)
    ESTOP = "estop"  # latch the e-stop
    RESET_ESTOP = "reset_estop"  # release the e-stop
    SPEED_UP = "speed_up"
    SPEED_DOWN = "speed_down"
    HAND_MODE = "hand_mode"  # toggle the hand synergy: tool pinch <-> power grasp
    HOME = "home"  # reset the scene (twin) between episodes


class DeviceDisconnectedError(RuntimeError):
    """The device went away (unplugged, stream closed). The session holds the robot and stops."""


@dataclass(frozen=True, eq=False)
class DeviceCommand:
    """One reading of a device.

    Attributes:
        linear: (3,) fraction of the maximum tool-tip speed along base x, y, z, in [-1, 1].
        angular: (3,) fraction of the maximum angular speed about base x, y, z, in [-1, 1].
        grip: fraction of the maximum synergy speed, in [-1, 1]; + opens.
        clutch: True while arm motion is engaged (a deadman / clutch); False holds the arm target.
        events: operator requests seen since the previous poll, in order.
        hand_keypoints: (21, 3) hand keypoints in the wrist frame, m (MediaPipe / MANO order:
            0 wrist, 4/8/12/16/20 fingertips), or None when the device has none.
        stamp: device time, s (monotonic clock of the device or the replay time).
    """

    linear: np.ndarray = field(default_factory=lambda: np.zeros(3))
    angular: np.ndarray = field(default_factory=lambda: np.zeros(3))
    grip: float = 0.0
    clutch: bool = False
    events: tuple[TeleopEvent, ...] = ()
    hand_keypoints: np.ndarray | None = None
    stamp: float = 0.0

    def problems(self) -> list[str]:
        """Why this command cannot be used as is (wrong shapes, non-finite or out-of-range values)."""
        out: list[str] = []
        for name in ("linear", "angular"):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.shape != (3,):
                out.append(f"{name} has shape {a.shape}, expected (3,)")
            elif not np.all(np.isfinite(a)):
                out.append(f"{name} is not finite: {a.tolist()}")
            elif np.any(np.abs(a) > 1.0 + 1e-9):
                out.append(f"{name} outside [-1, 1]: {a.tolist()}")
        if not np.isfinite(self.grip):
            out.append(f"grip is not finite: {self.grip}")
        elif abs(self.grip) > 1.0 + 1e-9:
            out.append(f"grip outside [-1, 1]: {self.grip}")
        if self.hand_keypoints is not None:
            k = np.asarray(self.hand_keypoints, dtype=np.float64)
            if k.shape != (21, 3):
                out.append(f"hand_keypoints has shape {k.shape}, expected (21, 3)")
            elif not np.all(np.isfinite(k)):
                out.append("hand_keypoints are not finite")
        return out

    def axes(self) -> list[float]:
        """The motion as the 7 axes of the recorded ``sensor_msgs/Joy``: linear xyz, angular xyz, grip."""
        return [*map(float, np.asarray(self.linear, float)), *map(float, np.asarray(self.angular, float)),
                float(self.grip)]  # fmt: skip

    def motionless(self) -> DeviceCommand:
        """The same command with no motion and the clutch released; events are kept."""
        return DeviceCommand(events=self.events, stamp=self.stamp)
