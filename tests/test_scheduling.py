"""Real-time scheduling of the control-path nodes (``dexhier_ros.scheduling``) and ``dexhier bench ros``.

The scheduler changes run in child processes: the test process itself must stay on the default
scheduler. The bench smoke test runs the real graph for a few seconds.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

CHILD = """
import os, threading
from dexhier_ros.scheduling import set_fifo
ready, stop = threading.Event(), threading.Event()
def worker():
    ready.set(); stop.wait()
t = threading.Thread(target=worker); t.start(); ready.wait()
try:
    changed = set_fifo(5)
except PermissionError:
    print("denied"); stop.set(); raise SystemExit(0)
late = threading.Thread(target=lambda: print("late", os.sched_getscheduler(0) == os.SCHED_FIFO))
late.start(); late.join()
print("worker", os.sched_getscheduler(t.native_id) == os.SCHED_FIFO, len(changed) >= 2)
stop.set(); t.join()
"""


def _child(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_set_fifo_moves_every_thread_and_new_threads_inherit_it():
    out = _child(CHILD)
    if out.strip() == "denied":
        pytest.skip("SCHED_FIFO not permitted here")
    assert "worker True True" in out and "late True" in out, out


def test_bulk_work_steps_down_and_the_thread_gets_its_priority_back():
    code = """
import os, threading
from dexhier_ros.scheduling import default_scheduler, set_fifo
try:
    set_fifo(7)
except PermissionError:
    print("denied"); raise SystemExit(0)
with default_scheduler():
    inside = os.sched_getscheduler(0) == os.SCHED_OTHER
    child = []
    t = threading.Thread(target=lambda: child.append(os.sched_getscheduler(0) == os.SCHED_OTHER))
    t.start(); t.join()
print("inside", inside, "child", child[0], "after", os.sched_getscheduler(0) == os.SCHED_FIFO,
      os.sched_getparam(0).sched_priority)
"""
    out = _child(code)
    if out.strip() == "denied":
        pytest.skip("SCHED_FIFO not permitted here")
    assert "inside True child True after True 7" in out, out


@pytest.mark.parametrize("priority", [0, -1, 100])
def test_set_fifo_rejects_priorities_outside_1_to_99(priority):
    from dexhier_ros.scheduling import set_fifo

    with pytest.raises(ValueError, match="outside 1..99"):
        set_fifo(priority)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # nothing changed on the way


def test_a_node_without_the_permission_warns_and_keeps_the_default_scheduler():
    # A user without the right: an rtprio limit of 0, and (when the tests run as root) not root.
    code = """
import os, rclpy
from rclpy.node import Node
from dexhier_ros.scheduling import apply_realtime_priority
import resource
resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))  # no real-time priority for an unprivileged user
os.setuid(65534) if os.getuid() == 0 else None  # and not root (CAP_SYS_NICE ignores the limit)
rclpy.init()
node = Node("scheduling_probe")
print("applied", apply_realtime_priority(node, 30), os.sched_getscheduler(0) == os.SCHED_OTHER)
try:
    apply_realtime_priority(node, 120)
except ValueError as err:
    print("error", err)
node.destroy_node(); rclpy.shutdown()
"""
    env = {**os.environ, "HOME": "/tmp", "ROS_LOG_DIR": "/tmp/ros_log_nobody"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "applied 0 True" in proc.stdout, proc.stdout + proc.stderr
    assert "not permitted" in proc.stderr, proc.stderr
    assert "outside 0..99" in proc.stdout, proc.stdout


@pytest.mark.ros
@pytest.mark.sim
def test_bench_ros_measures_the_graph_in_steady_control():
    from dexhier.ros_bench import bench_ros

    result = bench_ros(duration=4.0, perception=False)
    for key in ("e2e_p50_ms", "e2e_p99_ms", "jitter_p99_ms", "dropped_commands", "state_jitter_p99_ms"):
        assert key in result, key
    assert result["launch_exit_code"] == 0, result
    # 4 s at 20 Hz: about 80 steps, each answered by a forwarded command.
    assert 60 <= result["control_steps"] <= 100, result
    assert result["forwarded_commands"] >= 0.8 * result["control_steps"], result
    assert math.isfinite(result["e2e_p50_ms"]) and 0 < result["e2e_p50_ms"] < 50, result


def test_bench_ros_refuses_an_unknown_policy_a_bad_priority_or_the_low_level_without_perception():
    from dexhier.ros_bench import bench_ros

    with pytest.raises(ValueError, match="expected one of expert, lowlevel"):
        bench_ros(duration=1.0, policy="hierarchical")
    with pytest.raises(ValueError, match="keep perception on"):
        bench_ros(duration=1.0, perception=False, policy="lowlevel")
    with pytest.raises(ValueError, match="outside 0..99"):
        bench_ros(duration=1.0, realtime_priority=120)
