"""The learned low-level policy through the ROS 2 graph (multi-process, real DDS on loopback).

* sim-in-the-loop: the launched sim graph with ``policy:=lowlevel`` (``lowlevel_policy``, with
  ``oracle_goals`` standing in for the high level and perception giving the tool state) solves
  seeded ``tool_open_to`` episodes;
* timing: with inference slower than the control period (120 denoising steps, ~3 periods a chunk),
  the control timer still commands every period; a test node plays the twin, its clock and the
  goal source, so that the period measured is the policy node's alone;
* a stale goal stops the commands; images of the wrong size or encoding are rejected, one log line each.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

rclpy = pytest.importorskip("rclpy")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DDS_PROFILE = ROOT / "launch" / "fastdds_local.xml"
SEED = 2000
EPISODES = 6
# Through the graph a seed's outcome is not fixed: inference runs asynchronously, so its timing moves
# the observations a chunk is predicted from. Measured on seeds 2000-2011: 9, 9 and 8 of 12 through the
# graph (default, temporal ensemble, 10 Hz clouds), 9/12 in-process. At 75 % per episode "2 of 3" fails
# 16 % of runs of a working graph (CI saw one); "2 of 6" fails 0.5 %, and still fails a graph that
# drops inputs or commands (0 %), and about half the runs of one that solves a quarter of its episodes.
MIN_SUCCESSES = 2
DT = 0.05  # s, the control period


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def test_launched_graph_with_the_learned_low_level_solves_seeded_episodes(tmp_path):
    results = tmp_path / "episodes.jsonl"
    # Real time halved: on the shared 2-core machine the twin, perception and the policy keep up.
    args = ["policy:=lowlevel", "task:=tool_open_to", f"episodes:={EPISODES}", f"seed:={SEED}",
            "real_time_factor:=0.5", f"results_path:={results}"]  # fmt: skip
    env = {**os.environ, "FASTDDS_DEFAULT_PROFILES_FILE": str(DDS_PROFILE)}  # as `dexhier demo` runs it
    cmd = [str(BIN / "dexhier"), "launch", str(ROOT / "launch" / "sim.launch.xml"), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    summary = next(
        (line for line in out.splitlines() if "commands," in line and "lowlevel_policy" in line), ""
    )
    print(f"\n{time.monotonic() - t0:.0f} s wall; episodes {rows}\n{summary}")
    assert [r["seed"] for r in rows] == list(range(SEED, SEED + EPISODES))
    assert sum(r["success"] for r in rows) >= MIN_SUCCESSES, (rows, out[-4000:])
    assert "STAND-IN for the high level" in out
    assert "Traceback" not in out and "inference failed" not in out, out[-4000:]


# ------------------------------------------------------------------ the policy node against a test world
class _World:
    """Plays the twin (clock, joints, cameras), perception and the high level for the policy node."""

    def __init__(self) -> None:
        from dexhier_ros import messages as M
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from sim.twin import TwinConfig, TwinEnv

        env = TwinEnv(TwinConfig(task="tool_open_to", render=True, points=False, cameras=("scene", "wrist")))
        self.obs = env.reset(SEED)
        self.names = env.action_spec.names
        env.close()
        rclpy.init()
        self.node = Node("lowlevel_world")
        q = QoSProfile(depth=10)
        self.pub = {
            "clock": self.node.create_publisher(Clock, "/clock", q),
            "joints": self.node.create_publisher(JointState, "/joint_states", q),
            "scene": self.node.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data),
            "wrist": self.node.create_publisher(Image, "/wrist_camera/color/image_raw",
                                                qos_profile_sensor_data),
            "tool": self.node.create_publisher(JointState, "/dexhier/tool_state", q),
            "goal_image": self.node.create_publisher(Image, "/dexhier/subgoal/image", M.GOAL_QOS),
            "goal_tool": self.node.create_publisher(JointState, "/dexhier/tool_goal", M.GOAL_QOS),
            "episode": self.node.create_publisher(String, "/dexhier/sim/episode", M.EPISODE_QOS),
        }  # fmt: skip
        self.commands: list[float] = []  # wall (monotonic) arrival of each arm command
        self.node.create_subscription(
            JointTrajectory, "/dexhier/command/arm", lambda m: self.commands.append(time.monotonic()), q
        )
        self.M, self.Clock, self.String = M, Clock, String
        self.base = 100.0  # s, sim time of tick 0
        self.k = 0
        self.ticks: list[float] = []  # wall time each tick was published

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=max(0.0, min(0.005, end - time.monotonic())))

    def start_episode(self) -> None:
        doc = {"episode": 1, "seed": SEED, "task": "tool_open_to", "instruction": "", "time": 0.0,
               "clock": self.base, "steps": 0, "success": False, "done": False}  # fmt: skip
        self.pub["episode"].publish(self.String(data=json.dumps(doc)))

    def run(self, ticks: int, goals: bool = True, images: bool = True) -> tuple[int, int]:
        """Publish ``ticks`` control periods at 20 Hz wall; returns the tick range (first, end)."""
        M, obs, first = self.M, self.obs, self.k
        t_next = time.monotonic()
        for _ in range(ticks):
            t = self.base + self.k * DT
            clock = self.Clock()
            clock.clock = M.to_time(t)
            self.ticks.append(time.monotonic())
            self.pub["clock"].publish(clock)
            q = np.concatenate([obs["arm/qpos"], obs["hand/qpos"]])
            self.pub["joints"].publish(M.joint_state(self.names, q, np.zeros(len(q)), t))
            if images and self.k % 2 == 0:  # the twin's cameras: every 2nd step
                self.pub["scene"].publish(M.image(obs["rgb/scene"], t, "scene"))
                self.pub["wrist"].publish(M.image(obs["rgb/wrist"], t, "wrist"))
            if self.k % 4 == 0:  # perception: every 4th step, stamped like the cloud (and its images)
                state = np.r_[obs["tool/tip_gap"], 0.1]
                self.pub["tool"].publish(M.joint_state(["tip_gap", "opening_angle"], state, np.zeros(2), t))
            if goals:
                self.pub["goal_image"].publish(M.image(obs["rgb/scene"], t, "scene"))
                goal_gap = obs["tool/tip_gap"] + 0.005
                self.pub["goal_tool"].publish(M.joint_state(["tip_gap"], goal_gap, np.zeros(1), t))
            self.k += 1
            # After a stall of this process, no burst of catch-up ticks (the node's timer would fire
            # once for several): the next tick comes a period after this one at the earliest.
            t_next = max(t_next + DT, time.monotonic() + 0.5 * DT)
            self.spin(max(0.0, t_next - time.monotonic()))
        return first, self.k

    def commanded_ticks(self, first: int, end: int) -> list[bool]:
        """Per tick in [first, end): did a command arrive before the next tick?"""
        c = np.array(self.commands)
        edges = [*self.ticks[first:end], self.ticks[end] if end < len(self.ticks) else time.monotonic()]
        return [bool(np.any((c > a) & (c <= b))) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown()


def test_control_period_stays_regular_while_inference_runs_and_stale_goals_stop_commands(tmp_path):
    log = tmp_path / "lowlevel_policy.log"
    params = ["use_sim_time:=true", f"checkpoint:={ROOT / 'checkpoints' / 'lowlevel'}",
              "temporal_ensemble:=false", "steps:=120", "goal_timeout:=0.5",
              "sync_to_tool_state:=false"]  # fmt: skip
    cmd = [str(BIN / "lowlevel_policy"), "--ros-args", *[a for p in params for a in ("-p", p)]]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    world = _World()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and world.pub["episode"].get_subscription_count() == 0:
            assert proc.poll() is None, log.read_text()[-3000:]
            world.spin(0.1)
        assert world.pub["episode"].get_subscription_count() > 0, "the policy node did not come up"
        world.spin(0.5)
        world.start_episode()
        world.run(20)  # first chunks
        first, end = world.run(120)  # 6 s, every input fresh; a chunk takes ~3 periods to predict
        fresh = world.commanded_ticks(first, end)
        arrivals = np.array([t for t in world.commands if world.ticks[first] < t <= world.ticks[end - 1]])
        period = 1000 * np.diff(arrivals)

        stop, stale_end = world.run(40, goals=False)  # the goal source hangs
        after = world.commanded_ticks(stop + 12, stale_end)  # goal_timeout (10 periods) + 2
        resume, resume_end = world.run(30)
        resumed = world.commanded_ticks(resume, resume_end)

        from sensor_msgs.msg import Image

        small = world.M.image(np.zeros((32, 32, 3), np.uint8), world.base + world.k * DT, "scene")
        mono = Image(height=64, width=64, encoding="mono8", step=64, data=bytes(64 * 64))
        for _ in range(3):  # repeated: still one log line each
            world.pub["scene"].publish(small)
            world.pub["wrist"].publish(mono)
            world.spin(0.1)
        world.run(4, images=False)
    finally:
        world.close()
        code = _stop(proc)
    text = log.read_text()
    summary = next((line for line in text.splitlines() if "commands," in line), "")
    longest_miss = max((len(list(run)) for ok, run in itertools.groupby(fresh) if not ok), default=0)
    # Lateness: first command after each tick of the fresh stretch, minus the tick.
    late = [
        1000 * (min([c - t for c in world.commands if c > t] or [np.inf])) for t in world.ticks[first:end]
    ]
    print(f"\ncommand period over {len(period) + 1} commands: p50 {np.median(period):.1f} / p90 "
          f"{np.quantile(period, 0.9):.1f} / max {period.max():.1f} ms; lateness after the tick p50 "
          f"{np.median(late):.1f} / p90 {np.quantile(late, 0.9):.1f} / max {max(late):.1f} ms; "
          f"{sum(fresh)}/{len(fresh)} periods commanded, longest run without a command {longest_miss}; "
          f"after the goal went stale {sum(after)}/{len(after)}\n{summary}")  # fmt: skip
    assert code == 0 and "Traceback" not in text, text[-3000:]
    inference_ms = float(re.search(r"inferences, p50 ([0-9.]+)", summary).group(1))
    assert inference_ms > 1000 * DT, summary  # the point of the test: slower than a period
    # Blocked by inference (one executor thread), the timer skips the periods each inference takes
    # (measured: 107/120 periods commanded, period p90 96 ms). Periods are those of this test's clock,
    # so that a stall of the test process itself does not count against the node.
    assert sum(fresh) >= 0.95 * len(fresh) and longest_miss <= 2, fresh  # no gap > 3 periods
    assert abs(np.median(period) - 1000 * DT) < 5 and np.quantile(period, 0.9) < 1.5 * 1000 * DT, period
    assert not any(after), after  # stale goal: nothing published
    assert sum(resumed[5:]) >= 0.9 * len(resumed[5:]), resumed  # fresh again: commanding
    assert text.count("holding, no commands: /dexhier/subgoal/image is") == 1, text[-3000:]
    assert text.count("rejected /camera/color/image_raw: 32x32 image") == 1, text[-3000:]
    assert text.count("rejected /wrist_camera/color/image_raw: encoding 'mono8'") == 1, text[-3000:]
