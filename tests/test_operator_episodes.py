"""Operator-marked episodes for a real cell: the state machine alone, then the coordinator node
(``source:=operator``) driven through its services over DDS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dexhier.operator_episodes import EpisodeStateError, OperatorEpisodes


def test_start_then_mark_gives_one_result_per_episode():
    eps = OperatorEpisodes(task="tweezer_pick", timeout=30.0)
    assert eps.start(10.0) == 1 and eps.running
    first = eps.mark(True, 14.5)
    assert first["success"] and first["outcome"] == "success" and not first["aborted"]
    assert (
        first["episode"] == 1 and first["wall_time"] == pytest.approx(4.5) and first["task"] == "tweezer_pick"
    )
    assert not eps.running
    assert eps.start(20.0) == 2
    second = eps.mark(False, 21.0)
    assert (second["success"], second["outcome"], second["episode"]) == (False, "failure", 2)


def test_results_have_the_twin_episode_keys():
    twin_keys = {"seed", "success", "sim_time", "steps", "task", "object_width", "wall_time", "aborted"}
    eps = OperatorEpisodes(task="tool_open_to")
    eps.start(0.0)
    assert twin_keys <= set(eps.mark(True, 1.0))


def test_time_out_and_stop_end_an_episode_as_aborted():
    eps = OperatorEpisodes(task="tweezer_pick", timeout=5.0)
    eps.start(0.0)
    assert eps.expire(4.9) is None and eps.running
    timed_out = eps.expire(5.0)
    assert timed_out["outcome"] == "timeout" and timed_out["aborted"] and not timed_out["success"]
    eps.start(6.0)
    stopped = eps.stop(7.0)
    assert stopped["outcome"] == "stopped" and stopped["aborted"]
    assert eps.stop(8.0) is None  # nothing running: nothing to record


def test_requests_out_of_turn_are_refused_without_changing_state():
    eps = OperatorEpisodes(task="tweezer_pick")
    with pytest.raises(EpisodeStateError, match="no episode is running"):
        eps.mark(True, 0.0)
    eps.start(0.0)
    with pytest.raises(EpisodeStateError, match="episode 1 is running"):
        eps.start(1.0)
    assert eps.running and eps.episode == 1


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_timeouts_are_rejected(timeout):
    with pytest.raises(ValueError, match="timeout"):
        OperatorEpisodes(task="tweezer_pick", timeout=timeout)


# ------------------------------------------------------------------------- the node, over DDS
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.ros
def test_operator_coordinator_records_verdicts_time_outs_and_refusals(tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.node import Node
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    results = tmp_path / "episodes.jsonl"
    proc = subprocess.Popen(
        [str(BIN / "episode_coordinator"), "--ros-args", "-p", "source:=operator", "-p", "task:=tool_open_to",
         "-p", "episode_timeout:=3.0", "-p", f"results_path:={results}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    rclpy.init()
    node = Node("operator_probe")
    published: list[dict] = []
    node.create_subscription(
        String, "/dexhier/episode/result", lambda m: published.append(json.loads(m.data)), 10
    )
    names = ("start", "success", "failure", "stop", "reset")
    clients = {n: node.create_client(Trigger, f"/dexhier/episode/{n}") for n in names}

    def call(name: str) -> Trigger.Response:
        future = clients[name].call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=10)
        assert future.done(), name
        return future.result()

    try:
        # Every service and the result topic connected before the first episode: its clock is short.
        for name, client in clients.items():
            assert client.wait_for_service(timeout_sec=20), f"/dexhier/episode/{name} missing"
        t0 = time.monotonic()
        while node.count_publishers("/dexhier/episode/result") == 0 and time.monotonic() - t0 < 10:
            rclpy.spin_once(node, timeout_sec=0.1)
        refused = call("success")  # nothing running yet
        assert not refused.success and "no episode is running" in refused.message
        assert call("start").success
        assert not call("start").success  # one at a time
        assert not call("reset").success  # the scene cannot be reset mid-episode
        first = json.loads(call("success").message)
        assert (first["episode"], first["outcome"], first["task"]) == (1, "success", "tool_open_to")
        assert call("start").success
        assert json.loads(call("failure").message)["outcome"] == "failure"
        assert call("start").success
        t0 = time.monotonic()
        while time.monotonic() - t0 < 15 and len(published) < 3:  # left unmarked: times out after 3 s
            rclpy.spin_once(node, timeout_sec=0.1)
        assert call("reset").success
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=15)[0]
    logged = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["outcome"] for r in logged] == ["success", "failure", "timeout"], out
    assert published == logged
    assert "recorded as a time-out" in out


@pytest.mark.ros
def test_operator_source_refuses_self_started_episodes():
    pytest.importorskip("rclpy")
    proc = subprocess.run(
        [str(BIN / "episode_coordinator"), "--ros-args", "-p", "source:=operator", "-p", "episodes:=3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "episodes must be 0" in proc.stdout + proc.stderr
