"""Fuzzing the launched graph (issue 16): hostile messages of every type its nodes subscribe to.

A real graph (twin bridge, safety supervisor, expert policy, episode coordinator; real DDS on
loopback, per-run domain) runs an episode while a fuzzer thread publishes malformed messages on
every topic they subscribe to: policy commands and controller goals (JointTrajectory), joint states,
the episode status (String, JSON), the twin's state (Float64MultiArray), /clock and the e-stop
(only False: True latches). Then the policy is SIGKILLed (the watchdog must hold within 2 control
periods) and an e-stop is sent under the same flood (it must latch within one period).

Asserted: no node dies or logs an unhandled exception; every command the supervisor forwards is
finite, inside the joint limits and within one rate-limit step of the previous one; the twin never
measures a joint past its limits (it rejects out-of-limit goals); nothing is forwarded after the
e-stop. ``run_fuzz`` also serves the ``slow`` measurement (>= 1000 messages per topic) whose figures
are in docs/benchmarks.md ("Safety and durability"); ``FUZZ_REPORT=path`` writes them as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]
rclpy = pytest.importorskip("rclpy")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PARAMS = str(ROOT / "launch" / "sim.params.yaml")
NODES = ("twin_bridge", "safety_supervisor", "expert_policy", "episode_coordinator")
SIM_TIME = {"safety_supervisor", "expert_policy"}
PERIOD = 0.05  # s, the control period (20 Hz, real-time factor 1)
MAX_STEP = {"arm": 2.0 * 0.075, "hand": 6.0 * 0.075}  # rad: max velocity x the watchdog's 1.5 periods
FUZZ = "fuzz"  # frame_id of every fuzz message: the probe ignores its own publications by it


def _limits():
    from sim.cell import CellConfig, ObjectParams, build_cell

    _, robot = build_cell(CellConfig(), ObjectParams())
    n = robot.n_arm
    return {
        "arm": (list(robot.joint_names[:n]), robot.lower[:n], robot.upper[:n]),
        "hand": (list(robot.joint_names[n:]), robot.lower[n:], robot.upper[n:]),
    }


class Fuzzer:
    """Malformed messages per topic from a seeded generator; ``acceptable`` ones (valid structure,
    absurd values) too unless ``rejected_only``."""

    def __init__(self, limits, state_len: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.limits, self.state_len = limits, state_len
        self.rejected_only = False

    def _pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def _values(self, n: int, lo, hi) -> list[float]:
        kind = self._pick(["nan", "inf", "huge", "out", "mixed"])
        v = self.rng.uniform(lo - 5 * (hi - lo), hi + 5 * (hi - lo))
        if kind == "nan":
            v[self.rng.integers(n)] = np.nan
        elif kind == "inf":
            v[self.rng.integers(n)] = self._pick([np.inf, -np.inf])
        elif kind == "huge":
            v[:] = self._pick([1e300, -1e300, 1e12])
        return [float(x) for x in v]

    def trajectory(self, group: str):
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        names, lo, hi = self.limits[group]
        n = len(names)
        msg = JointTrajectory()
        msg.header.frame_id = FUZZ
        kinds = ["empty", "no_points", "lengths", "unknown", "dup", "partial", "values", "long_name",
                 "time", "stamp", "big"]  # fmt: skip
        if not self.rejected_only:
            kinds += ["out_of_limits"] * 3
        kind = self._pick(kinds)
        q = self._values(n, lo, hi)
        point = JointTrajectoryPoint(positions=q, time_from_start=Duration(sec=0, nanosec=50_000_000))
        msg.joint_names, msg.points = list(names), [point]
        if kind == "empty":
            msg.joint_names, msg.points = [], []
        elif kind == "no_points":
            msg.points = []
        elif kind == "lengths":
            point.positions = q[: int(self.rng.integers(n))]
        elif kind == "unknown":
            msg.joint_names = [f"ghost_{i}" for i in range(n)]
        elif kind == "dup":
            msg.joint_names = [names[0]] * n
        elif kind == "partial":
            msg.joint_names, point.positions = names[:-1], q[:-1]
        elif kind == "values":
            point.positions = [float("nan")] * n
        elif kind == "long_name":
            msg.joint_names = [names[0] + "x" * 10_000, *names[1:]]
        elif kind == "time":
            point.time_from_start = Duration(sec=-5, nanosec=0)
        elif kind == "stamp":
            msg.header.stamp.sec = self._pick([-1, 2**31 - 1])
        elif kind == "big":
            k = self._pick([300, 2000, 20_000])
            msg.joint_names = [f"j{i}" for i in range(k)]
            point.positions = [0.0] * k
        else:  # out_of_limits: a well-formed goal up to 5 ranges outside the limits (or NaN/inf/huge)
            order = self.rng.permutation(n)
            msg.joint_names = [names[i] for i in order]
            point.positions = [q[i] for i in order]
        return msg

    def joint_state(self):
        from sensor_msgs.msg import JointState

        names = self.limits["arm"][0] + self.limits["hand"][0]
        lo = np.concatenate([self.limits["arm"][1], self.limits["hand"][1]])
        hi = np.concatenate([self.limits["arm"][2], self.limits["hand"][2]])
        msg = JointState(name=list(names))
        msg.header.frame_id = FUZZ
        kinds = ["lengths", "values", "big", "beyond", "stamp"]
        if not self.rejected_only:
            kinds += ["spoof"]
        kind = self._pick(kinds)
        msg.position = self._values(len(names), lo, hi)
        if kind == "lengths":
            msg.position = msg.position[:-3]
        elif kind == "big":
            k = self._pick([300, 20_000])
            msg.name, msg.position = [f"j{i}" for i in range(k)], [1e300] * k
        elif kind == "beyond":
            msg.position = [float(v) for v in hi + 1.0]
        elif kind == "stamp":
            msg.header.stamp.sec = -1
        elif kind == "spoof":  # plausible but false: within the limits, far from the robot
            msg.position = [float(v) for v in self.rng.uniform(lo, hi)]
        return msg

    def episode(self):
        from std_msgs.msg import String

        texts = [
            '{"episode": 1, "seed": -1, "done": false, "clock": 0.0, "task": "tweezer_pick"}',
            '{"episode": 1, "seed": 18446744073709551616, "done": false, "clock": 0.0}',
            '{"episode": 1, "seed": 1e400, "done": false, "clock": 0.0}',
            '{"episode": NaN, "seed": 1, "done": false}',
            '{"episode": 1, "seed": 1, "done": "no", "clock": -5}',
            "[" * 30_000 + "]" * 30_000,
            "[" * 100_000 + "]" * 100_000,
            '{"episode": 1, "seed": 1, "pad": "' + "a" * 70_000 + '"}',
            "{not json",
            "",
            "null",
            "\x00\xff garbage",
        ]
        return String(data=self._pick(texts))

    def sim_state(self):
        from std_msgs.msg import Float64MultiArray

        n = self.state_len
        kind = self._pick(["short", "long", "nan", "huge", "empty"])
        data = [float(v) for v in self.rng.normal(size=n)]
        if kind == "short":
            data = data[: n // 2]
        elif kind == "long":
            data = data + [0.0] * 5
        elif kind == "nan":
            data[int(self.rng.integers(n))] = float("nan")
        elif kind == "huge":
            data = [1e300] * n
        else:
            data = []
        return Float64MultiArray(data=data)

    def clock(self):
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        sec, nsec = self._pick(
            [(-1, 0), (2**31 - 1, 999_999_999), (0, 0), (12, 4_000_000_000), (-(2**31), 5)]
        )
        return Clock(clock=Time(sec=sec, nanosec=nsec))

    def estop_off(self):
        from std_msgs.msg import Bool

        return Bool(data=False)


class Probe:
    """Publishes the fuzz (from a thread) and records what the supervisor forwards and the twin measures."""

    def __init__(self) -> None:
        from dexhier_ros import messages as M
        from rclpy.node import Node
        from rclpy.qos import QoSProfile
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Float64MultiArray, String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        rclpy.init()
        self.node = Node("fuzz_probe")
        q = QoSProfile(depth=100)
        self.forwarded = {"arm": [], "hand": []}  # (received s, positions)
        self.states: list[list[float]] = []
        self.status: list[tuple[float, dict]] = []
        self.state_len = 0
        self.lock = threading.Lock()
        for g in ("arm", "hand"):
            self.node.create_subscription(JointTrajectory, f"/{g}_controller/joint_trajectory",
                                          lambda m, i, g=g: self._on_fwd(g, m, i), q)  # fmt: skip
        self.node.create_subscription(JointState, "/joint_states", self._on_js, q)
        self.node.create_subscription(String, "/dexhier/safety/status", self._on_status, q)
        self.node.create_subscription(Float64MultiArray, "/dexhier/sim/state", self._on_sim, q)
        self.reset = self.node.create_client(Trigger, "/dexhier/sim/reset")
        self.estop_reset = self.node.create_client(Trigger, "/dexhier/estop/reset")
        self.estop_true: list[float] = []  # when each e-stop (True) was written to DDS (system clock s)
        self.node.create_subscription(Bool, "/dexhier/estop", self._on_estop, q)
        self.estop = self.node.create_publisher(Bool, "/dexhier/estop", QoSProfile(depth=10))
        self.pubs = {
            "/dexhier/command/arm": (JointTrajectory, lambda f: f.trajectory("arm")),
            "/dexhier/command/hand": (JointTrajectory, lambda f: f.trajectory("hand")),
            "/arm_controller/joint_trajectory": (JointTrajectory, lambda f: f.trajectory("arm")),
            "/hand_controller/joint_trajectory": (JointTrajectory, lambda f: f.trajectory("hand")),
            "/joint_states": (JointState, lambda f: f.joint_state()),
            "/dexhier/sim/episode": (String, lambda f: f.episode()),
            "/dexhier/sim/state": (Float64MultiArray, lambda f: f.sim_state()),
            "/clock": (Clock, lambda f: f.clock()),
            "/dexhier/estop": (Bool, lambda f: f.estop_off()),
        }
        self.out = {
            t: (self.estop if t == "/dexhier/estop" else self.node.create_publisher(
                kind, t, M.EPISODE_QOS if t.endswith("episode") else q), make)
            for t, (kind, make) in self.pubs.items()
        }  # fmt: skip
        self.sent = dict.fromkeys(self.pubs, 0)
        self.skip: set[str] = set()

    @staticmethod
    def _at(info) -> float:
        stamp = info["received_timestamp"]
        return stamp * 1e-9 if stamp > 0 else time.time()

    def _on_fwd(self, group, msg, info) -> None:
        if msg.header.frame_id != FUZZ and msg.points:
            self.forwarded[group].append((self._at(info), list(msg.points[0].positions)))

    def _on_js(self, msg, info) -> None:
        if msg.header.frame_id != FUZZ:
            self.states.append(list(msg.position))

    def _on_estop(self, msg, info) -> None:
        if msg.data:
            self.estop_true.append(info["source_timestamp"] * 1e-9)

    def _on_status(self, msg, info) -> None:
        self.status.append((self._at(info), json.loads(msg.data)))

    def _on_sim(self, msg, info) -> None:
        self.state_len = max(self.state_len, len(msg.data))

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.01)

    def fuzz(self, fuzzer: Fuzzer, per_topic: int, stop: threading.Event, rate: float) -> None:
        """Round-robin over the topics but ``skip``, ``rate`` messages/s each, to ``per_topic`` or stop."""
        while not stop.is_set() and min(self.sent.values()) < per_topic:
            t0 = time.monotonic()
            for topic, (pub, make) in self.out.items():
                if topic not in self.skip:
                    pub.publish(make(fuzzer))
                    self.sent[topic] += 1
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t0)))

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown()


def _start(tmp_path: Path) -> dict[str, subprocess.Popen]:
    procs = {}
    for n in NODES:
        extra = ["-p", "use_sim_time:=true"] if n in SIM_TIME else []
        log = (tmp_path / f"{n}.log").open("w")
        procs[n] = subprocess.Popen(
            [str(BIN / n), "--ros-args", "-r", f"__node:={n}", "--params-file", PARAMS, *extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return procs


def _stop(procs) -> None:
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
    deadline = time.monotonic() + 10
    for p in procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_fuzz(tmp_path: Path, per_topic: int, rate: float, estops: int = 3) -> dict:
    """Run the graph under fuzz; returns the figures (asserting nothing: the callers do)."""
    from std_srvs.srv import Trigger

    limits = _limits()
    procs = _start(tmp_path)
    probe = Probe()
    figures: dict = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            probe.states and probe.state_len and set(NODES) <= set(probe.node.get_node_names())
            and probe.out["/dexhier/command/arm"][0].get_subscription_count() > 0
        ):  # fmt: skip
            probe.spin(0.1)
        assert probe.states and set(NODES) <= set(probe.node.get_node_names()), "the graph did not start"
        assert probe.reset.wait_for_service(timeout_sec=10)
        fut = probe.reset.call_async(Trigger.Request())  # episode 1: the expert starts commanding
        while not fut.done():
            probe.spin(0.05)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(probe.forwarded["arm"]) < 20:
            probe.spin(0.05)
        assert len(probe.forwarded["arm"]) >= 20, "the expert's commands did not get through"
        probe.spin(0.5)
        for g in probe.forwarded:  # the reset's re-anchoring is legitimate: check from here on
            probe.forwarded[g] = probe.forwarded[g][-1:]

        fuzzer, stop = Fuzzer(limits, probe.state_len), threading.Event()
        t_fuzz = time.monotonic()
        worker = threading.Thread(target=probe.fuzz, args=(fuzzer, per_topic, stop, rate), daemon=True)
        worker.start()
        while worker.is_alive():
            probe.spin(0.1)
        figures["fuzz_s"] = time.monotonic() - t_fuzz
        figures["sent_per_topic"] = dict(probe.sent)

        # The watchdog: commands that would be accepted stop with the policy; the flood goes on, but
        # for /clock (a bogus clock jump holds at once, which would flatter the figure).
        fuzzer.rejected_only, stop, probe.skip = True, threading.Event(), {"/clock"}
        worker = threading.Thread(target=probe.fuzz, args=(fuzzer, 10**9, stop, rate), daemon=True)
        worker.start()
        probe.spin(1.0)
        n_status = len(probe.status)
        killed = time.time()
        os.killpg(procs["expert_policy"].pid, signal.SIGKILL)
        probe.spin(1.0)
        held = [t for t, d in probe.status[n_status:] if d["reasons"][0].startswith("stale: last command")]
        figures["watchdog_hold_periods"] = (held[0] - killed) / PERIOD if held else float("inf")

        # The e-stop under the full flood, acceptable commands included: latch, check, release, again.
        fuzzer.rejected_only, probe.skip = False, set()
        from std_msgs.msg import Bool

        latencies, after = [], 0
        for _ in range(estops):
            probe.spin(0.5)
            n_status, n_true = len(probe.status), len(probe.estop_true)
            probe.estop.publish(Bool(data=True))
            probe.spin(0.5)
            latched = [t for t, d in probe.status[n_status:] if d["verdict"] == "held_estop"]
            written = probe.estop_true[n_true] if len(probe.estop_true) > n_true else None
            latencies.append(latched[0] - written if latched and written else float("inf"))
            released = time.time()
            # Each controller's hold goes out just before its status: count from the last status on.
            after += sum(
                1 for g in probe.forwarded for t, _ in probe.forwarded[g] if latched[-1] + 0.01 < t < released
            )
            fut = probe.estop_reset.call_async(Trigger.Request())
            while not fut.done():
                probe.spin(0.02)
        stop.set()
        worker.join(5)
        figures["sent_per_topic"] = dict(probe.sent)
        figures["estop_latch_ms"] = [round(1000 * x, 2) for x in latencies]
        figures["estop_latch_periods"] = max(latencies) / PERIOD
        figures["forwarded_after_estop"] = after
        probe.spin(0.5)
        figures["alive"] = {n: p.poll() is None for n, p in procs.items() if n != "expert_policy"}
    finally:
        probe.close()
        _stop(procs)
    figures.update(_check_outputs(probe, limits))
    text = {n: (tmp_path / f"{n}.log").read_text(errors="replace") for n in NODES}
    figures["unhandled"] = {n: t.count("unhandled exception") + t.count("Traceback") for n, t in text.items()}
    figures["log_lines"] = {n: t.count("\n") for n, t in text.items()}
    return figures


def _check_outputs(probe: Probe, limits) -> dict:
    out = {"forwarded": {}, "bad_forwarded": 0, "max_step_ratio": 0.0, "max_past_limit": 0.0}
    for g, rows in probe.forwarded.items():
        names, lo, hi = limits[g]
        out["forwarded"][g] = len(rows)
        q = np.array([r for _, r in rows], dtype=float).reshape(-1, len(names))
        bad = ~np.isfinite(q).all(axis=1) | (q < lo - 1e-9).any(axis=1) | (q > hi + 1e-9).any(axis=1)
        out["bad_forwarded"] += int(bad.sum())
        if len(q) > 1:
            step = float(np.abs(np.diff(q, axis=0)).max())
            out["max_step_ratio"] = max(out["max_step_ratio"], step / MAX_STEP[g])
    lo = np.concatenate([limits["arm"][1], limits["hand"][1]])
    hi = np.concatenate([limits["arm"][2], limits["hand"][2]])
    states = np.array(probe.states[-5000:], dtype=float)
    past = np.maximum(states - hi, lo - states).max(axis=0)
    out["max_past_limit"] = float(past.max())
    out["max_past_limit_joint"] = (limits["arm"][0] + limits["hand"][0])[int(np.argmax(past))]
    return out


def _assert_figures(f: dict, watchdog_periods: float = 2.0) -> None:
    assert all(f["alive"].values()), f
    assert not any(f["unhandled"].values()), f
    assert f["bad_forwarded"] == 0, f
    assert f["max_step_ratio"] <= 1.0 + 1e-6, f
    # Commands at a limit at full speed overshoot it by the servo's dynamics (measured up to 0.09 rad);
    # the unclamped holds of issue 16 put th_axl 0.68 rad past its limit.
    assert f["max_past_limit"] < 0.15, f
    assert f["forwarded_after_estop"] == 0, f
    assert f["estop_latch_periods"] <= 1.0, f
    assert f["watchdog_hold_periods"] <= watchdog_periods, f


def test_fuzzing_the_graph_kills_no_node_and_forwards_nothing_unsafe(tmp_path):
    f = run_fuzz(tmp_path, per_topic=150, rate=25.0)  # about 6 s of fuzz, 9 topics
    print(json.dumps(f))
    # The target is 2 periods (the measurement asserts it); from the policy's death the hold can come a
    # few ms later under load (docs/benchmarks.md), and the old supervisor held after 4.
    _assert_figures(f, watchdog_periods=2.5)
    assert min(f["sent_per_topic"].values()) >= 150
    # Throttled logging: a few lines per reason and second, not one per rejected message.
    assert f["log_lines"]["safety_supervisor"] < 300, f


@pytest.mark.slow
def test_fuzz_measurement_1000_messages_per_topic(tmp_path):
    f = run_fuzz(tmp_path, per_topic=1000, rate=50.0, estops=10)
    if os.environ.get("FUZZ_REPORT"):
        Path(os.environ["FUZZ_REPORT"]).write_text(json.dumps(f, indent=1))
    print(json.dumps(f))
    _assert_figures(f)
    assert min(f["sent_per_topic"].values()) >= 1000
