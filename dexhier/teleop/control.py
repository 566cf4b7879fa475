"""From device commands to joint targets: Cartesian arm control through IK, hand synergies.

The arm follows a tool-tip target pose that the device moves at bounded speed while the clutch
is engaged; differential IK (mink, `sim.ik.ArmIK`) turns the pose into arm joint targets. The
hand follows a synergy: one scalar ``s`` in [0, 1] blends an open and a closed posture (the tool
pinch of the expert, or a power grasp); hand keypoints, when a device gives them, override the
synergy finger by finger through the retargeter. The safety supervisor comes after this module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from dexhier.teleop.commands import DeviceCommand, TeleopEvent
from sim.expert import PinchPostures
from sim.ik import ArmIK
from sim.twin import TwinEnv, tcp_in_flange


class HandMode(enum.StrEnum):
    """Which synergy the grip moves."""

    PINCH = "pinch"  # the tweezers held between thumb and middle finger: s closes the tool
    POWER = "power"  # a whole-hand power grasp


POWER_OPEN: dict[str, float] = {}
"""Power-grasp open posture: the hand's home values (a flat hand)."""
POWER_CLOSED: dict[str, float] = {
    "if_mcp": 1.3, "if_pip": 1.3, "if_dip": 1.0,
    "mf_mcp": 1.3, "mf_pip": 1.3, "mf_dip": 1.0,
    "rf_mcp": 1.3, "rf_pip": 1.3, "rf_dip": 1.0,
    "th_cmc": 1.2, "th_mcp": 0.8, "th_ipl": 0.8,
}  # fmt: skip
"""Power-grasp closed posture (rad); joints not named keep their home value."""


@dataclass(frozen=True)
class TeleopConfig:
    """Speeds, workspace and rates of teleoperation. Lengths in m, angles in rad, times in s.

    ``max_linear_speed`` / ``max_angular_speed`` are reached at full device deflection and speed
    scale 1; ``speed_scales`` are the steps of SPEED_UP / SPEED_DOWN, starting at ``initial_speed``
    (an index). The tool-tip target stays in the box ``workspace_lower``..``workspace_upper``
    (base frame). ``synergy_speed``: change of the synergy scalar per second at full grip.
    ``min_rate_fraction``: an episode whose measured loop rate falls below this fraction of
    ``control_hz`` is marked (``rate_ok: false``) and warned about.
    """

    control_hz: float = 20.0
    max_linear_speed: float = 0.30
    max_angular_speed: float = 1.5
    synergy_speed: float = 2.0
    speed_scales: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    initial_speed: int = 2
    workspace_lower: tuple[float, float, float] = (0.15, -0.45, 0.004)
    workspace_upper: tuple[float, float, float] = (0.75, 0.45, 0.45)
    ik_iterations: int = 3
    max_joint_velocity: float = 3.0
    """Rate limit of the safety supervisor, rad/s, every joint."""
    stale_after: float = 0.25
    """Seconds without a usable device command before the supervisor holds."""
    min_rate_fraction: float = 0.9
    pinch: PinchPostures = field(default_factory=PinchPostures)

    def __post_init__(self) -> None:
        for name in ("control_hz", "max_linear_speed", "max_angular_speed", "synergy_speed"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"TeleopConfig.{name} must be a finite value > 0, got {value}")
        if not self.speed_scales or any(not (0 < s <= 1) for s in self.speed_scales):
            raise ValueError(f"speed_scales must be non-empty values in (0, 1], got {self.speed_scales}")
        if list(self.speed_scales) != sorted(self.speed_scales):
            raise ValueError(f"speed_scales must increase, got {self.speed_scales}")
        if not 0 <= self.initial_speed < len(self.speed_scales):
            raise ValueError(f"initial_speed {self.initial_speed}: an index into speed_scales")
        lo, hi = np.asarray(self.workspace_lower), np.asarray(self.workspace_upper)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(lo < hi):
            raise ValueError("workspace_lower must be < workspace_upper, 3 values each")
        if self.ik_iterations < 1:
            raise ValueError("ik_iterations must be >= 1")
        if not 0 < self.min_rate_fraction <= 1:
            raise ValueError("min_rate_fraction must be in (0, 1]")

    @property
    def dt(self) -> float:
        """Control period, s."""
        return 1.0 / self.control_hz


