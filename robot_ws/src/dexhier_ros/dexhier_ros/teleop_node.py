"""The teleop node (``teleop``): an operator's device → joint requests for the safety supervisor.

A ``control_hz`` timer on the node clock (sim time with the twin) polls the device with the session
time (s since the session started: the first tick at which ``/joint_states`` is known, the safety
supervisor listens and the recorder answers, or ``wait_for_recorder`` wall s passed; the clock
stands still while a service call is pending, see below) and runs
`dexhier.teleop.control.TeleopController` (Cartesian arm target + IK, hand synergy or retargeted
keypoints). It publishes, reliable:

* ``/dexhier/command/arm``, ``/dexhier/command/hand`` (JointTrajectory, one point ``1 / control_hz`` s
  ahead): the joint request, which the safety supervisor checks, clamps and forwards;
* ``/dexhier/teleop/joy`` (sensor_msgs/Joy): the raw device request, axes = linear x, y, z, angular
  x, y, z (fractions of the maximum speeds, base frame), grip ([-1, 1], + opens); buttons = [clutch].

A device command that fails ``DeviceCommand.problems()`` publishes nothing that period (the
supervisor holds once its ``stale_after`` passes); the first one is logged. Operator events:
ESTOP → ``/dexhier/estop`` (Bool true); RESET_ESTOP → ``/dexhier/estop/reset``; START, SAVE, FAIL,
DISCARD, RERECORD → ``/dexhier/recorder/<event>`` (Trigger, the recorder node); HOME →
``/dexhier/sim/reset`` (the twin; ignored while the recorder records, as in the twin loop); QUIT, or the
device going away → the node exits (the launch file ends the session with it). Until a service
answers (and, after HOME or RESET_ESTOP, a fresh ``/joint_states`` re-anchored the arm target) later
events wait, nothing is published and the session clock stands still, as if the call took no time
(as in `dexhier.teleop.session`): HOME + START in one poll records the new scene from its first
step, and a replayed stream loses none of its motion to the round trips.

``device``: replay (``replay_file``, JSON Lines), spacemouse, gamepad, keyboard (reads stdin: run the
node in a terminal of its own, not under a launch file) or handpose: hand keypoints from
``/dexhier/teleop/hand_keypoints`` (geometry_msgs/PoseArray, 21 poses whose positions are the
keypoints in the wrist frame, m, MediaPipe order) drive the fingers; the arm follows ``replay_file``
if set, else it stays still.

Known limitation: the IK needs the cell's arm model and the tool-tip pose in the flange frame. They
come from a twin model (``TwinEnv(render=False)`` of ``task``) kept by this node: reset to scene 0 at
start and to the seed each HOME answer names, as the twin loop does (the pose varies by < 0.1 mm
between scenes). On a real cell the twin's robot and tool model must be the cell's (the same MJCF
the safety supervisor takes its limits from); a calibrated tool-tip pose would replace it there.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import rclpy
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dexhier import vocabulary as V
from dexhier.teleop.commands import DeviceCommand, DeviceDisconnectedError, TeleopEvent
from dexhier.teleop.control import TeleopConfig, TeleopController
from dexhier.teleop.devices import (
    DEVICE_KINDS,
    CompositeDevice,
    HandPoseDevice,
    TeleopDevice,
    keypoints_from_poses,
    make_device,
)
from dexhier_ros import messages as M
from dexhier_ros.runtime import parameter, run_node
from sim.twin import TwinConfig, TwinEnv

RECORDER_EVENTS = {
    TeleopEvent.START: "start",
    TeleopEvent.SAVE: "save",
    TeleopEvent.FAIL: "fail",
    TeleopEvent.DISCARD: "discard",
    TeleopEvent.RERECORD: "rerecord",
}
"""Events served by the recorder node's ``/dexhier/recorder/<name>`` Trigger services."""
FRONT_END_EVENTS = frozenset({*RECORDER_EVENTS, TeleopEvent.ESTOP, TeleopEvent.RESET_ESTOP, TeleopEvent.HOME})
"""Events this node handles in order (speed and hand-mode events go to the controller at once)."""
SERVICE_TIMEOUT = 5.0
"""Wall seconds a HOME / RESET_ESTOP waits for its service before the node gives up on it."""


