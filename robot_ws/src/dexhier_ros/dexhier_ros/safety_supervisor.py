"""The safety supervisor node (``safety_supervisor``): between the policy and the controllers.

One :class:`dexhier.safety.SafetySupervisor` per controller (arm, hand); the logic lives there, this
node only adapts ROS to it. Policy commands arrive on ``/dexhier/command/{arm,hand}``
(JointTrajectory; the first point is the target), are checked, clamped to position limits and
rate-limited, and forwarded as one-point trajectories to ``/{arm,hand}_controller/joint_trajectory``.
Holds (stale commands, e-stop) are clamped and rate-limited the same way. ``/dexhier/estop`` (Bool,
True) latches an e-stop until the ``/dexhier/estop/reset`` service. A new episode on
``/dexhier/sim/episode`` (the twin reset the robot) re-anchors the rate limit on the next measured
state; nothing else does. Every decision that is not a plain forward (raw request, command sent,
verdict, reasons) is published on ``/dexhier/safety/status`` (String, JSON).

Watchdog: commands older than ``min(stale_after, watchdog_periods / control_hz)`` s are stale. With
sim time the clock advances in whole control periods, so 1.5 periods holds at the second period
without a command. The watchdog runs on every ``/joint_states`` (the twin's clock step) and on a
wall-clock timer at 5x the control rate (a frozen or bogus ``/clock`` cannot stop it, and a flood
that delays the states delays a hold by at most a fifth of a period).

Robustness: every input is bounded and rejected in linear time before any work, and the command
and state subscriptions keep only the 2 newest messages, so a flood cannot queue up ahead of an
e-stop on the single executor thread (a two-thread executor with the e-stop in its own group was
tried: under SCHED_FIFO on the loaded machine it delayed commands enough that the expert stopped
solving episodes). Rejections are logged at most once a second per reason, with counts.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dexhier import vocabulary as V
from dexhier.safety import LogThrottle, SafetyDecision, SafetyLimits, SafetySupervisor, Verdict
from dexhier_ros import messages as M
from dexhier_ros.runtime import parameter, run_node
from dexhier_ros.scheduling import apply_realtime_priority


def _limits_from_model(vel: dict[str, float], **kw: float) -> dict[str, SafetyLimits]:
    """Arm and hand limits read once from the cell's robot model (the MJCF the robot is built from)."""
    from sim.cell import CellConfig, ObjectParams, build_cell

    _, robot = build_cell(CellConfig(), ObjectParams())
    limits = {}
    for joints, sl in (("arm", slice(0, robot.n_arm)), ("hand", slice(robot.n_arm, None))):
        names = robot.joint_names[sl]
        limits[joints] = SafetyLimits(names=names, lower=robot.lower[sl], upper=robot.upper[sl],
                                      max_velocity=np.full(len(names), vel[joints]), **kw)  # fmt: skip
    return limits