class ArmTeleop:
    """Moves a tool-tip target pose with the device and solves IK for the arm joints."""

    def __init__(self, ik: ArmIK, config: TeleopConfig) -> None:
        self.ik = ik
        self.config = config
        self.position = np.zeros(3)
        self.rotation = np.eye(3)

    def reset(self, arm_q: np.ndarray) -> None:
        """Anchor the target at the tool-tip pose of the measured arm joints ``arm_q`` (rad)."""
        self.ik.reset(np.asarray(arm_q, dtype=np.float64))
        self.position, self.rotation = self.ik.tcp_pose()

    def step(self, cmd: DeviceCommand, speed_scale: float) -> np.ndarray:
        """Advance the target by one control period and return the arm joint targets (6,) rad."""
        cfg = self.config
        if cmd.clutch:
            v = np.asarray(cmd.linear, dtype=np.float64) * cfg.max_linear_speed * speed_scale
            w = np.asarray(cmd.angular, dtype=np.float64) * cfg.max_angular_speed * speed_scale
            position = np.clip(self.position + v * cfg.dt, cfg.workspace_lower, cfg.workspace_upper)
            # Angular rates are about base-frame axes, so the increment multiplies from the left.
            rotation = Rotation.from_rotvec(w * cfg.dt).as_matrix() @ self.rotation
            self.position, self.rotation = position, rotation
        return self.ik.solve(self.position, self.rotation, iterations=cfg.ik_iterations)


class HandSynergy:
    """Hand joint targets from a synergy scalar ``s`` (0 = open, 1 = closed) in the current mode.

    Args:
        names: the hand's joint names, in action order.
        home: the hand's home positions (rad), the value of joints a posture does not name.
        lower, upper: the hand's joint limits (rad); postures are clipped into them.
    """

    def __init__(
        self,
        names: tuple[str, ...],
        home: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        config: TeleopConfig,
    ) -> None:
        self.names = tuple(names)
        self.config = config

        def posture(values: dict[str, float]) -> np.ndarray:
            q = np.array([values.get(n, h) for n, h in zip(self.names, home, strict=True)])
            return np.clip(q, lower, upper)

        self._postures = {
            HandMode.PINCH: (posture(config.pinch.open), posture(config.pinch.closed)),
            HandMode.POWER: (posture(POWER_OPEN), posture(POWER_CLOSED)),
        }
        self.mode = HandMode.PINCH
        self.s = 0.0

    def reset(self) -> None:
        self.mode, self.s = HandMode.PINCH, 0.0

    def toggle_mode(self) -> None:
        self.mode = HandMode.POWER if self.mode is HandMode.PINCH else HandMode.PINCH

    def step(self, grip: float) -> np.ndarray:
        """Advance ``s`` by ``grip`` (in [-1, 1], + opens) for one period; hand targets (n,) rad."""
        self.s = float(np.clip(self.s - grip * self.config.synergy_speed * self.config.dt, 0.0, 1.0))
        return self.posture()

    def posture(self) -> np.ndarray:
        q_open, q_closed = self._postures[self.mode]
        return q_open + self.s * (q_closed - q_open)


@dataclass
class SpeedControl:
    """The current speed step; SPEED_UP / SPEED_DOWN move it within ``speed_scales``."""

    config: TeleopConfig
    index: int = -1

    def __post_init__(self) -> None:
        if self.index < 0:
            self.index = self.config.initial_speed

    @property
    def scale(self) -> float:
        return self.config.speed_scales[self.index]

    def apply(self, events: tuple[TeleopEvent, ...]) -> None:
        for ev in events:
            if ev is TeleopEvent.SPEED_UP:
                self.index = min(self.index + 1, len(self.config.speed_scales) - 1)
            elif ev is TeleopEvent.SPEED_DOWN:
                self.index = max(self.index - 1, 0)