def open_device(kind: str, replay_file: str) -> tuple[TeleopDevice, HandPoseDevice | None]:
    """The device for ``kind`` and, for ``handpose``, the HandPoseDevice the keypoint topic feeds.

    ValueError / RuntimeError (one line) for an unknown kind, a missing replay file or absent hardware.
    """
    if kind not in DEVICE_KINDS:
        raise ValueError(f"unknown device {kind!r}; valid: {', '.join(DEVICE_KINDS)}")
    if kind == "replay":
        if not replay_file:
            raise ValueError("device replay needs replay_file (a JSON Lines command stream)")
        return make_device("replay", path=replay_file), None
    if kind == "handpose":
        hand = HandPoseDevice()
        if replay_file:
            return CompositeDevice(make_device("replay", path=replay_file), hand), hand
        return hand, hand  # no arm device: the arm holds still, the fingers follow the keypoints
    return make_device(kind), None


@dataclass
class _Pending:
    """A service call in flight. ``anchor``: "home" (new scene), "reanchor" (keep the hand) or None."""

    what: str
    since: float  # node time of the call, s
    since_wall: float  # time.monotonic() of the call, s
    anchor: str | None
    answered: float | None = None  # node time of the answer, s
    seed: int | None = None  # the twin scene a HOME laid out


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        kind = parameter(self, "device", "replay")
        replay_file = parameter(self, "replay_file", "")
        control_hz = parameter(self, "control_hz", 20.0)
        self.task = parameter(self, "task", "tweezer_pick")
        # Wall seconds to wait for the recorder before the session clock starts without it.
        self.wait_for_recorder = parameter(self, "wait_for_recorder", 10.0)
        self.config = TeleopConfig(control_hz=control_hz)
        self.device, self.hand_device = open_device(kind, replay_file)
        # The robot model for the IK (see the known limitation), kept to follow the twin's scenes.
        self.model_env = TwinEnv(
            TwinConfig(task=self.task, render=False, points=False, control_hz=control_hz)
        )
        self.arm_joints, self.hand_joints = self.model_env.robot.arm_joints, self.model_env.robot.hand_joints
        self.controller: TeleopController | None = None
        self._build_controller(seed=0)

        reliable = QoSProfile(depth=10)
        self.pub_arm = self.create_publisher(JointTrajectory, V.command_topic("arm"), reliable)
        self.pub_hand = self.create_publisher(JointTrajectory, V.command_topic("hand"), reliable)
        self.pub_joy = self.create_publisher(Joy, V.TOPIC_TELEOP_JOY, reliable)
        self.pub_estop = self.create_publisher(Bool, "/dexhier/estop", reliable)
        self.create_subscription(JointState, V.TOPIC_JOINT_STATES, self._on_joint_state, reliable)
        self.create_subscription(Bool, "/dexhier/estop", self._on_estop, reliable)
        self.create_subscription(String, "/dexhier/recorder/status", self._on_recorder_status, reliable)
        if self.hand_device is not None:
            self.create_subscription(
                PoseArray, "/dexhier/teleop/hand_keypoints", self._on_keypoints, qos_profile_sensor_data
            )
        self.recorder = {
            ev: self.create_client(Trigger, f"/dexhier/recorder/{name}")
            for ev, name in RECORDER_EVENTS.items()
        }
        self.estop_reset = self.create_client(Trigger, "/dexhier/estop/reset")
        self.sim_reset = self.create_client(Trigger, "/dexhier/sim/reset")

        self.dt = self.config.dt
        self.created = time.monotonic()
        self.supervisor_warned = 0.0  # s after start of the last "waiting for the supervisor" warning
        self.t0: float | None = None  # node time (s) at which the session clock started
        self.arm_q: np.ndarray | None = None  # latest measured arm joints, rad
        self.arm_q_time = -np.inf  # node time it arrived, s
        self.paused = 0.0  # s of node time the session clock stood still (service calls)
        self.events: deque[TeleopEvent] = deque()
        self.pending: _Pending | None = None  # the service call later events wait for
        self.estopped = False
        self.recording = False
        self.invalid = 0
        self.stopped = False
        self.create_timer(self.dt, self._tick)
        self.get_logger().info(
            f"teleop ready: device {getattr(self.device, 'name', kind)}, {control_hz:g} Hz, task {self.task}"
        )

    def _build_controller(self, seed: int) -> None:
        """(Re)build the controller for the twin scene ``seed``: the tool-tip pose in the flange is
        known after a reset (the tool sits in the hand). Kept when the pose did not change."""
        self.model_env.reset(seed)
        self.controller = TeleopController.for_env(self.model_env, self.config, previous=self.controller)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ inputs
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            self.arm_q = M.joint_positions(msg, self.arm_joints)
        except M.MessageError as err:
            self.get_logger().warning(f"ignored joint_states: {err}", throttle_duration_sec=1.0)
            return
        self.arm_q_time = self._now()

    def _on_estop(self, msg: Bool) -> None:
        if msg.data and not self.estopped:
            self.estopped = True
            self.get_logger().warning("e-stop latched: the supervisor forwards nothing until RESET_ESTOP")

    def _on_recorder_status(self, msg: String) -> None:
        try:
            self.recording = json.loads(msg.data)["state"] == "recording"
        except (ValueError, TypeError, KeyError):
            self.get_logger().warning("ignored malformed /dexhier/recorder/status", throttle_duration_sec=5.0)

    def _on_keypoints(self, msg: PoseArray) -> None:
        try:
            k = keypoints_from_poses([(p.position.x, p.position.y, p.position.z) for p in msg.poses])
        except ValueError as err:
            self.get_logger().warning(f"ignored hand keypoints: {err}", throttle_duration_sec=1.0)
            return
        self.hand_device.feed(k, M.from_time(msg.header.stamp))  # NaN is kept: problems() reports it

    # -------------------------------------------------------------------- loop
    def _ready(self) -> bool:
        """The session clock starts once the arm is measured, the safety supervisor listens and the
        recorder answers (or ``wait_for_recorder`` s passed): before that, nothing could move or be
        recorded and a replayed stream would run ahead."""
        if self.arm_q is None:
            return False
        if not self._supervisor_up():
            if time.monotonic() - self.created > self.supervisor_warned + 10.0:
                self.supervisor_warned = time.monotonic() - self.created
                self.get_logger().warning(
                    f"waiting for the safety supervisor (subscribing {V.command_topic('arm')}, publishing "
                    f"{V.controller_topic('arm')}): nothing is sent until it runs"
                )
            return False
        if self.recorder[TeleopEvent.START].service_is_ready():
            return True
        if time.monotonic() - self.created > self.wait_for_recorder:
            self.get_logger().warning(
                f"no recorder after {self.wait_for_recorder:g} s: START, SAVE, ... will be ignored"
            )
            return True
        return False

    def _supervisor_up(self) -> bool:
        """A node turns our requests into controller commands for both groups (the recorder, which
        also subscribes the request topics, does not count)."""
        for group in ("arm", "hand"):
            takers = self.get_subscriptions_info_by_topic(V.command_topic(group))
            senders = self.get_publishers_info_by_topic(V.controller_topic(group))
            if not {(i.node_namespace, i.node_name) for i in takers} & {
                (i.node_namespace, i.node_name) for i in senders
            }:
                return False
        return True

    def _tick(self) -> None:
        if self.stopped:
            return
        now = self._now()
        if self.t0 is None:
            if not self._ready():
                return
            self.t0 = now
            self.controller.reset(self.arm_q)
            self.get_logger().info("session started")
        if self.pending is not None:
            self._check_pending(now)
            self._handle_events()
            if self.pending is not None:
                return  # the session clock stands still: nothing is polled or published
        try:
            cmd = self.device.poll(now - self.t0 - self.paused)
        except DeviceDisconnectedError as err:
            return self._stop(f"device disconnected: {err}")
        problems = cmd.problems()
        if problems:
            self.invalid += 1
            if self.invalid == 1:
                self.get_logger().warning(f"ignoring invalid device command ({'; '.join(problems)}); holding")
            cmd = cmd.motionless()
        if TeleopEvent.QUIT in cmd.events:
            return self._stop("quit by the operator")
        self.controller.apply_events(cmd.events)
        self.events.extend(ev for ev in cmd.events if ev in FRONT_END_EVENTS)
        self._handle_events()
        if problems or self.pending is not None:
            return  # nothing this period: the supervisor holds after its stale timeout
        self._publish(cmd, self.controller.request(cmd), now)

    def _check_pending(self, now: float) -> None:
        """End the pending call once answered (and, after HOME / RESET_ESTOP, re-anchored) or timed out."""
        p = self.pending
        if p.answered is not None and (p.anchor is None or self.arm_q_time > p.answered):
            if p.anchor == "home":
                if p.seed is not None:
                    self._build_controller(p.seed)
                self.controller.reset(self.arm_q)  # a new scene: open synergy, as the twin loop does
            elif p.anchor == "reanchor":
                self.controller.reanchor(self.arm_q)  # resume from where the arm is, not where it was asked
        elif time.monotonic() - p.since_wall > SERVICE_TIMEOUT:
            self.get_logger().error(f"{p.what}: no answer within {SERVICE_TIMEOUT:g} s; continuing without")
            self.controller.reanchor(self.arm_q)
        else:
            return
        self.paused += now - p.since
        self.pending = None

    def _publish(self, cmd: DeviceCommand, request: np.ndarray, now: float) -> None:
        n = len(self.arm_joints)
        self.pub_arm.publish(M.trajectory(self.arm_joints, request[:n], [self.dt]))
        self.pub_hand.publish(M.trajectory(self.hand_joints, request[n:], [self.dt]))
        self.pub_joy.publish(M.joy(cmd.axes(), [int(bool(cmd.clutch))], now))

    # ------------------------------------------------------------------ events
    def _handle_events(self) -> None:
        while self.events and self.pending is None:
            ev = self.events.popleft()
            if ev is TeleopEvent.ESTOP:
                self.pub_estop.publish(Bool(data=True))
                self.estopped = True
                self.get_logger().warning("E-STOP sent: nothing is forwarded until RESET_ESTOP")
            elif ev is TeleopEvent.RESET_ESTOP:
                self._call(self.estop_reset, ev, anchor="reanchor")
            elif ev is TeleopEvent.HOME:
                if self.recording:
                    self.get_logger().warning("HOME ignored while recording: save, fail or discard first")
                else:
                    self._call(self.sim_reset, ev, anchor="home")
            elif ev is TeleopEvent.START and self.estopped:
                self.get_logger().warning("cannot start recording while the e-stop is latched")
            elif ev in RECORDER_EVENTS:
                self._call(self.recorder[ev], ev, anchor=None)

    def _call(self, client, event: TeleopEvent, anchor: str | None) -> None:
        """Call a Trigger service for ``event`` without blocking the executor.

        Until it answers (and, with ``anchor``, a fresh joint state re-anchored the arm target), later
        events wait and the session clock stands still, so that e.g. HOME + START starts recording on
        the new scene and a replayed stream loses none of its motion to the round trip.
        """
        what = event.value
        if not client.service_is_ready():
            self.get_logger().warning(f"{what}: service {client.srv_name} is not available; ignored")
            return
        pending = _Pending(what, self._now(), time.monotonic(), anchor)

        def done(future) -> None:
            try:
                result = future.result()
            except Exception as err:  # the server went away mid-call
                self.get_logger().error(f"{what}: {client.srv_name} failed: {err}")
                result = Trigger.Response(success=False, message=str(err))
            # Two call sites: an rclpy logger call site must keep one severity.
            if result.success:
                self.get_logger().info(f"{what}: {result.message}")
            else:
                self.get_logger().warning(f"{what}: {result.message}")
            if result.success and event is TeleopEvent.RESET_ESTOP:
                self.estopped = False
            if result.success and event in RECORDER_EVENTS:
                self.recording = event in (TeleopEvent.START, TeleopEvent.RERECORD)
            if not result.success:
                pending.anchor = None  # nothing moved: no re-anchor to wait for
            elif event is TeleopEvent.HOME:
                # The twin answers {"episode": k, "seed": s}; another provider: keep the tool-tip pose.
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    pending.seed = int(json.loads(result.message)["seed"])
            pending.answered = self._now()

        self.pending = pending
        client.call_async(Trigger.Request()).add_done_callback(done)

    def _stop(self, reason: str) -> None:
        """End the session: publish nothing more (the supervisor holds) and leave spin."""
        self.stopped = True
        self.get_logger().info(f"stopping: {reason}; the safety supervisor holds the robot")
        rclpy.try_shutdown(context=self.context)

    def close(self) -> None:
        try:
            self.device.close()
        finally:
            self.model_env.close()


def main(args: list[str] | None = None) -> None:
    def make() -> TeleopNode:
        try:
            return TeleopNode()
        except (ValueError, RuntimeError, OSError) as err:  # bad parameter, no hardware, unreadable file
            print(f"teleop: error: {err}", flush=True)
            raise SystemExit(2) from None

    run_node(make, args)


if __name__ == "__main__":
    main()
