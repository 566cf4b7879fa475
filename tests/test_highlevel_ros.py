"""The learned high level as a ROS node (``highlevel``).

* pure: perception's ``/dexhier/tool_state`` fields round-trip into the planner's
  ``AffordanceEstimate`` (object fields optional, NaN rejected);
* multi-process, real DDS on loopback: the node, on tiny self-made checkpoints and the sim clock of a
  test node, answers scene images with 64x64 rgb8 subgoal images and a finite tool goal stamped like
  the image, plus its stage; a wrong-encoding image and a NaN tool state are rejected with one log
  line each, and the node keeps publishing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from dexhier_ros import messages as M  # noqa: E402
from dexhier_ros.highlevel_node import estimate_from_tool_state  # noqa: E402

from dexhier import vocabulary as V  # noqa: E402
from perception.encoder import AffordanceEstimate  # noqa: E402
from policies.high_level.stages import StageTracker  # noqa: E402

TASKS = ("tweezer_pick", "tool_open_to")
DT = 0.05  # s, the control period
CENTER = (0.0, 0.0, 0.16)  # object centre in the mount frame: 2 cm from the tips, openings trusted
TOOL_NAMES = ["tip_gap", "opening_angle", "max_gap", "approach_opening", "contact_opening", "graspable",
              "object_x", "object_y", "object_z"]  # fmt: skip
TOOL_VALUES = [0.01, 0.05, 0.03, 0.012, 0.006, 0.9, *CENTER]


def _estimate(object_valid: bool) -> AffordanceEstimate:
    nan = float("nan")
    return AffordanceEstimate(
        valid=True, reason="", latent=np.zeros(64, np.float32), tip_gap=0.011, opening_angle=0.07,
        max_gap=0.031, object_valid=object_valid, approach_opening=0.013 if object_valid else nan,
        contact_opening=0.007 if object_valid else nan, graspable=object_valid,
        graspable_prob=0.8 if object_valid else nan,
        object_center=np.array([0.001, -0.002, 0.15]) if object_valid else np.full(3, np.nan),
    )  # fmt: skip


# ------------------------------------------------------------------ pure: tool state -> estimate
@pytest.mark.parametrize("object_valid", [True, False])
def test_perception_fields_round_trip_to_the_estimate(object_valid):
    from dexhier_ros.perception_node import tool_state_fields

    est = _estimate(object_valid)
    names, values = tool_state_fields(est)
    assert names[:3] == ["tip_gap", "opening_angle", "max_gap"]  # existing consumers: same names first
    if object_valid:
        assert names[3:] == [*V.TOOL_STATE_OBJECT_NAMES]
    msg = M.joint_state(names, np.array(values), np.zeros(len(values)), 12.5)
    back = estimate_from_tool_state(msg.name, msg.position)
    assert back.valid and back.object_valid == object_valid
    for key in (
        "tip_gap",
        "opening_angle",
        "max_gap",
        "approach_opening",
        "contact_opening",
        "graspable_prob",
    ):
        np.testing.assert_allclose(getattr(back, key), getattr(est, key), err_msg=key)  # NaN == NaN
    np.testing.assert_allclose(back.object_center, est.object_center)
    assert back.graspable == est.graspable


def test_tool_state_conversion_optional_fields_and_rejections():
    # Only the tool's two fields (an older perception, no object): everything else NaN.
    est = estimate_from_tool_state(["opening_angle", "tip_gap"], [0.05, 0.01])
    assert est.valid and not est.object_valid and not est.graspable
    assert (est.tip_gap, est.opening_angle) == (0.01, 0.05)
    assert np.isnan(est.max_gap) and np.isnan(est.approach_opening) and np.isnan(est.graspable_prob)
    assert est.object_center.shape == (3,) and np.all(np.isnan(est.object_center))
    # The object's openings without its centre (perception before object_x/y/z): the object is not seen.
    est = estimate_from_tool_state(TOOL_NAMES[:6], TOOL_VALUES[:6])
    assert not est.object_valid and est.max_gap == 0.03 and np.isnan(est.approach_opening)
    # Everything, in another order, with an unknown extra name.
    order = [*reversed(range(len(TOOL_NAMES)))]
    est = estimate_from_tool_state([*(TOOL_NAMES[i] for i in order), "extra"],
                                   [*(TOOL_VALUES[i] for i in order), float("nan")])  # fmt: skip
    assert est.object_valid and est.graspable and est.approach_opening == 0.012
    np.testing.assert_array_equal(est.object_center, CENTER)
    # What the planner makes of it: the openings are trusted near the tips, the tool goal follows.
    decision = StageTracker().update(est)
    assert decision.stage == "approach" and decision.tool_goal == pytest.approx(0.012)
    assert decision.object_distance == pytest.approx(0.02)
    assert StageTracker().update(estimate_from_tool_state(TOOL_NAMES[:3], TOOL_VALUES[:3])).tool_goal == 0.03

    with pytest.raises(M.MessageError, match=r"lacks \['opening_angle'\]"):
        estimate_from_tool_state(["tip_gap"], [0.01])
    with pytest.raises(M.MessageError, match="2 names but 1 positions"):
        estimate_from_tool_state(["tip_gap", "opening_angle"], [0.01])
    for i, name in enumerate(TOOL_NAMES):
        bad = list(TOOL_VALUES)
        bad[i] = float("nan")
        with pytest.raises(M.MessageError, match=f"non-finite \\['{name}'\\]"):
            estimate_from_tool_state(TOOL_NAMES, bad)


# ------------------------------------------------------------------ the node through real DDS
def _checkpoints(root: Path) -> tuple[Path, Path]:
    """A tiny generator and progress filter (random weights): the node's wiring, not its skill."""
    from policies.high_level.generator import GeneratorConfig, SubgoalGenerator
    from policies.high_level.progress import ProgressClassifier, ProgressConfig

    gen, filt = root / "subgoal", root / "subgoal_filter"
    SubgoalGenerator(GeneratorConfig(tasks=TASKS, image_size=16, channels=(16, 16), norm_groups=8,
                                     steps=2)).save(gen)  # fmt: skip
    ProgressClassifier(ProgressConfig(tasks=TASKS, image_size=16, channels=(8, 8), hidden=16)).save(filt)
    return gen, filt


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


