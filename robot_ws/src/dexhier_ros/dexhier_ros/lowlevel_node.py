"""The learned low-level policy as a ROS node (``lowlevel_policy``): cameras, joints, goal -> joint targets.

A thin adapter over :class:`policies.low_level.LowLevelPolicy` (a checkpoint directory) and
:class:`policies.low_level.ChunkBuffer`. Inputs, all checked and timed out:

* ``/joint_states``: the checkpoint's arm and hand joints (rad), matched by name;
* ``/camera/color/image_raw`` and ``/wrist_camera/color/image_raw`` (sensor-data QoS): the
  checkpoint's cameras, rgb8 or bgr8 at its image size (64x64); other encodings or sizes are
  rejected with one log line;
* ``/dexhier/tool_state``: ``tip_gap`` (m) from the perception node. The twin's ``/joint_states``
  carries no tool joints (a real tweezer has no encoder either), so perception is the only source:
  without it the node publishes nothing;
* ``/dexhier/subgoal/image`` (the goal camera, same checks) and ``/dexhier/tool_goal``
  (``tip_gap``, m): the high level's goal (``GOAL_QOS``), for now from the ``oracle_goals`` stand-in.

Outputs: ``/dexhier/command/arm`` and ``/dexhier/command/hand``, one-point JointTrajectory each
(reliable), reaching the target one control period later; the safety supervisor checks them.

Timing: a fixed-rate control timer (``control_hz`` on the node's clock, i.e. the twin's ``/clock``
in sim) in its own callback group pops the next action from the chunk buffer and publishes it.
Inference runs in a second callback group, on the other thread of a two-thread executor: when
the buffer runs low (fewer planned actions left than recent inferences took, in control steps;
every step with ``temporal_ensemble``) the control timer triggers a guard condition, and the
inference callback predicts a chunk from the newest observation and goal and adds it at the step of
that observation. A slow prediction therefore never delays a control tick: the previous chunk is
used up to its horizon meanwhile, and the late chunk is used from the current step on.

Safety: when an input is missing or older than ``obs_timeout`` / ``goal_timeout`` (s on the node's
clock, from the header stamps) the node publishes nothing, so the safety supervisor holds after its
own stale timeout, and drops its plans; each change is logged once. A new episode on the twin's
``/dexhier/sim/episode`` (only its number, seed and start clock are read) resets the plans and the
sampling noise and drops every input stamped before the episode started. On a cell without that
topic, dropping the plans whenever the inputs go stale is what separates episodes.
"""

from __future__ import annotations

import collections
import json
import threading
import time

import numpy as np
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from dexhier import vocabulary as V
from dexhier_ros import messages as M
from dexhier_ros.runtime import parameter, run_node
from policies.low_level import ChunkBuffer, LowLevelPolicy

TIP_GAP = V.TOOL_STATE_NAMES[0]  # "tip_gap" on /dexhier/tool_state and /dexhier/tool_goal
JOINTS, TOOL, GOAL_TOOL = "joints", "tool", "goal_tool"
TOPICS = {JOINTS: "/joint_states", TOOL: "/dexhier/tool_state", V.GOAL_RGB: "/dexhier/subgoal/image",
          GOAL_TOOL: "/dexhier/tool_goal"}  # fmt: skip


class LowLevelPolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("lowlevel_policy")
        checkpoint = parameter(self, "checkpoint", "checkpoints/lowlevel")
        rate = parameter(self, "control_hz", 20.0)
        ensemble = parameter(self, "temporal_ensemble", False)
        exec_steps = parameter(self, "exec_steps", 0)  # 0 = the checkpoint's
        self.goal_timeout = parameter(self, "goal_timeout", 0.5)  # s
        self.obs_timeout = parameter(self, "obs_timeout", 0.5)  # s; the tool state comes at 5 Hz
        threads = parameter(self, "threads", 1)  # torch threads: the cores are shared with the twin
        if rate <= 0 or exec_steps < 0 or self.goal_timeout <= 0 or self.obs_timeout <= 0 or threads < 1:
            raise ValueError(
                "control_hz, goal_timeout, obs_timeout must be > 0, exec_steps >= 0, threads >= 1"
            )
        torch.set_num_threads(threads)
        overrides = {"temporal_ensemble": ensemble, "exec_steps": exec_steps or None}
        self.policy = LowLevelPolicy.load(checkpoint, **overrides)
        cfg, layout = self.policy.config, self.policy.layout
        self.arm_joints, self.hand_joints = tuple(layout.arm_joints), tuple(layout.hand_joints)
        self.size = cfg.image_size
        self.cameras = {V.rgb_key(cam): V.camera_topic(cam) for cam in cfg.cameras}
        self.topics = {**TOPICS, **self.cameras}
        self.buffer = ChunkBuffer(cfg.exec_steps, cfg.temporal_ensemble, cfg.ensemble_decay)
        self.dt = 1.0 / rate
        self._warm_up()

        self.lock = threading.Lock()  # guards the inputs, the episode and the generator
        self.inputs: dict[str, tuple[object, float]] = {}  # key -> (value, header stamp s)
        self.episode, self.episode_clock, self.generation = 0, 0.0, 0
        self.generator = torch.Generator().manual_seed(0)
        self.busy = False  # an inference is queued or running
        self.requested_step = -1
        self.latency_steps: collections.deque[int] = collections.deque(maxlen=5)
        self.logged: set[str] = set()  # conditions already reported (logged once until they clear)
        self.holding: frozenset[str] | None = None
        self.stats = {"commands": 0, "held": 0, "starved": 0}
        self.publish_times: list[float] = []  # wall (monotonic) s of each published command
        self.inference_ms: list[float] = []
        self.tool_age_ms: list[float] = []  # age of the tool state each chunk was predicted from

        reliable = QoSProfile(depth=10)
        self.pub_arm = self.create_publisher(JointTrajectory, "/dexhier/command/arm", reliable)
        self.pub_hand = self.create_publisher(JointTrajectory, "/dexhier/command/hand", reliable)
        # Subscriptions stay in the default group (with /clock): short callbacks only.
        self.create_subscription(JointState, TOPICS[JOINTS], self._on_joints, reliable)
        self.create_subscription(JointState, TOPICS[TOOL], self._on_tool, reliable)
        self.create_subscription(JointState, TOPICS[GOAL_TOOL], self._on_tool_goal, M.GOAL_QOS)
        self.create_subscription(
            Image, TOPICS[V.GOAL_RGB], lambda m: self._on_image(V.GOAL_RGB, m), M.GOAL_QOS
        )
        for key, topic in self.cameras.items():
            self.create_subscription(
                Image, topic, lambda m, k=key: self._on_image(k, m), qos_profile_sensor_data
            )
        self.create_subscription(String, "/dexhier/sim/episode", self._on_episode, M.EPISODE_QOS)
        self.inference = self.create_guard_condition(self._infer, MutuallyExclusiveCallbackGroup())
        self.create_timer(self.dt, self._control, MutuallyExclusiveCallbackGroup())
        plan = f"{cfg.exec_steps} of {cfg.horizon} actions per chunk"
        if cfg.temporal_ensemble:
            plan = "temporal ensemble, a chunk every step"
        self.get_logger().info(
            f"low-level policy from {checkpoint}: {cfg.diffusion}, {cfg.steps} steps, cameras "
            f"{', '.join(cfg.cameras)}, goal camera {cfg.goal_camera}, {rate:g} Hz, {plan}"
        )

    def _warm_up(self) -> None:
        """One prediction on a blank input, so that tracing the network does not delay the first chunk."""
        blank = np.zeros((self.size, self.size, 3), np.uint8)
        mid = (np.asarray(self.policy.layout.lower) + np.asarray(self.policy.layout.upper)) / 2
        n = len(self.arm_joints)
        obs = {V.OBS_ARM_QPOS: mid[:n], V.OBS_HAND_QPOS: mid[n:], V.OBS_TOOL_TIP_GAP: np.array([0.01]),
               **dict.fromkeys(self.cameras, blank)}  # fmt: skip
        self.policy.predict_chunk(obs, {V.GOAL_RGB: blank, V.GOAL_TOOL_TIP_GAP: np.array([0.01])})

    # ------------------------------------------------------------------ logging once
    def _once(self, key: str, text: str) -> None:
        if key not in self.logged:
            self.logged.add(key)
            self.get_logger().warning(text)

    def _ok(self, key: str) -> None:
        self.logged.discard(key)

    # ------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _store(self, key: str, value: object, stamp: float) -> None:
        with self.lock:
            if stamp >= self.episode_clock - 1e-6:  # else: a message of the previous episode
                self.inputs[key] = (value, stamp)

    def _on_joints(self, msg: JointState) -> None:
        try:
            value = (M.joint_positions(msg, self.arm_joints), M.joint_positions(msg, self.hand_joints))
        except M.MessageError as err:
            return self._once("bad:" + JOINTS, f"rejected {TOPICS[JOINTS]}: {err}")
        self._ok("bad:" + JOINTS)
        self._store(JOINTS, value, M.from_time(msg.header.stamp))

    def _gap(self, key: str, msg: JointState) -> None:
        try:
            gap = M.joint_positions(msg, [TIP_GAP])
        except M.MessageError as err:
            return self._once("bad:" + key, f"rejected {TOPICS[key]}: {err}")
        self._ok("bad:" + key)
        self._store(key, gap, M.from_time(msg.header.stamp))

    def _on_tool(self, msg: JointState) -> None:
        self._gap(TOOL, msg)

    def _on_tool_goal(self, msg: JointState) -> None:
        self._gap(GOAL_TOOL, msg)

    def _on_image(self, key: str, msg: Image) -> None:
        try:
            if msg.encoding not in ("rgb8", "bgr8"):
                raise M.MessageError(f"encoding {msg.encoding!r}, expected rgb8 or bgr8")
            if (msg.width, msg.height) != (self.size, self.size):
                raise M.MessageError(
                    f"{msg.width}x{msg.height} image, the policy takes {self.size}x{self.size}"
                )
            img = M.image_array(msg)
        except M.MessageError as err:
            return self._once("bad:" + key, f"rejected {self.topics[key]}: {err}")
        self._ok("bad:" + key)
        self._store(key, img, M.from_time(msg.header.stamp))

    def _on_episode(self, msg: String) -> None:
        try:
            doc = json.loads(msg.data)
            episode, seed, clock = int(doc["episode"]), int(doc["seed"]), float(doc["clock"])
        except (ValueError, TypeError, KeyError) as err:
            self.get_logger().warning(f"ignored malformed /dexhier/sim/episode message: {err}")
            return
        with self.lock:
            if episode == self.episode:
                return
            self.episode, self.episode_clock = episode, clock
            self.generation += 1  # an inference in flight belongs to the old episode: its chunk is dropped
            self.inputs = {k: v for k, v in self.inputs.items() if v[1] >= clock - 1e-6}
            self.buffer.reset()
            self.requested_step = -1
            self.generator = torch.Generator().manual_seed(seed)
        if episode > 0:
            self.get_logger().info(f"episode {episode} (seed {seed}): plans reset")

    def _stale(self, now: float) -> dict[str, str]:
        """Inputs that are missing or too old -> why (empty when every input is fresh)."""
        out = {}
        with self.lock:
            for key, topic in self.topics.items():
                limit = self.goal_timeout if key in (V.GOAL_RGB, GOAL_TOOL) else self.obs_timeout
                if key not in self.inputs:
                    out[key] = f"no {topic} yet" + (" (is perception running?)" if key == TOOL else "")
                elif now - self.inputs[key][1] > limit:
                    out[key] = f"{topic} is {now - self.inputs[key][1]:.2f} s old (limit {limit:g} s)"
        return out

    # ------------------------------------------------------------------ control (fixed rate)
    def _control(self) -> None:
        stale = self._stale(self._now())
        if stale:
            self.buffer.clear()
            self.stats["held"] += 1
            if self.holding != frozenset(stale):
                self.holding = frozenset(stale)
                self.get_logger().warning(f"holding, no commands: {'; '.join(stale.values())}")
            return
        if self.holding is not None:
            self.holding = None
            self.get_logger().info("inputs fresh: commanding")
        action = self.buffer.pop()
        self._request_inference()
        if action is None:  # the first chunk of this stretch is still being predicted
            self.stats["starved"] += 1
            return
        n = len(self.arm_joints)
        self.pub_arm.publish(M.trajectory(self.arm_joints, action[:n], [self.dt]))
        self.pub_hand.publish(M.trajectory(self.hand_joints, action[n:], [self.dt]))
        self.stats["commands"] += 1
        self.publish_times.append(time.monotonic())

    def _request_inference(self) -> None:
        if self.busy:
            return
        step = self.buffer.step
        if self.buffer.temporal_ensemble:
            due = step > self.requested_step
        else:  # start early enough that the chunk lands before the current one's actions run out
            due = self.buffer.remaining() <= max(self.latency_steps, default=0)
        if due:
            self.busy, self.requested_step = True, step
            self.inference.trigger()

    # ------------------------------------------------------------------ inference (other thread)
    def _infer(self) -> None:
        try:
            with self.lock:
                generation, start, generator = self.generation, self.buffer.step, self.generator
                inputs = dict(self.inputs)
            if len(inputs) < len(self.topics):
                return
            self.tool_age_ms.append(1000 * (self._now() - inputs[TOOL][1]))
            (arm, hand), tool = inputs[JOINTS][0], inputs[TOOL][0]
            obs = {V.OBS_ARM_QPOS: arm, V.OBS_HAND_QPOS: hand, V.OBS_TOOL_TIP_GAP: tool,
                   **{key: inputs[key][0] for key in self.cameras}}  # fmt: skip
            goal = {V.GOAL_RGB: inputs[V.GOAL_RGB][0], V.GOAL_TOOL_TIP_GAP: inputs[GOAL_TOOL][0]}
            t0 = time.perf_counter()
            chunk = self.policy.predict_chunk(obs, goal, generator)
            self.inference_ms.append(1000 * (time.perf_counter() - t0))
            with self.lock:
                if generation != self.generation:
                    return
                self.buffer.add(chunk, start)
                self.latency_steps.append(self.buffer.step - start)
        except (ValueError, KeyError) as err:
            self.get_logger().error(f"inference failed: {err}", throttle_duration_sec=1.0)
        finally:
            self.busy = False

    # ------------------------------------------------------------------ shutdown
    def summary(self) -> dict[str, float]:
        """Counters and timing (ms, wall clock) of this run, as logged at shutdown."""
        period = 1000 * np.diff(self.publish_times) if len(self.publish_times) > 1 else np.zeros(0)
        out: dict[str, float] = dict(self.stats)

        def q(values, p: float) -> float:
            return float(np.quantile(values, p)) if len(values) else float("nan")

        out.update(period_p50_ms=q(period, 0.5), period_p90_ms=q(period, 0.9),
                   period_max_ms=float(period.max()) if len(period) else float("nan"),
                   inference_p50_ms=q(self.inference_ms, 0.5), inference_p90_ms=q(self.inference_ms, 0.9),
                   inferences=len(self.inference_ms), tool_age_p50_ms=q(self.tool_age_ms, 0.5),
                   tool_age_p90_ms=q(self.tool_age_ms, 0.9))  # fmt: skip
        return out

    def close(self) -> None:
        s = self.summary()
        self.get_logger().info(
            f"{s['commands']} commands, {s['held']} ticks held (stale inputs), {s['starved']} waiting for a "
            f"chunk; command period p50 {s['period_p50_ms']:.1f} / p90 {s['period_p90_ms']:.1f} / max "
            f"{s['period_max_ms']:.1f} ms (wall, across pauses); {s['inferences']} inferences, "
            f"p50 {s['inference_p50_ms']:.1f} / p90 {s['inference_p90_ms']:.1f} ms, from a tool state "
            f"p50 {s['tool_age_p50_ms']:.0f} / p90 {s['tool_age_p90_ms']:.0f} ms old"
        )


def main(args: list[str] | None = None) -> None:
    # Two threads: the control timer never waits behind an inference.
    run_node(LowLevelPolicyNode, args, executor=lambda: MultiThreadedExecutor(num_threads=2))


if __name__ == "__main__":
    main()
