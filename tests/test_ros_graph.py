"""The ROS 2 graph against the twin: multi-process, real DDS on loopback (conftest sets the domain).

* sim-in-the-loop regression: the launched sim graph solves seeded ``tweezer_pick`` episodes;
* safety: stale commands → hold; e-stop → nothing forwarded until reset; limits never exceeded;
* malformed input on every subscribed topic: no node dies, each is rejected with one log line.
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

pytestmark = [pytest.mark.ros, pytest.mark.sim]

rclpy = pytest.importorskip("rclpy")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_launched_sim_graph_solves_seeded_episodes(tmp_path):
    results = tmp_path / "episodes.jsonl"
    launch_file = str(ROOT / "launch" / "sim.launch.xml")
    args = ["episodes:=3", "seed:=201", "real_time_factor:=1.0", f"results_path:={results}"]
    cmd = [str(BIN / "dexhier"), "launch", launch_file, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in results.read_text().splitlines()]
    assert [r["seed"] for r in lines] == [201, 202, 203]
    assert sum(r["success"] for r in lines) >= 2, lines  # the expert alone solves 100 % of seeds
    assert "SUMMARY" in proc.stdout
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[max(0, out.find("Traceback") - 1500) :][:5000]


class _Probe:
    """An in-test node that sends commands and records what the safety supervisor forwards."""

    def __init__(self) -> None:
        from rclpy.node import Node
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        rclpy.init()
        self.node = Node("probe", parameter_overrides=[])
        q = QoSProfile(depth=50)
        self.cmd = self.node.create_publisher(JointTrajectory, "/dexhier/command/arm", q)
        self.estop = self.node.create_publisher(Bool, "/dexhier/estop", q)
        self.reset = self.node.create_client(Trigger, "/dexhier/estop/reset")
        self.forwarded: list[tuple[float, list[float]]] = []
        self.states: list[list[float]] = []
        self.names: list[str] = []
        self.node.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", self._on_fwd, q)
        self.node.create_subscription(JointState, "/joint_states", self._on_js, q)

    def _on_fwd(self, msg) -> None:
        if not msg.points:  # the fuzz test's own malformed messages
            return
        self.forwarded.append((time.monotonic(), list(msg.points[0].positions)))

    def _on_js(self, msg) -> None:
        self.names = list(msg.name)
        self.states.append(list(msg.position))

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.01)

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown()


@pytest.fixture
def bridge_and_safety(tmp_path):
    params = str(ROOT / "launch" / "sim.params.yaml")
    procs = [
        subprocess.Popen([str(BIN / "twin_bridge"), "--ros-args", "-r", "__node:=twin_bridge",
                          "--params-file", params, "-p", "task:=tool_open_to"],
                         stdout=(tmp_path / "bridge.log").open("w"), stderr=subprocess.STDOUT,
                         start_new_session=True),
        subprocess.Popen([str(BIN / "safety_supervisor"), "--ros-args", "-r", "__node:=safety_supervisor",
                          "--params-file", params, "-p", "use_sim_time:=true", "-p", "task:=tool_open_to"],
                         stdout=(tmp_path / "safety.log").open("w"), stderr=subprocess.STDOUT,
                         start_new_session=True),
    ]  # fmt: skip
    probe = _Probe()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (probe.states and probe.cmd.get_subscription_count() > 0):
            probe.spin(0.1)
        assert probe.states, "no joint_states from the twin bridge"
        assert probe.cmd.get_subscription_count() > 0, "the safety supervisor did not subscribe"
        probe.spin(1.0)
        yield probe, procs
    finally:
        probe.close()
        _stop(procs)


def _arm_command(probe: _Probe, q: np.ndarray) -> None:
    from dexhier_ros import messages as M

    probe.cmd.publish(M.trajectory(probe.names[:6], q, [0.05]))


def test_safety_holds_on_stale_commands_and_latches_the_estop(bridge_and_safety):
    probe, procs = bridge_and_safety
    q0 = np.array(probe.states[-1][:6])
    for _ in range(10):  # a live command stream
        _arm_command(probe, q0)
        probe.spin(0.05)
    probe.forwarded.clear()
    t_stop = time.monotonic()
    probe.spin(1.0)  # stream stopped: the supervisor must hold (one message) after stale_after
    assert len(probe.forwarded) == 1, probe.forwarded
    assert probe.forwarded[0][0] - t_stop < 0.15 + 2 * 0.05 + 0.25  # stale_after + 2 periods + DDS slack
    np.testing.assert_allclose(probe.forwarded[0][1], probe.states[-1][:6], atol=0.01)

    from std_msgs.msg import Bool

    probe.estop.publish(Bool(data=True))
    probe.spin(0.5)
    probe.forwarded.clear()
    for _ in range(10):
        _arm_command(probe, q0 + 0.05)
        probe.spin(0.05)
    probe.estop.publish(Bool(data=False))  # does not release
    for _ in range(5):
        _arm_command(probe, q0 + 0.05)
        probe.spin(0.05)
    assert probe.forwarded == []
    from std_srvs.srv import Trigger

    assert probe.reset.wait_for_service(timeout_sec=5)
    fut = probe.reset.call_async(Trigger.Request())
    while not fut.done():
        probe.spin(0.05)
    assert fut.result().message == "e-stop released"
    for _ in range(5):
        _arm_command(probe, q0 + 0.05)
        probe.spin(0.05)
    assert probe.forwarded, "commands are forwarded again after the reset"
    assert all(p.poll() is None for p in procs)


def test_limits_are_never_exceeded_on_the_twin(bridge_and_safety):
    probe, procs = bridge_and_safety
    q = np.array(probe.states[-1][:6])
    q[2] = 9.0  # far beyond the elbow's +-pi
    for _ in range(40):
        _arm_command(probe, q)
        probe.spin(0.05)
    elbow = [s[2] for s in probe.states]
    assert max(elbow) <= 3.1415 + 0.01
    assert max(fwd[1][2] for fwd in probe.forwarded) <= 3.1415 + 1e-9
    assert all(p.poll() is None for p in procs)


def test_malformed_input_on_every_subscribed_topic_is_rejected_and_no_node_dies(tmp_path):
    from dexhier_ros import messages as M
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    params = str(ROOT / "launch" / "sim.params.yaml")
    names = ("twin_bridge", "safety_supervisor", "expert_policy", "episode_coordinator")
    logs = {n: tmp_path / f"{n}.log" for n in names}
    extra = {"safety_supervisor": ["-p", "use_sim_time:=true"], "expert_policy": ["-p", "use_sim_time:=true"],
             "twin_bridge": [], "episode_coordinator": []}  # fmt: skip
    procs = [
        subprocess.Popen([str(BIN / n), "--ros-args", "-r", f"__node:={n}", "--params-file", params,
                          *extra[n]],
                         stdout=logs[n].open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        for n in names
    ]  # fmt: skip
    probe = _Probe()
    try:
        from rclpy.qos import QoSProfile

        q = QoSProfile(depth=10)
        pubs = {
            topic: probe.node.create_publisher(kind, topic, qos)
            for topic, kind, qos in [
                ("/arm_controller/joint_trajectory", JointTrajectory, q),
                ("/hand_controller/joint_trajectory", JointTrajectory, q),
                ("/dexhier/command/arm", JointTrajectory, q),
                ("/dexhier/command/hand", JointTrajectory, q),
                ("/joint_states", JointState, q),
                ("/dexhier/sim/episode", String, M.EPISODE_QOS),  # latched, like the twin's
                ("/dexhier/sim/state", Float64MultiArray, q),
            ]
        }
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (
            probe.states and set(names) <= set(probe.node.get_node_names())
            and all(pubs[t].get_subscription_count() > 0 for t in pubs)
        ):  # fmt: skip
            probe.spin(0.1)
        assert probe.states and set(names) <= set(probe.node.get_node_names())
        probe.spin(1.0)
        future = M.trajectory(probe.names[:6], np.zeros(6), [0.1])
        future.header.stamp = M.to_time(1e6)  # ~11 days ahead of the twin's clock
        nan_point = JointTrajectoryPoint(positions=[float("nan")] * 6, time_from_start=M.to_duration(0.1))
        bad = [
            ("/arm_controller/joint_trajectory", JointTrajectory(joint_names=list(probe.names[:6]))),
            ("/arm_controller/joint_trajectory", JointTrajectory(joint_names=["nope"], points=[nan_point])),
            ("/hand_controller/joint_trajectory", M.trajectory(["if_mcp"], np.zeros(1), [0.1])),  # partial
            ("/dexhier/command/arm", JointTrajectory(joint_names=list(probe.names[:6]), points=[nan_point])),
            ("/dexhier/command/hand", M.trajectory(["a", "b"], np.zeros(2), [0.1])),
            ("/joint_states", JointState(name=["elbow_joint"], position=[1.0, 2.0])),
            ("/dexhier/sim/episode", String(data="{not json")),
            ("/dexhier/sim/state", Float64MultiArray(data=[1.0, 2.0, float("nan")])),
            ("/arm_controller/joint_trajectory", future),  # absurd timestamp
        ]
        for topic, msg in bad:
            pubs[topic].publish(msg)
            probe.spin(0.3)
        probe.spin(1.0)
        assert all(p.poll() is None for p in procs), {n: logs[n].read_text()[-2000:] for n in names}
    finally:
        probe.close()
        _stop(procs)
    text = {n: logs[n].read_text() for n in names}
    assert text["twin_bridge"].count("rejected arm trajectory") == 3
    assert text["twin_bridge"].count("in the future") == 1
    assert text["twin_bridge"].count("rejected hand trajectory") == 1
    assert text["safety_supervisor"].count("rejected arm command") == 1
    assert text["safety_supervisor"].count("rejected hand command") == 1
    assert text["safety_supervisor"].count("ignored joint_states") == 1
    assert text["expert_policy"].count("ignored malformed /dexhier/sim/episode") == 1
    assert text["episode_coordinator"].count("ignored malformed /dexhier/sim/episode") == 1
    assert all("Traceback" not in t for t in text.values()), text


def test_perception_node_reports_the_tool_opening_through_the_graph(tmp_path):
    """The launched graph publishes /dexhier/tool_state close to the twin's measured tip gap."""
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from sim.twin import TwinConfig, TwinEnv

    env = TwinEnv(TwinConfig(task="tweezer_pick", render=False, points=False))
    qadr, tool = env.tool_qpos_adr, env.tool
    launch = subprocess.Popen(
        # Three episodes: on a loaded machine the encoder can take ~10 s to load, most of two episodes.
        [str(BIN / "dexhier"), "launch", str(ROOT / "launch" / "sim.launch.xml"), "episodes:=3", "seed:=7",
         f"results_path:={tmp_path / 'r.jsonl'}"],
        stdout=(tmp_path / "launch.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    rclpy.init()
    node = Node("perception_probe")
    est: list[tuple[float, float]] = []
    truth: list[tuple[float, float]] = []
    q = QoSProfile(depth=50)

    def on_estimate(m: JointState) -> None:
        est.append((time.monotonic(), m.position[list(m.name).index("tip_gap")]))

    def on_state(m: Float64MultiArray) -> None:
        truth.append((time.monotonic(), tool.tip_gap(float(np.mean(np.asarray(m.data)[1:][qadr])))))

    node.create_subscription(JointState, "/dexhier/tool_state", on_estimate, q)
    node.create_subscription(Float64MultiArray, "/dexhier/sim/state", on_state, q)
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end and launch.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.05)
        assert launch.wait(timeout=30) == 0, (tmp_path / "launch.log").read_text()[-3000:]
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        _stop([launch])
    assert len(est) >= 10, (tmp_path / "launch.log").read_text()[-3000:]
    tt = np.array(truth)
    errors = [abs(tt[np.argmin(np.abs(tt[:, 0] - t)), 1] - g) for t, g in est]
    assert np.median(errors) < 0.0015  # the target for twin clouds; offline it measures 0.18 mm