class _World:
    """Plays the twin's clock and scene camera, perception and the episode topic for the node."""

    def __init__(self) -> None:
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        rclpy.init()
        self.node = Node("highlevel_world")
        q = QoSProfile(depth=10)
        self.pub = {
            "clock": self.node.create_publisher(Clock, "/clock", q),
            "scene": self.node.create_publisher(Image, V.camera_topic("scene"), qos_profile_sensor_data),
            "tool": self.node.create_publisher(JointState, V.TOPIC_TOOL_STATE, q),
            "episode": self.node.create_publisher(String, V.TOPIC_SIM_EPISODE, M.EPISODE_QOS),
        }
        self.images: list[tuple[float, Image]] = []  # (wall arrival, message)
        self.goals: list[tuple[float, JointState]] = []
        self.stages: list[dict] = []
        self.node.create_subscription(
            Image, V.TOPIC_SUBGOAL_IMAGE, lambda m: self.images.append((time.monotonic(), m)), M.GOAL_QOS
        )
        self.node.create_subscription(
            JointState, V.TOPIC_TOOL_GOAL, lambda m: self.goals.append((time.monotonic(), m)), M.GOAL_QOS
        )
        self.node.create_subscription(
            String, V.TOPIC_HIGHLEVEL_STAGE, lambda m: self.stages.append(json.loads(m.data)), q
        )
        self.Clock, self.String, self.Image = Clock, String, Image
        self.rng = np.random.default_rng(0)
        self.base = 100.0  # s, sim time of tick 0
        self.k = 0
        self.sent: list[float] = []  # stamps of the scene images published

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=max(0.0, min(0.005, end - time.monotonic())))

    def start_episode(self, episode: int, seed: int) -> None:
        doc = {"episode": episode, "seed": seed, "task": "tweezer_pick", "clock": self.base + self.k * DT}
        self.pub["episode"].publish(self.String(data=json.dumps(doc)))

    def run(self, ticks: int, tool: list[float] | None = None, tool_states: bool = True) -> None:
        """``ticks`` control periods at 20 Hz: clock each, scene image every 2nd, tool state every 4th."""
        for _ in range(ticks):
            t = self.base + self.k * DT
            clock = self.Clock()
            clock.clock = M.to_time(t)
            self.pub["clock"].publish(clock)
            if self.k % 2 == 0:
                scene = self.rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                self.pub["scene"].publish(M.image(scene, t, V.FRAME_SCENE_CAMERA))
                self.sent.append(t)
            if tool_states and self.k % 4 == 0:
                values = TOOL_VALUES if tool is None else tool
                self.pub["tool"].publish(
                    M.joint_state(TOOL_NAMES, np.array(values), np.zeros(len(values)), t)
                )
            self.k += 1
            self.spin(DT)

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown()


