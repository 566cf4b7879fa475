"""The privileged expert: a scripted controller that solves every task using ground truth.

It reads the twin's privileged state (object pose and size, tool tips) and plans in
Cartesian space. Arm: a tool-tip frame target moved at bounded speed, converted to joint
targets by differential IK (mink, a QP over the arm's joints with joint limits). Hand: a
pinch posture interpolated between an open and a closed grip by one scalar ``s``, driven by
a feedback loop on the measured tip gap, so the fingers open and close the tweezers through
contact. The opening the object needs is geometry: ``g = g0 + 2 L sin(theta)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mujoco
import numpy as np

from sim.cell import BIN_CENTER
from sim.ik import ArmIK, tool_down_rotation
from sim.tasks import PrivilegedState
from sim.twin import TwinEnv, tcp_in_flange


@dataclass(frozen=True)
class PinchPostures:
    """Hand joint targets (rad) of an open and a closed pinch on the tool's grip pads.

    Joints not named keep the hand's home value. The defaults fit the built-in hand.
    """

    open: dict[str, float] = field(
        default_factory=lambda: {
            "mf_mcp": -0.15, "mf_pip": 0.1, "mf_dip": 0.1, "th_mcp": -0.15, "th_ipl": 0.1,
            "if_mcp": 1.0, "if_pip": 1.2, "if_dip": 0.8, "rf_mcp": 1.0, "rf_pip": 1.2, "rf_dip": 0.8,
        }
    )  # fmt: skip
    closed: dict[str, float] = field(
        default_factory=lambda: {
            "mf_mcp": 0.45, "mf_pip": 0.3, "mf_dip": 0.1, "th_mcp": 0.45, "th_ipl": 0.3,
            "if_mcp": 1.0, "if_pip": 1.2, "if_dip": 0.8, "rf_mcp": 1.0, "rf_pip": 1.2, "rf_dip": 0.8,
        }
    )  # fmt: skip


@dataclass(frozen=True)
class ExpertConfig:
    """Gains and margins of the expert. Lengths in m, speeds in m/s, times in s."""

    approach_speed: float = 0.30
    fine_speed: float = 0.12
    hover_height: float = 0.05
    """Height of the tool tips above the object's top before descending."""
    open_margin: float = 0.008
    """Opening beyond the object's width when approaching."""
    squeeze: float = 0.006
    """How far below the object's width the gap target goes when closing."""
    close_time: float = 0.6
    lift_height: float = 0.09
    carry_height: float = 0.12
    release_height: float = 0.075
    release_time: float = 0.6
    position_tolerance: float = 0.004
    gap_gain: float = 0.6
    """Integral gain of the gap loop: change of the posture scalar s per control step per metre of
    gap error (1/m)."""
    postures: PinchPostures = field(default_factory=PinchPostures)


