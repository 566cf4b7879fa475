"""The learned low-level policy as a ROS node (``lowlevel_policy``): cameras, joints, goal -> joint targets.

A thin adapter over :class:`policies.low_level.LowLevelPolicy` (a checkpoint directory) and
:class:`policies.low_level.ChunkBuffer`. Inputs, all checked and timed out:

* ``/joint_states``: the checkpoint's arm and hand joints (rad), matched by name;
* ``/camera/color/image_raw`` and ``/wrist_camera/color/image_raw`` (sensor-data QoS): the
  checkpoint's cameras, rgb8 or bgr8 at its image size (64x64); other encodings or sizes are
  rejected with one log line, unless ``resize_images`` (a cell's cameras: the centred square, area-
  resized);
* ``/dexhier/tool_state``: ``tip_gap`` (m) from the perception node. The twin's ``/joint_states``
  carries no tool joints (a real tweezer has no encoder either), so perception is the only source:
  without it the node publishes nothing;
* ``/dexhier/subgoal/image`` (the goal camera, same checks) and ``/dexhier/tool_goal``
  (``tip_gap``, m): the high level's goal (``GOAL_QOS``), for now from the ``oracle_goals`` stand-in.

Outputs: ``/dexhier/command/arm`` and ``/dexhier/command/hand``, one-point JointTrajectory each
(reliable), reaching the target one control period later; the safety supervisor checks them.

Timing: a fixed-rate control timer (``control_hz`` on the node's clock, i.e. the twin's ``/clock``
in sim) in its own callback group pops the next action from the chunk buffer and publishes it.
Inference runs in a second callback group, on the other thread of a two-thread executor: when the
buffer runs low (fewer planned actions left than recent inferences took, in control steps) and a
newer observation exists, or when the chunk's horizon runs out (every step with
``temporal_ensemble``), the control timer triggers a guard condition, and the inference callback
predicts a chunk and adds it at the control step of its observation. A slow prediction never
delays a control tick: the previous chunk is used up to its horizon meanwhile, and a late chunk is
used from the current step on.

Observation: the policy was trained on observations of one instant, and the tool state is the
slowest input (clouds at 5 Hz, then perception). With ``sync_to_tool_state`` (default) the joints
and images are those stamped at the tool state's stamp (within ``sync_tolerance``), and the chunk
is anchored at that instant, so its first actions, already past, are skipped. Replaying that
timing in-process (tool state at 5 Hz, 0.25 s late; ``tool_open_to``, 16 seeds) solved 10 episodes
this way, 7 with the newest of each input (a stale tip gap beside fresh joints), 12 with no delay.

Scheduling: with ``realtime_priority`` > 0 the node's threads run under SCHED_FIFO (see
``dexhier_ros.scheduling``) and each inference steps down to the normal scheduler while it runs, so
the control tick preempts it and the rest of the machine is not starved by it.

Safety: when an input is missing or older than its timeout (s on the node's clock, from the
header stamps: ``obs_timeout`` for joints and cameras, ``tool_timeout`` for the tool state,
``goal_timeout`` for the goal) the node publishes nothing, so the safety supervisor holds after its
own stale timeout, and drops its plans; each change is logged once. A new episode on the twin's
``/dexhier/sim/episode`` (only its number, seed and start clock are read) resets the plans and the
sampling noise and drops every input stamped before the episode started. On a cell without that
topic, dropping the plans whenever the inputs go stale is what separates episodes.
"""

from __future__ import annotations

import collections
import sys
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
from dexhier_ros.runtime import log_summary, parameter, run_node
from dexhier_ros.scheduling import apply_realtime_priority, default_scheduler
from policies.low_level import ChunkBuffer, LowLevelPolicy

TIP_GAP = V.TOOL_STATE_NAMES[0]  # "tip_gap" on /dexhier/tool_state and /dexhier/tool_goal
JOINTS, TOOL, GOAL_TOOL = "joints", "tool", "goal_tool"
TOPICS = {JOINTS: V.TOPIC_JOINT_STATES, TOOL: V.TOPIC_TOOL_STATE, V.GOAL_RGB: V.TOPIC_SUBGOAL_IMAGE,
          GOAL_TOOL: V.TOPIC_TOOL_GOAL}  # fmt: skip