@pytest.mark.ros
def test_highlevel_node_publishes_goals_and_survives_bad_input(tmp_path):
    gen, filt = _checkpoints(tmp_path)
    log = tmp_path / "highlevel.log"
    params = ["use_sim_time:=true", f"generator:={gen}", f"filter:={filt}", "task:=tweezer_pick",
              "candidates:=2", "replan_every:=3", "rate_hz:=20.0"]  # fmt: skip
    cmd = [sys.executable, "-m", "dexhier_ros.highlevel_node", "--ros-args",
           *[a for p in params for a in ("-p", p)]]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    world = _World()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and world.pub["episode"].get_subscription_count() == 0:
            assert proc.poll() is None, log.read_text()[-3000:]
            world.spin(0.1)
        assert world.pub["episode"].get_subscription_count() > 0, "the high-level node did not come up"
        world.spin(0.5)
        world.start_episode(1, seed=3)
        world.run(10, tool_states=False)  # no perception yet: subgoal images, but no tool goal
        no_tool = (len(world.images), len(world.goals))
        world.run(60)  # 3 s sim/wall: 30 scene images
        first_images, first_goals = len(world.images), len(world.goals)

        # A stale scene image (1 s old by its stamp): skipped, logged once.
        old = M.image(np.zeros((64, 64, 3), np.uint8), world.base + (world.k - 20) * DT, "scene")
        world.pub["scene"].publish(old)
        world.spin(0.1)
        for _ in range(2):  # the node's timer runs on the sim clock: advance it, without new images
            clock = world.Clock()
            clock.clock = M.to_time(world.base + world.k * DT)
            world.pub["clock"].publish(clock)
            world.k += 1
            world.spin(DT)
        world.spin(0.2)
        stale_skipped = len(world.images) == first_images

        # Bad input: a mono8 image (3 times, one log line), a NaN tool state; then fresh input again.
        mono = world.Image(height=64, width=64, encoding="mono8", step=64, data=bytes(64 * 64))
        for _ in range(3):
            mono.header.stamp = M.to_time(world.base + world.k * DT)
            world.pub["scene"].publish(mono)
            world.spin(0.05)
        bad_tool = list(TOOL_VALUES)
        bad_tool[0] = float("nan")
        world.run(8, tool=bad_tool)
        assert proc.poll() is None, log.read_text()[-3000:]
        mark = len(world.images)
        world.run(30)
        # A new episode: the planner starts over (its steps count from 0 again).
        stage_mark = len(world.stages)
        world.start_episode(2, seed=4)
        world.run(10)
        alive = proc.poll() is None
    finally:
        world.close()
        code = _stop(proc)
    text = log.read_text()
    assert alive and code == 0 and "Traceback" not in text, text[-3000:]

    assert no_tool[0] >= 3 and no_tool[1] == 0, (no_tool, text[-3000:])
    # Once per stretch without a tool state (the tool state of episode 1 is void in episode 2, too).
    assert text.split("episode 2 (seed 4)")[0].count("no tool goal yet") == 1, text[-3000:]
    assert first_images - no_tool[0] >= 20 and first_goals >= 20, (first_images, first_goals, text[-3000:])
    assert stale_skipped and text.count("skipping: /camera/color/image_raw is 1.00 s old") == 1, text[-3000:]
    sent = set(np.round(world.sent, 6))
    for _, img in world.images:
        assert (img.encoding, img.width, img.height, img.step, len(img.data)) == (
            "rgb8",
            64,
            64,
            192,
            64 * 64 * 3,
        )
        assert img.header.frame_id == V.FRAME_SCENE_CAMERA
        assert round(M.from_time(img.header.stamp), 6) in sent  # stamped with the scene image it answers
    for _, goal in world.goals:
        assert list(goal.name) == ["tip_gap"] and len(goal.position) == 1
        assert np.isfinite(goal.position[0])
        assert round(M.from_time(goal.header.stamp), 6) in sent
    # The tool goal is the approach opening perception reported (the object is near the tips).
    assert world.goals[-1][1].position[0] == pytest.approx(0.012)
    assert world.stages and set(world.stages[-1]) == {"stage", "retries", "tool_goal", "chosen_at"}
    assert world.stages[-1]["stage"] == "approach" and world.stages[-1]["tool_goal"] == pytest.approx(0.012)
    # Replans every 3 planner steps: several distinct choice steps.
    assert len({s["chosen_at"] for s in world.stages}) >= 3, world.stages
    # Goals kept coming after the bad input.
    assert len(world.images) - mark >= 8, (mark, len(world.images), text[-3000:])
    assert text.count("rejected /camera/color/image_raw: encoding 'mono8'") == 1, text[-3000:]
    assert text.count("rejected /dexhier/tool_state: tool state has non-finite ['tip_gap']") == 1, text[
        -3000:
    ]
    assert "episode 1 (seed 3): planner reset" in text and "episode 2 (seed 4): planner reset" in text
    assert world.stages[stage_mark:] and min(s["chosen_at"] for s in world.stages[stage_mark:]) == 0
    assert "planner updates" in text  # the summary at shutdown


