"""``dexhier bench ros``: latency, control-period jitter and dropped commands of the ROS 2 graph.

Launches ``launch/sim.launch.xml`` (real time, episodes back to back) and listens with a probe node
in a thread of this process, from one second after the policy's first command in the first episode
(before it the twin idles, the policy loads the scene and warms up). Per twin control step k the
bridge publishes the state the policy acts on, and hands the step to its sensor thread, which
renders and publishes the camera frame and (every 4th step) the cloud; the policy's command for step
k goes through the safety supervisor to the controller topic. Measured at the probe from the
middleware's reception stamps (wall clock); the control path and the probe run under SCHED_FIFO at
``realtime_priority`` (see ``dexhier_ros.scheduling``; 0 = default scheduler):

* ``e2e``: arrival of the forwarded (safe) command minus arrival of the input it answers (the first
  forwarded command after it). The stand-in policy (the expert) reads the twin state, so the
  headline e2e starts at the state; ``camera_to_command`` starts at the camera frame, which a
  camera-driven policy would read;
* ``jitter``: |interval between consecutive forwarded commands − control period|;
* ``state_jitter``: the same for the twin states, i.e. the twin's own control tick (the part of
  the jitter that does not come from the policy and the supervisor);
* ``dropped_commands``: control steps after which no forwarded command arrived before the next
  step's state (the twin then held the previous target).

The headline keys are for steady control: samples within ``RESET_WINDOW_S`` of an episode
message (episode end and reset, when the twin and the policy rebuild their models) are left out;
the ``*_all`` keys keep them.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dexhier.ros_demo import SIM_LAUNCH, isolate_dds

RESET_WINDOW_S = 1.0
START_TIMEOUT_S = 90.0  # s for the graph to start and the policy's first command
# Launch arguments per benchmarked policy. The learned low level acts on its own 20 Hz timer, not on
# each twin state, so its e2e is the timer's phase behind the state rather than a reaction time.
BENCH_POLICIES = {
    "expert": {"policy": "expert"},
    "lowlevel": {"policy": "lowlevel", "task": "tool_open_to"},
}


def _received_at(info) -> float:
    """System-clock s at which the middleware received a message (now, if it gave no stamp)."""
    stamp = info["received_timestamp"]
    return stamp * 1e-9 if stamp > 0 else time.time()


class _Probe(threading.Thread):
    def __init__(self, duration: float, realtime_priority: int = 0) -> None:
        super().__init__(daemon=True)
        self.duration = duration
        self.realtime_priority = realtime_priority
        # Wall (system clock) s at which the middleware received each message.
        self.frames: list[float] = []  # camera frames
        self.states: list[float] = []  # twin states
        self.forwarded: list[float] = []  # forwarded (safe) arm commands
        self.resets: list[float] = []
        self.started_at = float("inf")  # when the first episode (not the idle start-up scene) began
        self.window_start = float("inf")  # system-clock s at which the measurement window opened
        self.complete = False  # the whole duration was measured
        self.done = threading.Event()
        self.error: str | None = None

    def _on_episode(self, msg, info) -> None:
        self.resets.append(_received_at(info))
        try:
            if int(json.loads(msg.data)["episode"]) >= 1 and self.started_at == float("inf"):
                self.started_at = self.resets[-1]
        except (ValueError, KeyError, TypeError):
            pass

    def run(self) -> None:
        import rclpy
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64MultiArray, String
        from trajectory_msgs.msg import JointTrajectory

        if self.realtime_priority:
            # The probe stands where a cell's controllers are, which run real-time: without it the
            # measurement would add this process's own scheduling delays to the graph's.
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
            except PermissionError:
                self.realtime_priority = 0
        context = rclpy.Context()
        rclpy.init(context=context)
        node = Node("ros_bench_probe", context=context)

        def arrival(log: list[float]):
            """Callback logging when the middleware received each message: a C++ controller would see
            it then, and this probe's own Python executor delays are left out of the figures."""
            return lambda msg, info: log.append(_received_at(info))

        q = QoSProfile(depth=100)
        sensor = qos_profile_sensor_data
        node.create_subscription(Image, "/camera/color/image_raw", arrival(self.frames), sensor)
        node.create_subscription(Float64MultiArray, "/dexhier/sim/state", arrival(self.states), q)
        node.create_subscription(
            JointTrajectory, "/arm_controller/joint_trajectory", arrival(self.forwarded), q
        )
        node.create_subscription(String, "/dexhier/sim/episode", self._on_episode, q)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        try:
            # Measure from the policy's first command in the first episode: before it the twin idles,
            # and the policy loads that episode's scene. Deadlines on the monotonic clock; the samples
            # are middleware stamps (system clock).
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (self.forwarded and self.forwarded[-1] > self.started_at):
                if time.monotonic() > deadline:
                    started = self.started_at < float("inf")
                    where = " of the first episode's start" if started else " (no episode started)"
                    self.error = f"no command within {START_TIMEOUT_S:g} s{where}"
                    return
                executor.spin_once(timeout_sec=0.05)
            # The first second of commands is warm-up, left out like the second after a reset.
            warm_up_end = time.monotonic() + RESET_WINDOW_S
            while time.monotonic() < warm_up_end:
                executor.spin_once(timeout_sec=0.01)
            self.window_start = time.time()  # samples stamped earlier but handled later are dropped
            for k in (self.frames, self.states, self.forwarded, self.resets):
                k.clear()
            end = time.monotonic() + self.duration
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.01)
            self.complete = True
        finally:
            node.destroy_node()
            rclpy.shutdown(context=context)
            self.done.set()


