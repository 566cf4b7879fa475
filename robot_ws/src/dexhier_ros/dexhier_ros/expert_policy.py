"""The privileged expert as a policy node (``expert_policy``), standing in for the learned layers.

It keeps a *mirror* of the twin: a local ``TwinEnv`` reset with the episode's seed (so it has the
same model), whose state is overwritten every tick from the twin's debug topic
``/dexhier/sim/state``. The expert reads ground truth from that mirror, exactly as in
``dexhier eval rollout --policy expert``, and, once per twin state, publishes joint trajectories on
``/dexhier/command/arm`` and ``/dexhier/command/hand`` for the safety supervisor. A learned
policy node has the same outputs but reads only cameras and joint states.
"""

from __future__ import annotations

import time

import mujoco
import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from dexhier.safety import LogThrottle
from dexhier_ros import messages as M
from dexhier_ros.runtime import parameter, run_node
from dexhier_ros.scheduling import apply_realtime_priority, default_scheduler
from sim.expert import ExpertPolicy
from sim.twin import TwinConfig, TwinEnv

STATE_BOUND = 1e4
"""Largest magnitude of a /dexhier/sim/state value (s, m, rad, m/s, rad/s) taken as a real state."""


class ExpertPolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("expert_policy")
        # On the control path: SCHED_FIFO if asked (dexhier_ros.scheduling).
        apply_realtime_priority(self, parameter(self, "realtime_priority", 0))
        self.task = parameter(self, "task", "tweezer_pick")
        self.mirror = TwinEnv(TwinConfig(task=self.task, render=False, points=False))
        self.expert = ExpertPolicy(self.mirror)
        self.dt = 1.0 / self.mirror.config.control_hz
        self.arm_joints, self.hand_joints = self.mirror.robot.arm_joints, self.mirror.robot.hand_joints
        reliable = QoSProfile(depth=10)
        self.pub_arm = self.create_publisher(JointTrajectory, "/dexhier/command/arm", reliable)
        self.pub_hand = self.create_publisher(JointTrajectory, "/dexhier/command/hand", reliable)
        self.create_subscription(String, "/dexhier/sim/episode", self._on_episode, M.EPISODE_QOS)
        self.create_subscription(Float64MultiArray, "/dexhier/sim/state", self._on_state, reliable)
        self.seed: int | None = None
        self.episode = 0
        self.state_time = -1.0
        self.acted_time = -1.0
        self.log = LogThrottle()  # rejected input: a line per reason and second, with counts

    def _warn(self, reason: str, text: str) -> None:
        if line := self.log.message(reason, text, time.monotonic()):
            self.get_logger().warning(line)

    def _on_episode(self, msg: String) -> None:
        try:
            doc = M.parse_episode(msg.data, ("episode", "seed", "done"))
            episode, seed, done, instruction = (
                doc["episode"],
                doc["seed"],
                doc["done"],
                doc.get("instruction", ""),
            )
        except M.MessageError as err:
            return self._warn("episode", f"ignored malformed /dexhier/sim/episode message: {err}")
        if episode == 0:  # the idle start-up scene: nothing to do until an episode starts
            self.seed = None
        elif episode != self.episode and not done:
            self.episode, self.seed = episode, seed
            with default_scheduler():  # a new scene: bulk work
                self.mirror.reset(self.seed)
            self.expert.reset()
            self.state_time = self.acted_time = -1.0
            self.get_logger().info(f"episode seed {self.seed}: {instruction}")

    def _on_state(self, msg: Float64MultiArray) -> None:
        m, d = self.mirror.model, self.mirror.data
        if self.seed is None:
            return
        data = np.asarray(msg.data, dtype=np.float64)
        # Finite is not enough: a state of 1e300 would make the mirror (and its IK) meaningless.
        if len(data) != 1 + m.nq + m.nv or not np.all(np.abs(data) <= STATE_BOUND):
            return self._warn(
                "state",
                f"ignored /dexhier/sim/state: {len(data)} values (expected {1 + m.nq + m.nv}), "
                f"non-finite or beyond {STATE_BOUND:g}",
            )
        d.time = data[0]
        d.qpos[:] = data[1 : 1 + m.nq]
        d.qvel[:] = data[1 + m.nq :]
        mujoco.mj_forward(m, d)
        self.state_time = float(data[0])
        self._act()

    def _act(self) -> None:
        """One action per fresh twin state, right when it arrives (no timer phase lag)."""
        # Once per state (not "newer than the last acted on": one bogus future time would stop it).
        if self.seed is None or self.state_time < 0 or self.state_time == self.acted_time:
            return  # no fresh state: send nothing, the safety supervisor holds on staleness
        action = self.expert.select_action(None)
        self.acted_time = self.state_time
        n = len(self.arm_joints)
        self.pub_arm.publish(M.trajectory(self.arm_joints, action[:n], [self.dt]))
        self.pub_hand.publish(M.trajectory(self.hand_joints, action[n:], [self.dt]))


def main(args: list[str] | None = None) -> None:
    run_node(ExpertPolicyNode, args)


if __name__ == "__main__":
    main()