@pytest.mark.ros
def test_highlevel_node_gives_the_planner_the_tips_from_joint_states(tmp_path):
    """A pick-and-place planner needs the tips' position (release over the bin): the node computes it
    from fresh ``/joint_states`` by forward kinematics; stale or unusable joint states give none."""
    from dexhier_ros.highlevel_node import HighLevelNode
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from policies.high_level.stages import tip_in_base
    from sim.kinematics import ToolMountKinematics
    from sim.twin import TwinConfig, TwinEnv

    gen, filt = tmp_path / "subgoal", tmp_path / "subgoal_filter"
    from policies.high_level.generator import GeneratorConfig, SubgoalGenerator
    from policies.high_level.progress import ProgressClassifier, ProgressConfig

    tasks = ("tweezer_pick_place",)
    SubgoalGenerator(GeneratorConfig(tasks=tasks, image_size=16, channels=(16, 16), norm_groups=8,
                                     steps=2)).save(gen)  # fmt: skip
    ProgressClassifier(ProgressConfig(tasks=tasks, image_size=16, channels=(8, 8), hidden=16)).save(filt)
    env = TwinEnv(TwinConfig(task="tweezer_pick_place", render=False, points=False))
    obs = env.reset(seed=0)
    names = [*env.robot.arm_joints, *env.robot.hand_joints]
    q = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
    env.close()
    rclpy.init(args=["--ros-args", "-p", f"generator:={gen}", "-p", f"filter:={filt}",
                     "-p", "task:=tweezer_pick_place", "-p", "place_xy:=[0.5, 0.2]"])  # fmt: skip
    try:
        node = HighLevelNode()
        assert node.planner.config.stages.place_xy == (0.5, 0.2)  # a cell's bin
        assert node._tip(10.0) is None  # no joint states yet
        msg = JointState(name=names, position=list(q))
        msg.header.stamp = M.to_time(10.0)
        node._on_joints(msg)
        expected = tip_in_base(ToolMountKinematics().pose(names, q), node.planner.config.stages.tip_in_mount)
        np.testing.assert_allclose(node._tip(10.2), expected)
        assert node._tip(10.0 + node.tool_timeout + 0.1) is None  # stale
        node._on_joints(JointState(name=names, position=list(q[:3])))  # names and positions differ
        np.testing.assert_allclose(node._tip(10.2), expected)  # rejected: the last good one stays
        bad = JointState(name=names[6:], position=list(q[6:]))  # no arm joints
        bad.header.stamp = M.to_time(11.0)
        node._on_joints(bad)
        assert node._tip(11.0) is None
        node._on_joints(msg)  # good again
        node._on_episode(String(data=json.dumps({"episode": 3, "seed": 1, "clock": 10.5})))
        assert node._tip(10.6) is None  # joint states from before the episode are void
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