class TeleopController:
    """Device commands to joint requests (arm joints then hand joints, rad): what every teleop front end runs.

    Combines `ArmTeleop`, `HandSynergy` and `SpeedControl`; hand keypoints, when the command has
    them, are retargeted to the hand (`dexhier.teleop.retarget`) instead of the synergy. The twin
    loop (`dexhier.teleop.session`) and the ROS teleop node both use it.

    Args:
        ik: the arm's tool-tip IK.
        hand_names, hand_home, hand_lower, hand_upper: the hand's joints (action order), home
            positions and limits (rad).
    """

    def __init__(
        self,
        ik: ArmIK,
        hand_names: tuple[str, ...],
        hand_home: np.ndarray,
        hand_lower: np.ndarray,
        hand_upper: np.ndarray,
        config: TeleopConfig,
    ) -> None:
        self.config = config
        self.arm = ArmTeleop(ik, config)
        self.hand = HandSynergy(hand_names, hand_home, hand_lower, hand_upper, config)
        self.speed = SpeedControl(config)
        self._retargeter = None
        self.retarget_errors = 0
        self.tcp_key: tuple = ()

    @classmethod
    def for_env(
        cls, env: TwinEnv, config: TeleopConfig, previous: TeleopController | None = None
    ) -> TeleopController:
        """The controller for the twin ``env`` just reset: its IK solves for the tool tips, whose pose in
        the flange is known only once the tool sits in the hand. Returns ``previous`` when that pose is
        unchanged; a new controller keeps ``previous``'s speed step (the operator's choice)."""
        pos, rot = tcp_in_flange(env)
        key = (tuple(np.round(pos, 6)), tuple(np.round(rot.ravel(), 6)))
        if previous is not None and previous.tcp_key == key:
            return previous
        r, spec = env.robot, env.action_spec
        hand = slice(r.n_arm, None)
        ik = ArmIK(env.config.cell, r.arm_joints, pos, rot, dt=config.dt)
        controller = cls(ik, r.hand_joints, r.home[hand], spec.lower[hand], spec.upper[hand], config)
        controller.tcp_key = key
        if previous is not None:
            controller.speed.index = previous.speed.index
        return controller

    def reset(self, arm_q: np.ndarray) -> None:
        """New episode (or after an e-stop): anchor at the measured arm joints, open synergy."""
        self.arm.reset(arm_q)
        self.hand.reset()

    def reanchor(self, arm_q: np.ndarray) -> None:
        """Move the arm target to the measured arm joints ``arm_q``; the hand is unchanged."""
        self.arm.reset(arm_q)

    def apply_events(self, events: tuple[TeleopEvent, ...]) -> None:
        """Speed steps and hand-mode toggles; other events belong to the front end."""
        self.speed.apply(events)
        for ev in events:
            if ev is TeleopEvent.HAND_MODE:
                self.hand.toggle_mode()

    def request(self, cmd: DeviceCommand) -> np.ndarray:
        """The joint request (arm then hand, rad) for one control period of a valid ``cmd``."""
        arm_q = self.arm.step(cmd, self.speed.scale)
        return np.concatenate([arm_q, self._hand(cmd)])

    def _hand(self, cmd: DeviceCommand) -> np.ndarray:
        if cmd.hand_keypoints is None:
            return self.hand.step(cmd.grip)
        if self._retargeter is None:
            from dexhier.teleop.retarget import HandRetargeter

            self._retargeter = HandRetargeter()
        try:
            q = self._retargeter.retarget(np.asarray(cmd.hand_keypoints, dtype=np.float64))
        except ValueError:  # unusable keypoints: keep the synergy's posture
            self.retarget_errors += 1
            return self.hand.posture()
        order = {n: i for i, n in enumerate(self._retargeter.joint_names)}
        return np.array([q[order[n]] for n in self.hand.names])