HISTORY_S = 2.0  # s of joint states and images kept to pair with a tool state


class LowLevelPolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("lowlevel_policy")
        # The control tick real-time (if asked); inference steps down to the normal scheduler each time.
        apply_realtime_priority(self, parameter(self, "realtime_priority", 0))
        checkpoint = parameter(self, "checkpoint", "checkpoints/lowlevel")
        rate = parameter(self, "control_hz", 20.0)
        ensemble = parameter(self, "temporal_ensemble", False)
        exec_steps = parameter(self, "exec_steps", 0)  # 0 = the checkpoint's
        steps = parameter(self, "steps", 0)  # denoising steps; 0 = the checkpoint's
        self.goal_timeout = parameter(self, "goal_timeout", 0.5)  # s
        self.obs_timeout = parameter(self, "obs_timeout", 0.5)  # s; joints and cameras
        self.tool_timeout = parameter(self, "tool_timeout", 1.0)  # s; perception: 5 Hz plus its latency
        self.sync = parameter(self, "sync_to_tool_state", True)
        self.sync_tolerance = parameter(self, "sync_tolerance", 0.1)  # s
        # A cell's cameras: centre-crop and area-resize their images to the policy's size (the twin's
        # are at that size already, and a mismatch there is a wiring error: rejected).
        self.resize_images = parameter(self, "resize_images", False)
        threads = parameter(self, "threads", 1)  # torch threads: the cores are shared with the twin
        timeouts = (self.goal_timeout, self.obs_timeout, self.tool_timeout, self.sync_tolerance)
        if rate <= 0 or min(exec_steps, steps) < 0 or min(timeouts) <= 0 or threads < 1:
            raise ValueError("control_hz and the timeouts must be > 0, (exec_)steps >= 0, threads >= 1")
        self.timeouts = {V.GOAL_RGB: self.goal_timeout, GOAL_TOOL: self.goal_timeout, TOOL: self.tool_timeout}
        torch.set_num_threads(threads)
        overrides = {"temporal_ensemble": ensemble, "exec_steps": exec_steps or None, "steps": steps or None}
        self.policy = LowLevelPolicy.load(checkpoint, **overrides)
        cfg, layout = self.policy.config, self.policy.layout
        self.arm_joints, self.hand_joints = tuple(layout.arm_joints), tuple(layout.hand_joints)
        self.size = cfg.image_size
        self.cameras = {V.rgb_key(cam): V.camera_topic(cam) for cam in cfg.cameras}
        self.topics = {**TOPICS, **self.cameras}
        self.buffer = ChunkBuffer(cfg.exec_steps, cfg.temporal_ensemble, cfg.ensemble_decay)
        self.dt = 1.0 / rate
        with default_scheduler():  # tracing the network: bulk work
            self._warm_up()

        self.lock = threading.Lock()  # guards the inputs, their history, the episode and the generator
        self.inputs: dict[str, tuple[object, float]] = {}  # key -> newest (value, header stamp s)
        n = int(HISTORY_S * rate) + 1
        self.history = {key: collections.deque(maxlen=n) for key in (JOINTS, *self.cameras)}
        self.ticks: collections.deque[tuple[float, int]] = collections.deque(maxlen=n)  # (time, step)
        self.episode, self.episode_clock, self.generation = 0, 0.0, 0
        self.generator = torch.Generator().manual_seed(0)
        self.busy = False  # an inference is queued or running
        self.requested_step = -1
        self.planned_stamp = -1.0  # stamp of the tool state the newest chunk was predicted from
        self.latency_steps: collections.deque[int] = collections.deque(maxlen=5)
        self.logged: set[str] = set()  # conditions already reported (logged once until they clear)
        self.holding: frozenset[str] | None = None
        self.stats = {"commands": 0, "held": 0, "starved": 0}
        self.publish_times: list[float] = []  # wall (monotonic) s of each published command
        self.inference_ms: list[float] = []
        self.obs_age_ms: list[float] = []  # age of the observation each chunk was predicted from

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
        self.create_subscription(String, V.TOPIC_SIM_EPISODE, self._on_episode, M.EPISODE_QOS)
        self.inference = self.create_guard_condition(self._infer, MutuallyExclusiveCallbackGroup())
        self.create_timer(self.dt, self._control, MutuallyExclusiveCallbackGroup())
        plan = f"{cfg.exec_steps} of {cfg.horizon} actions per chunk"
        if cfg.temporal_ensemble:
            plan = "temporal ensemble, a chunk every step"
        sync = "observations synced to the tool state" if self.sync else "newest of each input"
        self.get_logger().info(
            f"low-level policy from {checkpoint}: {cfg.diffusion}, {cfg.steps} steps, cameras "
            f"{', '.join(cfg.cameras)}, goal camera {cfg.goal_camera}, {rate:g} Hz, {plan}, {sync}"
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
            if stamp < self.episode_clock - 1e-6:  # a message of the previous episode
                return
            self.inputs[key] = (value, stamp)
            if key in self.history:
                self.history[key].append((stamp, value))

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
            img = M.image_array(msg)
            if img.shape[:2] != (self.size, self.size):
                if not self.resize_images:
                    raise M.MessageError(
                        f"{msg.width}x{msg.height} image, the policy takes {self.size}x{self.size} "
                        "(resize_images:=true fits a camera's image to it)"
                    )
                img = M.fit_image(img, self.size)
        except M.MessageError as err:
            return self._once("bad:" + key, f"rejected {self.topics[key]}: {err}")
        self._ok("bad:" + key)
        self._store(key, img, M.from_time(msg.header.stamp))

    def _on_episode(self, msg: String) -> None:
        try:
            doc = M.parse_episode(msg.data, ("episode", "seed", "clock"))  # bounded: a seed torch takes
            episode, seed, clock = doc["episode"], doc["seed"], doc["clock"]
        except ValueError as err:
            self.get_logger().warning(f"ignored malformed /dexhier/sim/episode message: {err}")
            return
        with self.lock:
            if episode == self.episode:
                return
            self.episode, self.episode_clock = episode, clock
            self.generation += 1  # an inference in flight belongs to the old episode: its chunk is dropped
            self.inputs = {k: v for k, v in self.inputs.items() if v[1] >= clock - 1e-6}
            for past in self.history.values():
                past.clear()
            self.ticks.clear()
            self.buffer.reset()
            self.requested_step, self.planned_stamp = -1, -1.0
            self.generator = torch.Generator().manual_seed(seed)
        if episode > 0:
            self.get_logger().info(f"episode {episode} (seed {seed}): plans reset")

    def _stale(self, now: float) -> dict[str, str]:
        """Inputs that are missing or too old -> why (empty when every input is fresh)."""
        out = {}
        with self.lock:
            for key, topic in self.topics.items():
                limit = self.timeouts.get(key, self.obs_timeout)
                if key not in self.inputs:
                    out[key] = f"no {topic} yet" + (" (is perception running?)" if key == TOOL else "")
                elif now - self.inputs[key][1] > limit:
                    out[key] = f"{topic} is {now - self.inputs[key][1]:.2f} s old (limit {limit:g} s)"
        return out

    # ------------------------------------------------------------------ control (fixed rate)
    def _control(self) -> None:
        now = self._now()
        stale = self._stale(now)
        if stale:
            self.buffer.clear()
            self.stats["held"] += 1
            # One line per hold, and another only when a new input goes stale: inputs coming back one
            # by one (the goal's tool gap before its image) are not news.
            if self.holding is None or not stale.keys() <= self.holding:
                self.get_logger().warning(f"holding, no commands: {'; '.join(stale.values())}")
            self.holding = frozenset(stale)
            return
        if self.holding is not None:
            self.holding = None
            self.get_logger().info("inputs fresh: commanding")
        with self.lock:
            self.ticks.append((now, self.buffer.step))
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
        else:
            # Start early enough that the chunk lands before the current one's actions run out, but
            # only from a newer observation (replanning from the same instant gains nothing) unless the
            # current chunk is about to end.
            with self.lock:
                lead = max(self.latency_steps, default=0)
                newest = self.inputs.get(TOOL if self.sync else JOINTS, (None, -1.0))[1]
            newer = newest > self.planned_stamp
            due = (self.buffer.remaining() <= lead and newer) or self.buffer.covered() <= lead
        if due:
            self.busy, self.requested_step = True, step
            self.inference.trigger()

    # ------------------------------------------------------------------ inference (other thread)
    def _at(self, key: str, stamp: float):
        """The ``key`` input stamped nearest ``stamp`` (within ``sync_tolerance``), or None."""
        past = self.history[key]
        if not past:
            return None
        t, value = min(past, key=lambda item: abs(item[0] - stamp))
        return value if abs(t - stamp) <= self.sync_tolerance else None

    def _step_at(self, stamp: float) -> int:
        """The control step that ran right after an observation stamped ``stamp``."""
        for t, step in self.ticks:
            if t >= stamp - 1e-6:
                return step
        return self.buffer.step  # newer than every tick: the next one

    def _observation(self) -> tuple[dict, dict, int, float] | None:
        """(observation, goal, control step it belongs to, its stamp), under the lock; None if incomplete."""
        if len(self.inputs) < len(self.topics):
            return None
        tool, stamp = self.inputs[TOOL]
        if self.sync:
            joints = self._at(JOINTS, stamp)
            images = {key: self._at(key, stamp) for key in self.cameras}
            missing = [self.topics[k] for k, v in ((JOINTS, joints), *images.items()) if v is None]
            if missing:
                self._once("sync", f"no {', '.join(missing)} within {self.sync_tolerance:g} s of the tool "
                                   "state's stamp: waiting")  # fmt: skip
                return None
            self._ok("sync")
            start = self._step_at(stamp)
            if self.buffer.step - start >= self.policy.config.horizon:
                return None  # so old that no action of its chunk would still apply
        else:
            joints = self.inputs[JOINTS][0]
            images = {key: self.inputs[key][0] for key in self.cameras}
            start, stamp = self.buffer.step, self.inputs[JOINTS][1]
        arm, hand = joints
        obs = {V.OBS_ARM_QPOS: arm, V.OBS_HAND_QPOS: hand, V.OBS_TOOL_TIP_GAP: tool, **images}
        goal = {V.GOAL_RGB: self.inputs[V.GOAL_RGB][0], V.GOAL_TOOL_TIP_GAP: self.inputs[GOAL_TOOL][0]}
        return obs, goal, start, stamp

    def _infer(self) -> None:
        try:
            with self.lock:
                generation, generator, asked = self.generation, self.generator, self.buffer.step
                snapshot = self._observation()
            if snapshot is None:
                return
            obs, goal, start, stamp = snapshot
            self.obs_age_ms.append(1000 * (self._now() - stamp))
            t0 = time.perf_counter()
            with default_scheduler():  # bulk work, never ahead of a control tick
                chunk = self.policy.predict_chunk(obs, goal, generator)
            self.inference_ms.append(1000 * (time.perf_counter() - t0))
            with self.lock:
                if generation != self.generation:
                    return
                self.buffer.add(chunk, start)
                self.planned_stamp = stamp
                self.latency_steps.append(self.buffer.step - asked)  # compute time only, in steps
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
                   inferences=len(self.inference_ms), obs_age_p50_ms=q(self.obs_age_ms, 0.5),
                   obs_age_p90_ms=q(self.obs_age_ms, 0.9))  # fmt: skip
        return out

    def close(self) -> None:
        s = self.summary()
        log_summary(
            self,
            f"{s['commands']} commands, {s['held']} ticks held (stale inputs), {s['starved']} waiting for a "
            f"chunk; command period p50 {s['period_p50_ms']:.1f} / p90 {s['period_p90_ms']:.1f} / max "
            f"{s['period_max_ms']:.1f} ms (wall, across pauses); {s['inferences']} inferences, "
            f"p50 {s['inference_p50_ms']:.1f} / p90 {s['inference_p90_ms']:.1f} ms, from observations "
            f"p50 {s['obs_age_p50_ms']:.0f} / p90 {s['obs_age_p90_ms']:.0f} ms old",
        )


def main(args: list[str] | None = None) -> None:
    # Inference holds the GIL between its many small torch calls; switching every 0.2 ms (not 5) lets
    # the control thread and the executor's hand-offs in promptly (command lateness p90 ~10 ms, not ~75).
    sys.setswitchinterval(0.0002)
    # Two threads: the control timer never waits behind an inference.
    run_node(LowLevelPolicyNode, args, executor=lambda: MultiThreadedExecutor(num_threads=2))


if __name__ == "__main__":
    main()