def bench_ros(
    duration: float = 60.0,
    real_time_factor: float = 1.0,
    perception: bool = True,
    realtime_priority: int = 40,
    policy: str = "expert",
) -> dict[str, Any]:
    """Run the graph for ``duration`` s of measurement; returns the figures (ms, counts).

    ``realtime_priority``: SCHED_FIFO priority of the control path and the probe (0 = none).
    ``policy``: ``expert`` (``tweezer_pick``) or ``lowlevel`` (the learned low level on
    ``tool_open_to`` with oracle goals; it needs perception).
    """
    if not 0 <= realtime_priority <= 99:
        raise ValueError(f"realtime priority {realtime_priority} outside 0..99 (0 = off)")
    if policy not in BENCH_POLICIES:
        raise ValueError(f"policy {policy!r}: expected one of {', '.join(BENCH_POLICIES)}")
    if policy == "lowlevel" and not perception:
        raise ValueError("the learned low level reads the tool state from perception: keep perception on")
    from dexhier.launch.runner import run
    from dexhier.launch.xml_format import parse_launch_file

    isolate_dds()
    results = Path(tempfile.mkdtemp(prefix="dexhier_bench_ros_")) / "episodes.jsonl"
    args = {"episodes": "100000", "real_time_factor": str(real_time_factor), "results_path": str(results),
            "perception": "true" if perception else "false",
            "realtime_priority": str(realtime_priority), **BENCH_POLICIES[policy]}  # fmt: skip
    probe = _Probe(duration, realtime_priority)
    probe.start()
    stop_after = START_TIMEOUT_S + RESET_WINDOW_S + duration + 15.0
    code = run(parse_launch_file(SIM_LAUNCH, args), stop_after=stop_after, stop_when=probe.done.is_set)
    probe.join(timeout=10)
    if probe.error:
        raise RuntimeError(f"bench ros: {probe.error} (launch exit code {code})")
    if not probe.complete:
        raise RuntimeError(
            f"bench ros: the graph stopped before {duration:g} s were measured (launch exit code {code})"
        )
    period = 1.0 / (20.0 * real_time_factor)
    frames, states, fwd, resets = (
        np.array([t for t in v if t >= probe.window_start])
        for v in (probe.frames, probe.states, probe.forwarded, probe.resets)
    )

    def steady(t: np.ndarray) -> np.ndarray:
        if len(resets) == 0:
            return np.ones(len(t), bool)
        return np.min(np.abs(t[:, None] - resets[None, :]), axis=1) > RESET_WINDOW_S

    def latency(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(latency ms, input time) of the first forwarded command after each input."""
        lat, when = [], []
        for t in inputs:
            later = fwd[fwd > t]
            if len(later) and later[0] - t < 10 * period:
                lat.append(1000 * (later[0] - t))
                when.append(t)
        return np.array(lat), np.array(when)

    e2e_a, e2e_t = latency(states)
    cam_a, cam_t = latency(frames)
    jitter = 1000 * np.abs(np.diff(fwd) - period)
    state_jitter = 1000 * np.abs(np.diff(states) - period)  # the twin's own tick, before the chain
    dropped_at = [
        a for a, b in zip(states[:-1], states[1:], strict=True) if not np.any((fwd > a) & (fwd <= b))
    ]
    dropped_at = np.array(dropped_at)

    def q(values: np.ndarray, p: float) -> float:
        return float(np.quantile(values, p)) if len(values) else float("nan")

    e2e_steady, jit_steady = e2e_a[steady(e2e_t)], jitter[steady(fwd[:-1])] if len(fwd) > 1 else jitter
    tick_steady = state_jitter[steady(states[:-1])] if len(states) > 1 else state_jitter
    return {
        "duration_s": duration,
        "real_time_factor": real_time_factor,
        "perception_node": perception,
        "realtime_priority": realtime_priority,
        # The probe runs as the nodes do (same user and limits): if it got SCHED_FIFO, so did they.
        "realtime_in_effect": bool(probe.realtime_priority),
        "control_steps": int(len(states)),
        "camera_frames": int(len(frames)),
        "forwarded_commands": int(len(fwd)),
        "e2e_p50_ms": q(e2e_steady, 0.5),
        "e2e_p99_ms": q(e2e_steady, 0.99),
        "jitter_p50_ms": q(jit_steady, 0.5),
        "jitter_p99_ms": q(jit_steady, 0.99),
        "dropped_commands": int(np.sum(steady(dropped_at))) if len(dropped_at) else 0,
        "state_jitter_p50_ms": q(tick_steady, 0.5),
        "state_jitter_p99_ms": q(tick_steady, 0.99),
        "camera_to_command_p50_ms": q(cam_a[steady(cam_t)], 0.5),
        "camera_to_command_p99_ms": q(cam_a[steady(cam_t)], 0.99),
        "e2e_p99_ms_all": q(e2e_a, 0.99),
        "jitter_p99_ms_all": q(jitter, 0.99),
        "dropped_commands_all": int(len(dropped_at)),
        "episode_messages": int(len(resets)),
        "launch_exit_code": code,
        "period_ms": 1000 * period,
        "policy": policy,
        "note": "e2e from the twin state to the next forwarded safe command"
        + (" (the expert reacts to each state)" if policy == "expert" else " (the low level's timer)"),
        "median_forward_interval_ms": float(1000 * statistics.median(np.diff(fwd))) if len(fwd) > 1 else None,
    }
