"""The learned high level as a ROS node (``highlevel``): scene image + tool state -> the low level's goal.

A thin adapter over :class:`policies.high_level.controller.SubgoalPlanner` (subgoal generator
``generator`` + the selector ``filter``: the progress classifier, or the reachability estimate with
``selection:=value``; checkpoint directories), replacing the
``oracle_goals`` stand-in. Inputs:

* the scene camera's colour image (``/camera/color/image_raw``, the generator's camera;
  sensor-data QoS): rgb8 or bgr8, square and at least the generator's resolution (it is
  area-resized to it); other encodings or sizes are rejected, unless ``resize_images`` (a cell's
  camera: the centred square, area-resized);
* ``/dexhier/tool_state`` from perception, rebuilt into an
  :class:`~perception.encoder.AffordanceEstimate` by :func:`estimate_from_tool_state` (the object
  fields only when perception saw the object); older than ``tool_timeout`` it counts as no estimate,
  as an invalid cloud does in-process;
* ``/joint_states``, for a task with a place point only (``tweezer_pick_place``; ``place_xy``, base
  frame, m, sets a cell's bin, by default the twin's): the tips' position by forward kinematics,
  which the stage tracker needs to release over the bin; older than ``tool_timeout`` or from before
  the episode it counts as unknown (the tracker then keeps squeezing);
* ``/dexhier/sim/episode``: a new episode resets the planner with the episode's seed and drops the
  inputs stamped before it started (only its number, seed and start clock are read). Episode 0 is
  the twin's idle start-up scene: no goals then, as from ``oracle_goals``. Without that topic (a
  cell) the node plans from start-up.

A timer at ``rate_hz`` (the control rate, on the node's clock: the twin's ``/clock`` in sim) calls
``planner.update`` when a new scene image has arrived since the last tick and it is at most
``image_timeout`` old by its stamp; otherwise it skips the tick. So the planner's steps
(``replan_every``, the stage tracker's step counts) are scene images: at the twin's camera rate
(every 2nd control step) one step per 2 control periods, where the in-process rollout steps every
control period. The timer runs in its own callback group on a two-thread executor: sampling the
candidates (tens to hundreds of ms) never blocks the subscriptions.

Outputs, stamped with the scene image they answer, with ``GOAL_QOS`` (reliable, keep the newest):

* ``/dexhier/subgoal/image`` (rgb8, the chosen subgoal upsampled to ``image_size``, 64 px: the low
  level's goal size);
* ``/dexhier/tool_goal`` (JointState, ``tip_gap`` m), only when finite (NaN until the tool is seen);
* ``/dexhier/highlevel/stage`` (String, JSON ``{"stage", "retries", "tool_goal", "chosen_at"}``,
  ``tool_goal`` null when unknown, ``chosen_at`` the planner step the image was chosen at).

Bad input (an unusable image or tool state) is rejected with one log line per reason every
``LOG_EVERY`` s; a failing update is logged the same way. The node keeps running.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from dexhier import vocabulary as V
from dexhier_ros import messages as M
from dexhier_ros.runtime import log_summary, parameter, run_node
from perception.encoder import AffordanceEstimate
from policies.high_level.controller import load_planner
from policies.high_level.generator import resize_image
from policies.high_level.stages import tip_in_base

TIP_GAP = V.TOOL_STATE_NAMES[0]  # "tip_gap" on /dexhier/tool_state and /dexhier/tool_goal
FRAMES = {"scene": V.FRAME_SCENE_CAMERA, "wrist": V.FRAME_WRIST_CAMERA}
LOG_EVERY = 5.0  # s (wall) between two log lines of one reason


def estimate_from_tool_state(names: Sequence[str], positions: Sequence[float]) -> AffordanceEstimate:
    """The affordance estimate perception published as ``/dexhier/tool_state`` (names and positions).

    ``tip_gap`` and ``opening_angle`` are required; ``max_gap`` and the object fields
    (``V.TOOL_STATE_OBJECT_NAMES``) are NaN when absent, and the object counts as seen
    (``object_valid``) only when all of its fields are there. The tool-state latent is not on the
    topic (it is empty here; the planner does not use it). Raises ``M.MessageError`` when names and
    positions differ in length, a required field is missing or a known field is not finite.
    """
    names = list(names)
    if len(names) != len(positions):
        raise M.MessageError(f"tool state has {len(names)} names but {len(positions)} positions")
    value = dict(zip(names, (float(p) for p in positions), strict=True))
    missing = [n for n in V.TOOL_STATE_NAMES if n not in value]
    if missing:
        raise M.MessageError(f"tool state lacks {missing}")
    known = (*V.TOOL_STATE_NAMES, V.TOOL_STATE_MAX_GAP, *V.TOOL_STATE_OBJECT_NAMES)
    bad = [n for n in known if n in value and not math.isfinite(value[n])]
    if bad:
        raise M.MessageError(f"tool state has non-finite {bad}")
    nan = float("nan")
    seen = all(n in value for n in V.TOOL_STATE_OBJECT_NAMES)
    approach, contact, prob, *center = (value.get(n, nan) if seen else nan for n in V.TOOL_STATE_OBJECT_NAMES)
    return AffordanceEstimate(
        valid=True,
        reason="",
        latent=np.zeros(0, np.float32),
        tip_gap=value[V.TOOL_STATE_NAMES[0]],
        opening_angle=value[V.TOOL_STATE_NAMES[1]],
        max_gap=value.get(V.TOOL_STATE_MAX_GAP, nan),
        object_valid=seen,
        approach_opening=approach,
        contact_opening=contact,
        graspable=seen and prob >= 0.5,
        graspable_prob=prob,
        object_center=np.asarray(center, np.float64),
    )


@dataclass(frozen=True)
class _Stamped:
    value: Any
    stamp: float  # header stamp, s
    seq: int  # arrival number (images), so that a tick knows whether it has seen it


class HighLevelNode(Node):
    def __init__(self) -> None:
        super().__init__("highlevel")
        generator = parameter(self, "generator", "checkpoints/subgoal")
        filter_dir = parameter(self, "filter", "checkpoints/subgoal_filter")
        task = parameter(self, "task", "tweezer_pick")
        candidates = parameter(self, "candidates", 4)
        selection = parameter(self, "selection", "progress")
        # Planner steps are scene images (10 Hz in the twin): 5 = the in-process 10 control steps.
        replan_every = parameter(self, "replan_every", 5)
        rate = parameter(self, "rate_hz", 20.0)  # the control rate
        self.image_size = parameter(self, "image_size", 64)  # px, the low level's goal images
        self.resize_images = parameter(self, "resize_images", False)  # a cell's camera: crop + area-resize
        self.image_timeout = parameter(self, "image_timeout", 0.5)  # s, scene image age by its stamp
        self.tool_timeout = parameter(self, "tool_timeout", 1.0)  # s; perception: 5 Hz plus its latency
        steps = parameter(self, "steps", 0)  # denoising steps; 0 = the checkpoint's
        threads = parameter(self, "threads", 1)  # torch threads: the cores are shared with the twin
        place_xy = [float(v) for v in parameter(self, "place_xy", [0.0])]  # m; one value: the task's
        if len(place_xy) not in (1, 2):
            raise ValueError(f"place_xy must be [x, y] (m) or one value (the task's), got {place_xy}")
        place = tuple(place_xy) if len(place_xy) == 2 else None
        if rate <= 0 or self.image_size < 8 or min(self.image_timeout, self.tool_timeout) <= 0:
            raise ValueError("rate_hz and the timeouts must be > 0, image_size >= 8")
        if steps < 0 or threads < 1:
            raise ValueError("steps must be >= 0, threads >= 1")
        torch.set_num_threads(threads)
        self.planner = load_planner(task, generator, filter_dir, candidates, selection, replan_every,
                                    steps or None, place)  # fmt: skip
        gen_cfg = self.planner.generator.config
        self.camera = gen_cfg.camera
        self.image_topic = V.camera_topic(self.camera)
        self._warm_up()

        self.lock = threading.Lock()  # guards everything below up to the publishers
        self.image: _Stamped | None = None
        self.tool: _Stamped | None = None
        self.joints: _Stamped | None = None  # (names, positions)
        self.seq = 0
        self.used_seq = 0  # the newest image a tick has taken
        self.episode, self.episode_clock, self.generation = None, 0.0, 0
        self.active = True  # False in the twin's idle episode 0
        self.reset_seed: int | None = None  # a reset the next tick applies (the planner is the timer's)
        self.logged: dict[str, float] = {}  # reason -> wall time of its last log line
        self.update_ms: list[float] = []
        self.stats = {"updates": 0, "replans": 0, "stale": 0, "no_tool_goal": 0}
        self.last_goal: tuple[np.ndarray, np.ndarray] | None = None  # (the planner's image, upsampled)

        self.pub_image = self.create_publisher(Image, V.TOPIC_SUBGOAL_IMAGE, M.GOAL_QOS)
        self.pub_tool = self.create_publisher(JointState, V.TOPIC_TOOL_GOAL, M.GOAL_QOS)
        self.pub_stage = self.create_publisher(String, V.TOPIC_HIGHLEVEL_STAGE, QoSProfile(depth=10))
        # Subscriptions stay in the default group (with /clock): short callbacks only.
        self.create_subscription(Image, self.image_topic, self._on_image, qos_profile_sensor_data)
        self.create_subscription(JointState, V.TOPIC_TOOL_STATE, self._on_tool, QoSProfile(depth=10))
        self.create_subscription(String, V.TOPIC_SIM_EPISODE, self._on_episode, M.EPISODE_QOS)
        self.kinematics = None
        if self.planner.config.stages.place_xy is not None:
            from sim.kinematics import ToolMountKinematics

            self.kinematics = ToolMountKinematics()
            self.create_subscription(JointState, V.TOPIC_JOINT_STATES, self._on_joints, QoSProfile(depth=10))
        self.create_timer(1.0 / rate, self._tick, MutuallyExclusiveCallbackGroup())
        cfg = self.planner.config
        self.get_logger().info(
            f"high level from {generator} ({gen_cfg.image_size} px, {gen_cfg.steps} steps) and "
            f"{filter_dir if self.planner.selector is not None else 'no filter'}: task {cfg.task}, "
            f"{cfg.candidates} candidates, selection {cfg.selection}, replan every {cfg.replan_every} "
            f"images, from {self.image_topic} at up to {rate:g} Hz; goals {self.image_size} px"
        )

    def _warm_up(self) -> None:
        """One planning step on a blank image, so that the first real one is not slowed by tracing."""
        s = self.planner.generator.config.image_size
        self.planner.update(np.zeros((s, s, 3), np.uint8), None)
        self.planner.reset(self.planner.config.seed)

    # ------------------------------------------------------------------ logging
    def _warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self.logged.get(key, -math.inf) >= LOG_EVERY:
            self.logged[key] = now
            self.get_logger().warning(text)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg: Image) -> None:
        try:
            if msg.encoding not in ("rgb8", "bgr8"):
                raise M.MessageError(f"encoding {msg.encoding!r}, expected rgb8 or bgr8")
            s = self.planner.generator.config.image_size
            if self.resize_images:
                img = M.fit_image(M.image_array(msg), s)
            elif msg.width != msg.height or msg.width < s:
                raise M.MessageError(
                    f"{msg.width}x{msg.height} image, expected a square one of at least {s} px "
                    "(resize_images:=true fits a camera's image to it)"
                )
            else:
                img = M.image_array(msg)
        except M.MessageError as err:
            return self._warn("image:" + str(err), f"rejected {self.image_topic}: {err}")
        stamp = M.from_time(msg.header.stamp)
        with self.lock:
            if stamp < self.episode_clock - 1e-6:  # the previous episode's
                return
            self.seq += 1
            self.image = _Stamped(img, stamp, self.seq)

    def _on_tool(self, msg: JointState) -> None:
        try:
            est = estimate_from_tool_state(msg.name, msg.position)
        except M.MessageError as err:
            return self._warn("tool:" + str(err), f"rejected {V.TOPIC_TOOL_STATE}: {err}")
        stamp = M.from_time(msg.header.stamp)
        with self.lock:
            if stamp >= self.episode_clock - 1e-6:
                self.tool = _Stamped(est, stamp, 0)

    def _on_joints(self, msg: JointState) -> None:
        if len(msg.name) != len(msg.position):
            return self._warn("joints", f"rejected /joint_states: {len(msg.name)} names, "
                                        f"{len(msg.position)} positions")  # fmt: skip
        value, stamp = (list(msg.name), np.asarray(msg.position, float)), M.from_time(msg.header.stamp)
        with self.lock:
            if stamp >= self.episode_clock - 1e-6:
                self.joints = _Stamped(value, stamp, 0)

    def _tip(self, now: float) -> np.ndarray | None:
        """The tips' position in the base frame from fresh joint states, else None."""
        with self.lock:
            joints = self.joints
        if self.kinematics is None or joints is None or now - joints.stamp > self.tool_timeout:
            return None
        try:
            pose = self.kinematics.pose(*joints.value)
        except ValueError as err:  # missing arm joints, NaN
            self._warn("joints:" + str(err), f"no tip position from /joint_states: {err}")
            return None
        return tip_in_base(pose, self.planner.config.stages.tip_in_mount)

    def _on_episode(self, msg: String) -> None:
        try:
            doc = M.parse_episode(msg.data, ("episode", "seed", "clock"))  # bounded: a seed torch takes
            episode, seed, clock = doc["episode"], doc["seed"], doc["clock"]
        except ValueError as err:
            return self._warn("episode", f"ignored malformed {V.TOPIC_SIM_EPISODE} message: {err}")
        with self.lock:
            if episode == self.episode:
                return
            self.episode, self.episode_clock, self.active = episode, clock, episode > 0
            self.generation += 1  # an update in flight belongs to the old episode: its goal is dropped
            self.reset_seed = seed
            if self.image is not None and self.image.stamp < clock - 1e-6:
                self.image = None
            if self.joints is not None and self.joints.stamp < clock - 1e-6:
                self.joints = None
            if self.tool is not None and self.tool.stamp < clock - 1e-6:
                self.tool = None
        if episode > 0:
            self.get_logger().info(f"episode {episode} (seed {seed}): planner reset")

    # ------------------------------------------------------------------ planning (own callback group)
    def _tick(self) -> None:
        now = self._now()
        with self.lock:
            image, tool, generation = self.image, self.tool, self.generation
            seed, self.reset_seed = self.reset_seed, None
            active = self.active
            fresh = image is not None and image.seq > self.used_seq
            if fresh:
                self.used_seq = image.seq
        if seed is not None:
            self.planner.reset(seed)
            self.last_goal = None
        if not (fresh and active):
            return
        age = now - image.stamp
        if age > self.image_timeout:
            self.stats["stale"] += 1
            return self._warn("stale", f"skipping: {self.image_topic} is {age:.2f} s old "
                                       f"(limit {self.image_timeout:g} s)")  # fmt: skip
        estimate = None
        if tool is not None and now - tool.stamp <= self.tool_timeout:
            estimate = tool.value
        try:
            t0 = time.perf_counter()
            sub = self.planner.update(image.value, estimate, self._tip(now))
            goal = self._goal_image(sub.image)
            self.update_ms.append(1000 * (time.perf_counter() - t0))
        except Exception as err:  # one bad step must not take the goal source down
            return self._warn("update:" + type(err).__name__, f"update failed: {type(err).__name__}: {err}")
        with self.lock:
            if generation != self.generation:
                return
        self.stats["updates"] += 1
        self.pub_image.publish(M.image(goal, image.stamp, FRAMES.get(self.camera, self.camera)))
        finite = math.isfinite(sub.tool_goal)
        if finite:
            self.pub_tool.publish(
                M.joint_state([TIP_GAP], np.array([sub.tool_goal]), np.zeros(1), image.stamp)
            )
        else:
            self.stats["no_tool_goal"] += 1
            self._warn("no_tool_goal", "no tool goal yet (the tool state is unknown: is perception "
                                       "running?): publishing subgoal images only")  # fmt: skip
        doc = {"stage": sub.stage, "retries": sub.retries, "tool_goal": sub.tool_goal if finite else None,
               "chosen_at": sub.chosen_at}  # fmt: skip
        self.pub_stage.publish(String(data=json.dumps(doc)))

    def _goal_image(self, image: np.ndarray) -> np.ndarray:
        """The planner's subgoal at the low level's goal size (upsampled once per chosen subgoal)."""
        if self.last_goal is not None and self.last_goal[0] is image:
            return self.last_goal[1]
        out = resize_image(image, self.image_size)
        self.last_goal = (image, out)
        self.stats["replans"] += 1
        return out

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        ms = np.asarray(self.update_ms)
        p50, p90 = np.quantile(ms, [0.5, 0.9]) if len(ms) else (math.nan, math.nan)
        s = self.stats
        log_summary(
            self,
            f"{s['updates']} planner updates ({s['replans']} replans), {s['stale']} stale images skipped, "
            f"{s['no_tool_goal']} without a tool goal; update p50 {p50:.1f} / p90 {p90:.1f} ms",
        )


def main(args: list[str] | None = None) -> None:
    # Sampling holds the GIL between many small torch calls; switching often lets the subscriptions in.
    sys.setswitchinterval(0.0002)
    # Two threads: the subscriptions never wait behind a planning step.
    run_node(HighLevelNode, args, executor=lambda: MultiThreadedExecutor(num_threads=2))


if __name__ == "__main__":
    main()