class SafetySupervisorNode(Node):
    def __init__(self) -> None:
        super().__init__("safety_supervisor")
        # On the control path: SCHED_FIFO if asked (dexhier_ros.scheduling).
        apply_realtime_priority(self, parameter(self, "realtime_priority", 0))
        # Accepted for symmetry with the other nodes' launch arguments; limits do not depend on the task.
        parameter(self, "task", "tweezer_pick")
        rate = parameter(self, "control_hz", 20.0)
        stale = parameter(self, "stale_after", 0.1)
        periods = parameter(self, "watchdog_periods", 1.5)
        vel = {
            "arm": parameter(self, "arm_max_velocity", 2.0),
            "hand": parameter(self, "hand_max_velocity", 6.0),
        }
        fault = parameter(self, "fault_margin", 0.25)  # rad a measured joint may be past a limit
        if not (rate > 0 and stale > 0 and periods > 0):
            raise ValueError("control_hz, stale_after and watchdog_periods must be > 0")
        self.dt = 1.0 / rate
        self.stale = min(stale, periods * self.dt)
        limits = _limits_from_model(vel, stale_after=self.stale, fault_margin=fault)
        self.sup = {j: SafetySupervisor(lim) for j, lim in limits.items()}
        # Every supervisor call and the publishing of its decision (uncontended on one executor thread,
        # but it keeps the order if the node is ever spun by several).
        self.lock = threading.Lock()
        self.log = LogThrottle(period=1.0)
        self.episode: int | None = None
        reliable = QoSProfile(depth=10)
        # Only the newest command or state matters: a short queue keeps a flood from piling up ahead
        # of the e-stop (which has its own thread anyway).
        latest = QoSProfile(depth=2)
        self.out = {
            j: self.create_publisher(JointTrajectory, f"/{j}_controller/joint_trajectory", reliable)
            for j in ("arm", "hand")
        }
        self.pub_status = self.create_publisher(String, "/dexhier/safety/status", reliable)
        for j in ("arm", "hand"):
            self.create_subscription(
                JointTrajectory, f"/dexhier/command/{j}", lambda msg, j=j: self._on_command(j, msg), latest
            )
        self.create_subscription(JointState, "/joint_states", self._on_state, latest)
        self.create_subscription(String, V.TOPIC_SIM_EPISODE, self._on_episode, M.EPISODE_QOS)
        self.create_subscription(Bool, "/dexhier/estop", self._on_estop, reliable)
        self.create_service(Trigger, "/dexhier/estop/reset", self._on_reset)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(self.dt / 5, self._tick, clock=steady)
        self.get_logger().info(
            f"safety supervisor: {rate:g} Hz, hold after {self.stale:.3f} s without a command, "
            f"limits and rates from the cell model (arm {vel['arm']:g}, hand {vel['hand']:g} rad/s)"
        )

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _warn(self, reason: str, text: str) -> None:
        """One line per reason at most every second, saying how many were not shown."""
        if line := self.log.message(reason, text, time.monotonic()):
            self.get_logger().warning(line)

    def _send(self, joints: str, decision: SafetyDecision | None) -> None:
        """Publish a decision; call with the lock held, so no later decision overtakes it."""
        if decision is None:
            return
        sup = self.sup[joints]
        if decision.command is not None:
            self.out[joints].publish(M.trajectory(sup.limits.names, decision.command, [self.dt]))
        if decision.verdict is not Verdict.FORWARDED:
            doc = {"controller": joints, "verdict": decision.verdict.value, "time": self._now(),
                   "reasons": list(decision.reasons[:8]),
                   "request": None if decision.request is None else decision.request.tolist(),
                   "command": None if decision.command is None else decision.command.tolist()}  # fmt: skip
            self.pub_status.publish(String(data=json.dumps(doc)))

    def _on_command(self, joints: str, msg: JointTrajectory) -> None:
        if not msg.points:
            return self._warn(f"{joints}:empty", f"rejected {joints} command: empty trajectory")
        point = msg.points[0]
        with self.lock:
            decision = self.sup[joints].submit(
                msg.joint_names, np.asarray(point.positions, float), self._now()
            )
            self._send(joints, decision)
        if decision.verdict is Verdict.REJECTED:
            why = decision.reasons[0].split(":")[0]
            self._warn(f"{joints}:{why}", f"rejected {joints} command: {'; '.join(decision.reasons)[:500]}")

    def _on_state(self, msg: JointState) -> None:
        if len(msg.position) != len(msg.name):
            return self._warn("state:lengths", "ignored joint_states: names and positions differ in length")
        # Stamp with our own clock: a sender's absurd header stamp must not steer the rate limiter.
        now = self._now()
        positions = np.asarray(msg.position, float)
        with self.lock:
            for j, sup in self.sup.items():
                sup.update_state(msg.name, positions, now)
                if sup.last_state_error:
                    why = sup.last_state_error.split(":")[0]
                    self._warn(f"state:{j}:{why}", f"joint_states ({j}): {sup.last_state_error[:500]}")
                self._send(j, sup.tick(now))  # the twin's clock steps with its states: check right away

    def _on_episode(self, msg: String) -> None:
        try:
            episode = M.parse_episode(msg.data, ("episode",))["episode"]
        except M.MessageError as err:
            return self._warn("episode", f"ignored malformed {V.TOPIC_SIM_EPISODE} message: {err}")
        if episode == self.episode:
            return
        now = self._now()
        with self.lock:
            for sup in self.sup.values():
                sup.rebase(now)  # the twin moved the robot: anchor on its next measured state
        if self.episode is not None:
            self.get_logger().info(f"episode {episode}: rate limit re-anchored on the next joint state")
        self.episode = episode

    def _on_estop(self, msg: Bool) -> None:
        if not msg.data:
            return
        with self.lock:
            now = self._now()
            latched = [j for j, sup in self.sup.items() if not sup.estopped]
            for j in latched:
                self._send(j, self.sup[j].estop(True, now))
        if latched:
            self.get_logger().error("e-stop latched: holding position until /dexhier/estop/reset")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            now = self._now()
            was = [sup.reset_estop(now) for sup in self.sup.values()]
        response.success = True
        response.message = "e-stop released" if any(was) else "e-stop was not latched"
        return response

    def _tick(self) -> None:
        with self.lock:
            now = self._now()
            for j, sup in self.sup.items():
                self._send(j, sup.tick(now))


def main(args: list[str] | None = None) -> None:
    run_node(SafetySupervisorNode, args)


if __name__ == "__main__":
    main()
