"""STAND-IN for the high level (node ``oracle_goals``): subgoals replayed from the privileged expert.

Until the learned high level (subgoal generator + filter + controller) runs in the graph, this node
gives the low-level policy its goals the way ``dexhier eval rollout --policy lowlevel`` does
in-process (:class:`dexhier.oracle_goals.OracleGoals`). When the twin starts an episode
(``/dexhier/sim/episode``: episode number, seed, task), a worker thread runs the privileged expert
on the same seed in a twin of its own (about 0.4 s for ``tool_open_to``, off the control path;
the seed after it, the twin's next, is then prefetched the same way). At the control rate, it
tracks the robot's progress along that rollout from the latest ``/joint_states`` (proprio only)
and publishes the expert's frame ``lookahead`` steps ahead:

* ``/dexhier/subgoal/image`` (Image, rgb8, the goal camera at ``image_size``, 64x64 by default);
* ``/dexhier/tool_goal`` (JointState, joint ``tip_gap`` in m, the tool-state name perception uses);

both stamped with the joint state they answer, with the reliable keep-latest ``GOAL_QOS``. The
privileged replay only makes goals; this node never commands the robot. Nothing is published
before the first episode, while an episode's rollout is being prepared, or for joint states of an
earlier episode.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from dexhier import vocabulary as V
from dexhier.oracle_goals import OracleConfig, OracleGoals
from dexhier_ros import messages as M
from dexhier_ros.runtime import parameter, run_node
from sim.twin import TwinConfig

TIP_GAP = V.TOOL_STATE_NAMES[0]  # "tip_gap", as perception names it on /dexhier/tool_state
FRAMES = {"scene": V.FRAME_SCENE_CAMERA, "wrist": V.FRAME_WRIST_CAMERA}


@dataclass(frozen=True)
class _Job:
    episode: int
    seed: int
    task: str


class OracleGoalNode(Node):
    def __init__(self) -> None:
        super().__init__("oracle_goals")
        self.task = parameter(self, "task", "tweezer_pick")
        self.goal_camera = parameter(self, "goal_camera", "scene")
        self.image_size = parameter(self, "image_size", 64)  # px, the low-level policy's image size
        self.lookahead = parameter(self, "lookahead", 20)  # control steps ahead of the tracked frame
        rate = parameter(self, "control_hz", 20.0)
        if self.goal_camera not in FRAMES or self.image_size < 8 or self.lookahead < 0 or rate <= 0:
            raise ValueError(f"goal_camera must be one of {', '.join(FRAMES)}, image_size >= 8, "
                             "lookahead >= 0 and control_hz > 0")  # fmt: skip
        self.pub_image = self.create_publisher(Image, V.TOPIC_SUBGOAL_IMAGE, M.GOAL_QOS)
        self.pub_tool = self.create_publisher(JointState, V.TOPIC_TOOL_GOAL, M.GOAL_QOS)
        self.create_subscription(String, V.TOPIC_SIM_EPISODE, self._on_episode, M.EPISODE_QOS)
        self.create_subscription(JointState, "/joint_states", self._on_joints, QoSProfile(depth=10))
        self.joints: JointState | None = None
        self.episode = 0
        self.episode_clock = 0.0  # ROS time (s) at which the current episode started
        self.ready: int | None = None  # the episode whose expert rollout is prepared
        self.oracle: OracleGoals | None = None  # the episode's, read by the timer
        self.spare: OracleGoals | None = None  # prefetches the next seed (worker only)
        self.spare_key: tuple[str, int] | None = None  # (task, seed) the spare holds
        # Held by the worker while it prepares: the timer skips instead of waiting on it.
        self.lock = threading.Lock()
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="oracle_prepare", daemon=True)
        self.worker.start()
        self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(
            "oracle goals: STAND-IN for the high level: subgoals from the privileged expert's replay of "
            f"each episode's seed (goal camera {self.goal_camera}, {self.image_size} px, "
            f"lookahead {self.lookahead} steps); it never commands the robot"
        )

    # ------------------------------------------------------------------ episodes
    def _on_episode(self, msg: String) -> None:
        try:
            doc = M.parse_episode(msg.data, ("episode", "seed", "done", "task", "clock"))
            episode, seed, done, task, clock = (doc[k] for k in ("episode", "seed", "done", "task", "clock"))
        except M.MessageError as err:
            # Throttled with counts: a flood of bad episode messages must not flood the log.
            self.get_logger().warning(f"ignored malformed /dexhier/sim/episode message: {err}",
                                      throttle_duration_sec=1.0)  # fmt: skip
            return
        if episode == self.episode:
            return
        self.episode, self.episode_clock, self.ready = episode, clock, None
        if not done:  # episode 0 is the idle start-up scene: no goals, but episode 1 has its seed
            self.jobs.put(_Job(episode, seed, task))

    def _work(self) -> None:
        """Worker thread: prepares expert rollouts. It owns the oracles' twins (and their GL contexts)."""
        try:
            while True:
                job = self.jobs.get()
                while job is not None and not self.jobs.empty():  # only the newest episode matters
                    job = self.jobs.get_nowait()
                if job is None:
                    return
                if job.episode == 0:
                    self._prefetch(job.task, job.seed)
                    continue
                self._prepare(job)
                if self.jobs.empty():
                    self._prefetch(job.task, job.seed + 1)
        finally:
            for oracle in (self.oracle, self.spare):
                if oracle is not None:
                    oracle.close()

    def _make(self, task: str, old: OracleGoals | None) -> OracleGoals:
        """An oracle for ``task``: ``old`` if it has that task, else a new one (``old`` is closed)."""
        if old is not None and old.env.config.task == task:
            return old
        if old is not None:
            old.close()
        s = self.image_size
        env = TwinConfig(task=task, image_width=s, image_height=s, render=False, points=False)
        return OracleGoals(env, self.goal_camera, OracleConfig(lookahead=self.lookahead))

    def _prefetch(self, task: str, seed: int) -> None:
        """Prepare the seed the twin's next episode will likely use (it counts up), in the spare oracle.

        The in-process evaluation prepares the oracle before the episode's clock starts; in the graph
        this keeps the episode from waiting for it (and the policy holding meanwhile).
        """
        try:
            self.spare = self._make(task, self.spare)
            self.spare.prepare(seed)
            self.spare_key = (task, seed)
        except Exception as err:  # a failed prefetch only costs time: the episode prepares its own
            self.spare_key = None
            self.get_logger().warning(
                f"oracle goals: cannot prefetch seed {seed}: {type(err).__name__}: {err}"
            )

    def _prepare(self, job: _Job) -> None:
        t0 = time.monotonic()
        with self.lock:
            try:
                if self.spare_key == (job.task, job.seed):  # prefetched: swap it in
                    self.oracle, self.spare, self.spare_key = self.spare, self.oracle, None
                    how = "prefetched"
                else:
                    self.oracle = self._make(job.task, self.oracle)
                    self.oracle.prepare(job.seed)
                    how = "prepared"
                ref = self.oracle.reference
            except Exception as err:  # a failed preparation must be visible, and must not kill the worker
                self.get_logger().error(
                    f"oracle goals: cannot prepare seed {job.seed}: {type(err).__name__}: {err}"
                )
                return
            if job.episode == self.episode:
                self.ready = job.episode
        note = "" if ref.success else " (the expert FAILED this seed: its goals may not lead to success)"
        self.get_logger().info(
            f"oracle goals ready for episode {job.episode} (seed {job.seed}, {job.task}): "
            f"{len(ref.joints)} expert frames, {how} ({time.monotonic() - t0:.2f} s){note}"
        )

    # ------------------------------------------------------------------ goals
    def _on_joints(self, msg: JointState) -> None:
        self.joints = msg

    def _tick(self) -> None:
        js = self.joints
        if js is None or self.ready is None or self.ready != self.episode:
            return
        stamp = M.from_time(js.header.stamp)
        if stamp < self.episode_clock - 1e-6:  # still the previous episode's joints
            return
        if not self.lock.acquire(blocking=False):
            return
        try:
            oracle = self.oracle
            robot = oracle.env.robot
            obs = {V.OBS_ARM_QPOS: M.joint_positions(js, robot.arm_joints),
                   V.OBS_HAND_QPOS: M.joint_positions(js, robot.hand_joints)}  # fmt: skip
            goal = oracle.goal(obs)
        except M.MessageError as err:
            self.get_logger().warning(f"no goal: {err}", throttle_duration_sec=1.0)
            return
        finally:
            self.lock.release()
        self.pub_image.publish(M.image(goal[V.GOAL_RGB], stamp, FRAMES[self.goal_camera]))
        gap = np.asarray(goal[V.GOAL_TOOL_TIP_GAP], dtype=np.float64)[-1:]
        self.pub_tool.publish(M.joint_state([TIP_GAP], gap, np.zeros(1), stamp))

    def close(self) -> None:
        self.jobs.put(None)
        self.worker.join(timeout=10.0)


def main(args: list[str] | None = None) -> None:
    run_node(OracleGoalNode, args)


if __name__ == "__main__":
    main()
