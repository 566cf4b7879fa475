"""The safety supervisor node (``safety_supervisor``): between the policy and the controllers.

One :class:`dexhier.safety.SafetySupervisor` per controller (arm, hand). Policy commands arrive on
``/dexhier/command/{arm,hand}`` (JointTrajectory; the first point is the target), are checked,
clamped to position limits and rate-limited, and forwarded as one-point trajectories to
``/{arm,hand}_controller/joint_trajectory``. A control-rate timer holds the current position when
commands go stale. ``/dexhier/estop`` (Bool, True) latches an e-stop until the
``/dexhier/estop/reset`` service. Every decision (raw request, command sent, verdict, reasons) is
published on ``/dexhier/safety/status`` (String, JSON).
"""

from __future__ import annotations

import json

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dexhier.safety import SafetyDecision, SafetyLimits, SafetySupervisor
from dexhier_ros import messages as M
from dexhier_ros.runtime import parameter, run_node
from dexhier_ros.scheduling import apply_realtime_priority


def _limits_from_model(arm_velocity: float, hand_velocity: float, stale: float) -> dict[str, SafetyLimits]:
    """Arm and hand limits read once from the cell's robot model (the MJCF the robot is built from)."""
    from sim.cell import CellConfig, ObjectParams, build_cell

    _, robot = build_cell(CellConfig(), ObjectParams())
    limits = {}
    for joints, sl, vel in (("arm", slice(0, robot.n_arm), arm_velocity),
                            ("hand", slice(robot.n_arm, None), hand_velocity)):  # fmt: skip
        names = robot.joint_names[sl]
        limits[joints] = SafetyLimits(names=names, lower=robot.lower[sl], upper=robot.upper[sl],
                                      max_velocity=np.full(len(names), vel), stale_after=stale)  # fmt: skip
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
        arm_vel, hand_vel = (
            parameter(self, "arm_max_velocity", 2.0),
            parameter(self, "hand_max_velocity", 6.0),
        )
        self.sup = {
            j: SafetySupervisor(lim) for j, lim in _limits_from_model(arm_vel, hand_vel, stale).items()
        }
        reliable = QoSProfile(depth=10)
        self.out = {
            j: self.create_publisher(JointTrajectory, f"/{j}_controller/joint_trajectory", reliable)
            for j in ("arm", "hand")
        }
        self.pub_status = self.create_publisher(String, "/dexhier/safety/status", reliable)
        for j in ("arm", "hand"):
            self.create_subscription(
                JointTrajectory, f"/dexhier/command/{j}", lambda msg, j=j: self._on_command(j, msg), reliable
            )
        self.create_subscription(JointState, "/joint_states", self._on_state, reliable)
        self.create_subscription(Bool, "/dexhier/estop", self._on_estop, reliable)
        self.create_service(Trigger, "/dexhier/estop/reset", self._on_reset)
        self.dt = 1.0 / rate
        self.last_sent: dict[int, np.ndarray] = {}
        self.jump_threshold = parameter(self, "jump_threshold", 0.5)  # rad between command and state
        self.create_timer(self.dt, self._tick)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _send(self, joints: str, decision: SafetyDecision | None) -> None:
        if decision is None:
            return
        sup = self.sup[joints]
        if decision.command is not None:
            self.out[joints].publish(M.trajectory(sup.limits.names, decision.command, [self.dt]))
            self.last_sent[id(sup)] = decision.command
        if decision.verdict.value != "forwarded":
            doc = {"controller": joints, "verdict": decision.verdict.value, "reasons": list(decision.reasons),
                   "time": self._now(),
                   "request": None if decision.request is None else decision.request.tolist(),
                   "command": None if decision.command is None else decision.command.tolist()}  # fmt: skip
            self.pub_status.publish(String(data=json.dumps(doc)))

    def _on_command(self, joints: str, msg: JointTrajectory) -> None:
        if not msg.points:
            self.get_logger().warning(f"rejected {joints} command: empty trajectory")
            return
        point = msg.points[0]
        if len(point.positions) != len(msg.joint_names):
            self.get_logger().warning(f"rejected {joints} command: {len(point.positions)} positions "
                                      f"for {len(msg.joint_names)} joints")  # fmt: skip
            return
        decision = self.sup[joints].submit(
            list(msg.joint_names), np.asarray(point.positions, float), self._now()
        )
        if decision.verdict.value == "rejected":
            self.get_logger().warning(f"rejected {joints} command: {'; '.join(decision.reasons)}")
        self._send(joints, decision)

    def _on_state(self, msg: JointState) -> None:
        if len(msg.position) != len(msg.name):
            self.get_logger().warning("ignored joint_states: names and positions differ in length")
            return
        # Stamp with our own clock: a sender's absurd header stamp must not steer the rate limiter.
        now = self._now()
        for sup in self.sup.values():
            sup.update_state(list(msg.name), np.asarray(msg.position, float), now)
            self._rebase_after_jump(sup, now)
            if sup.last_state_error:
                self.get_logger().warning(f"joint_states: {sup.last_state_error}", throttle_duration_sec=1.0)

    def _rebase_after_jump(self, sup: SafetySupervisor, now: float) -> None:
        """A measured state far from the last forwarded command (the twin was reset, the arm was
        jogged) means that command no longer describes the robot: rate-limit from the state."""
        state, last = sup.state, self.last_sent.get(id(sup))
        if state is not None and last is not None and np.max(np.abs(state - last)) > self.jump_threshold:
            sup.rebase(now)
            self.last_sent.pop(id(sup))
            self.get_logger().info("measured state jumped away from the last command: rate limit re-anchored")

    def _on_estop(self, msg: Bool) -> None:
        for j, sup in self.sup.items():
            self._send(j, sup.estop(bool(msg.data), self._now()))
        if msg.data:
            self.get_logger().error("e-stop latched: holding position until /dexhier/estop/reset")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        was = [sup.reset_estop(self._now()) for sup in self.sup.values()]
        response.success = True
        response.message = "e-stop released" if any(was) else "e-stop was not latched"
        return response

    def _tick(self) -> None:
        now = self._now()
        for j, sup in self.sup.items():
            self._send(j, sup.tick(now))


def main(args: list[str] | None = None) -> None:
    run_node(SafetySupervisorNode, args)


if __name__ == "__main__":
    main()