class ExpertPolicy:
    """Scripted, privileged expert for the registered tasks.

    Use: ``expert = ExpertPolicy(env)``; after each ``env.reset(seed)`` call
    ``expert.reset()``, then ``action = expert.select_action(obs)`` every control step.
    """

    def __init__(self, env: TwinEnv, config: ExpertConfig | None = None) -> None:
        self.env = env
        self.config = config or ExpertConfig()
        self._ik: ArmIK | None = None
        self._ik_key: tuple | None = None

    # ------------------------------------------------------------------ setup
    def _build_ik(self) -> None:
        env = self.env
        pos, rot = tcp_in_flange(env)
        key = (tuple(np.round(pos, 6)), tuple(np.round(rot.ravel(), 6)))
        if key != self._ik_key:
            self._ik = ArmIK(env.config.cell, env.robot.arm_joints, pos, rot, dt=1.0 / env.config.control_hz)
            self._ik_key = key

    def reset(self) -> None:
        """Prepare for the episode the env has just reset."""
        env, cfg = self.env, self.config
        self._build_ik()
        self._ik.reset(env.data.qpos[env.robot.qpos_adr[: env.robot.n_arm]])
        names = env.robot.joint_names[env.robot.n_arm :]
        home = env.robot.home[env.robot.n_arm :]
        self._q_open = np.array([cfg.postures.open.get(n, h) for n, h in zip(names, home, strict=True)])
        self._q_closed = np.array([cfg.postures.closed.get(n, h) for n, h in zip(names, home, strict=True)])
        self._s = 0.0
        self._target = env.privileged_state().tip_center.copy()
        self._phase = "start"
        self._phase_time = 0.0
        tcp_rot = env.data.site("tweezer_tip_center").xmat.reshape(3, 3)
        self._yaw0 = math.atan2(tcp_rot[1, 1], tcp_rot[0, 1])
        self._yaw = self._grasp_yaw()
        inst = env.instance
        self._width = inst.object.width
        self._calibrate_s()

    def _calibrate_s(self) -> None:
        """Map hand posture s -> tip gap once (free tool, no object): the feed-forward of the gap loop."""
        env = self.env
        key = ("cal", self._ik_key)
        if getattr(self, "_cal_key", None) == key:
            return
        m = env.model
        d = mujoco.MjData(m)
        mujoco.mj_copyData(d, m, env.data)
        r = env.robot
        s_grid = np.linspace(0.0, 1.0, 21)
        gaps = []
        for s in s_grid:
            d.ctrl[r.actuator_ids[r.n_arm :]] = self._q_open + s * (self._q_closed - self._q_open)
            for _ in range(int(0.15 * env.config.cell.physics_hz)):
                mujoco.mj_step(m, d)
            theta = float(np.mean(d.qpos[env.tool_qpos_adr]))
            gaps.append(env.tool.tip_gap(theta))
        gaps = np.minimum.accumulate(np.array(gaps))  # enforce a monotone map
        self._cal_s, self._cal_gap = s_grid, gaps
        self._cal_key = key

    def s_for_gap(self, gap: float) -> float:
        """Feed-forward hand posture for a desired tip gap (m)."""
        g, s = self._cal_gap[::-1], self._cal_s[::-1]
        return float(np.interp(gap, g, s))

    def _grasp_yaw(self) -> float:
        """Pinch-axis yaw (rad) that squeezes the object across its width, nearest the current one."""
        obj = self.env.instance.object
        # Symmetry period of the pinch across the object's narrow faces: a square box every 90 deg,
        # an ellipsoid across its narrow axis every 180, a hexagonal prism across flats every 60.
        period = {"box": math.pi / 2, "ellipsoid": math.pi}.get(obj.shape)
        if period is None:
            return self._yaw0
        cands = obj.yaw + np.arange(-12, 13) * period
        return float(cands[np.argmin(np.abs(cands - self._yaw0))])

    # ---------------------------------------------------------------- control
    def select_action(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Joint targets (arm then hand, rad) for the next control step."""
        env, cfg = self.env, self.config
        dt = 1.0 / env.config.control_hz
        st = env.privileged_state()
        goal_pos, speed, gap_goal, hold_force = self._plan(st, dt)
        step = goal_pos - self._target
        dist = float(np.linalg.norm(step))
        if dist > speed * dt:
            step *= speed * dt / dist
        self._target = self._target + step
        arm_q = self._solve_ik(self._target)
        # Gap loop: feed-forward from the calibration, integral on the measured error.
        if hold_force:
            # Squeeze: command the posture of a gap narrower than the object; the position
            # error of the fingers against the object sets the grip force.
            s_cmd = self.s_for_gap(gap_goal)
        else:
            self._s += cfg.gap_gain * (st.tip_gap - gap_goal)
            self._s = float(np.clip(self._s, -0.3, 0.3))
            s_cmd = float(np.clip(self.s_for_gap(gap_goal) + self._s, 0.0, 1.0))
        hand_q = self._q_open + s_cmd * (self._q_closed - self._q_open)
        self._s_cmd = s_cmd
        self._phase_time += dt
        return np.concatenate([arm_q, hand_q])

    def _solve_ik(self, target_pos: np.ndarray) -> np.ndarray:
        return self._ik.solve(target_pos, tool_down_rotation(self._yaw))

    def _goto(self, phase: str) -> None:
        self._phase, self._phase_time = phase, 0.0
        if phase in ("close", "release"):
            self._s = 0.0

    def _near(self, st: PrivilegedState, goal: np.ndarray, tol: float | None = None) -> bool:
        tol = tol or self.config.position_tolerance
        # The target must have arrived at the goal (to 0.5 mm: a mesh object settles with a tremor).
        return bool(np.linalg.norm(st.tip_center - goal) < tol and np.linalg.norm(self._target - goal) < 5e-4)

    def _plan(self, st: PrivilegedState, dt: float) -> tuple[np.ndarray, float, float, bool]:
        """(tip-centre goal (3,), speed, gap goal, squeeze) for the current phase."""
        cfg, env = self.config, self.env
        inst = env.instance
        obj = inst.object
        if inst.task == "tool_open_to":
            return self._target.copy(), cfg.fine_speed, float(inst.target_gap), False
        g_open = min(obj.width + cfg.open_margin, float(self._cal_gap[0]) - 0.001)
        grasp_z = max(0.0055, min(obj.height / 2, 0.012))
        ox, oy = st.object_pos[:2]
        above = np.array([ox, oy, obj.height + cfg.hover_height])
        down = np.array([ox, oy, grasp_z])
        if self._phase == "start":
            self._goto("approach")
        if self._phase == "approach":
            if self._near(st, above, 0.01) and abs(st.tip_gap - g_open) < 0.003:
                self._goto("descend")
            return above, cfg.approach_speed, g_open, False
        if self._phase == "descend":
            if self._near(st, down):
                self._goto("close")
            return down, cfg.fine_speed, g_open, False
        if self._phase == "close":
            self._grasp_xy = self._target[:2].copy()
            if self._phase_time >= cfg.close_time:
                self._goto("lift")
            return self._target.copy(), cfg.fine_speed, max(obj.width - cfg.squeeze, 0.0), True
        squeeze_gap = max(obj.width - cfg.squeeze, 0.0)
        lift = np.array([*self._grasp_xy, cfg.lift_height])
        if self._phase == "lift":
            if self._near(st, lift, 0.01) and inst.task == "tweezer_pick_place":
                self._goto("carry")
            return lift, cfg.fine_speed, squeeze_gap, True
        bin_above = np.array([*BIN_CENTER, cfg.carry_height])
        bin_low = np.array([*BIN_CENTER, cfg.release_height])
        if self._phase == "carry":
            if self._near(st, bin_above, 0.01):
                self._goto("lower")
            return bin_above, cfg.approach_speed * 0.8, squeeze_gap, True
        if self._phase == "lower":
            if self._near(st, bin_low, 0.01):
                self._goto("release")
            return bin_low, cfg.fine_speed, squeeze_gap, True
        if self._phase == "release":
            if self._phase_time >= cfg.release_time:
                self._goto("retreat")
            return bin_low, cfg.fine_speed, float(self._cal_gap[0]), False
        return bin_above, cfg.fine_speed, float(self._cal_gap[0]), False

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def tip_target(self) -> tuple[np.ndarray, float]:
        """The current tool-tip target: position (3,) m in the base frame and pinch-axis yaw (rad)."""
        return self._target.copy(), self._yaw

    @property
    def posture(self) -> float:
        """The last commanded pinch posture scalar (0 = open, 1 = closed)."""
        return getattr(self, "_s_cmd", 0.0)
