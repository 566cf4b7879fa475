"""The episode coordinator node (``episode_coordinator``): starts, stops and records episodes.

Services ``/dexhier/episode/{start,stop,reset}`` (Trigger). ``start`` resets the twin
(``/dexhier/sim/reset``, the next seed) and waits for the episode to end (success or time limit,
reported by the twin on ``/dexhier/sim/episode``); each result is published on
``/dexhier/episode/result`` (String, JSON) and appended to ``results_path`` (JSON lines). With
``episodes > 0`` it runs that many episodes by itself, prints the summary and exits, which ends
the launch when the node is ``required``; the first starts once every ``ready_topics`` topic has a
publisher (the policy and what it relies on are up), or after ``ready_timeout``.

``source:=operator`` is for a real cell, where nothing reports success: ``start`` begins an episode
and returns at once, the operator ends it with ``/dexhier/episode/success`` or
``/dexhier/episode/failure`` (Trigger), ``stop`` aborts it, and an episode left unmarked for
``episode_timeout`` s ends as a time-out (:class:`dexhier.operator_episodes.OperatorEpisodes`).
``reset`` only answers that the operator resets the scene. Results go to the same topic and log.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import String
from std_srvs.srv import Trigger

from dexhier.operator_episodes import EpisodeStateError, OperatorEpisodes
from dexhier.safety import LogThrottle
from dexhier_ros.messages import EPISODE_QOS, MessageError, parse_episode
from dexhier_ros.runtime import parameter, report_exception

SOURCES = ("twin", "operator")


class EpisodeCoordinator(Node):
    def __init__(self) -> None:
        super().__init__("episode_coordinator")
        self.episodes = parameter(self, "episodes", 0)
        self.results_path = Path(parameter(self, "results_path", "out/ros/episodes.jsonl"))
        self.timeout = parameter(self, "episode_timeout", 60.0)  # wall seconds, a guard only
        # Comma-separated topics that need a publisher before the first of `episodes` starts: the
        # nodes the policy relies on (some load torch models for many seconds) are up by then.
        self.ready_topics = [t.strip() for t in parameter(self, "ready_topics", "").split(",") if t.strip()]
        self.ready_timeout = parameter(self, "ready_timeout", 60.0)  # wall seconds
        self.group = ReentrantCallbackGroup()
        self.reset_client = self.create_client(Trigger, "/dexhier/sim/reset", callback_group=self.group)
        self.pub_result = self.create_publisher(String, "/dexhier/episode/result", QoSProfile(depth=10))
        self.source = parameter(self, "source", "twin")
        task = parameter(self, "task", "tweezer_pick")  # the operator's episodes (the twin names its own)
        if self.source not in SOURCES:
            raise ValueError(f"parameter 'source': {self.source!r}, expected one of {', '.join(SOURCES)}")
        services = {"start": self._srv_start, "stop": self._srv_stop, "reset": self._srv_reset}
        if self.source == "operator":
            if self.episodes != 0:
                raise ValueError("source operator: the operator starts each episode "
                                 "(/dexhier/episode/start); episodes must be 0")  # fmt: skip
            self.operator = OperatorEpisodes(task, self.timeout)
            # The services and the time-out timer run on the executor's threads: one at a time here.
            self.operator_lock = threading.Lock()
            services = {"start": self._op_start, "stop": self._op_stop, "reset": self._op_reset,
                        "success": lambda req, res: self._op_mark(True, res),
                        "failure": lambda req, res: self._op_mark(False, res)}  # fmt: skip
            self.create_timer(0.5, self._op_expire, callback_group=self.group)
        else:
            self.create_subscription(String, "/dexhier/sim/episode", self._on_episode, EPISODE_QOS,
                                     callback_group=self.group)  # fmt: skip
        for name, cb in services.items():
            self.create_service(Trigger, f"/dexhier/episode/{name}", cb, callback_group=self.group)
        self.episode_log = LogThrottle()
        self.status: dict | None = None
        self.active_seed: int | None = None
        self.results: list[dict] = []
        self.finished = False
        self.failed = False

    # ----------------------------------------------------------------- twin status
    def _on_episode(self, msg: String) -> None:
        try:
            doc = parse_episode(msg.data, ("episode", "seed", "done"))
        except MessageError as err:
            text = f"ignored malformed /dexhier/sim/episode message: {err}"
            if line := self.episode_log.message("malformed", text, time.monotonic()):
                self.get_logger().warning(line)
            return
        self.status = doc

    def _reset_twin(self) -> tuple[int, int]:
        if not self.reset_client.wait_for_service(timeout_sec=10.0):
            raise RuntimeError("/dexhier/sim/reset is not available")
        future = self.reset_client.call_async(Trigger.Request())
        t0 = time.monotonic()
        while not future.done():
            if time.monotonic() - t0 > 10.0:
                raise RuntimeError("/dexhier/sim/reset did not answer")
            time.sleep(0.005)
        doc = json.loads(future.result().message)
        return int(doc["episode"]), int(doc["seed"])

    def run_episode(self) -> dict:
        """Reset the twin and wait until its episode is done; returns the result record."""
        self.status = None
        episode, seed = self._reset_twin()
        self.active_seed = seed
        t0 = time.monotonic()
        while True:
            st = self.status
            if st is not None and st.get("episode") == episode and st["done"]:
                break
            if time.monotonic() - t0 > self.timeout or self.active_seed is None:
                st = {"seed": seed, "success": False, "done": True, "aborted": True}
                break
            time.sleep(0.01)
        result = {"seed": seed, "success": bool(st.get("success")), "sim_time": st.get("time"),
                  "steps": st.get("steps"), "task": st.get("task"), "object_width": st.get("object_width"),
                  "wall_time": time.monotonic() - t0, "aborted": bool(st.get("aborted", False))}  # fmt: skip
        self._record(result)
        self.get_logger().info(
            f"episode seed {seed}: {'success' if result['success'] else 'failure'} "
            f"({result['sim_time'] or float('nan'):.2f} s simulated, {result['wall_time']:.1f} s wall)"
        )
        self.active_seed = None
        return result

    def _record(self, result: dict) -> None:
        """Keep, log (JSON lines) and publish one episode result."""
        self.results.append(result)
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        with self.results_path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        self.pub_result.publish(String(data=json.dumps(result)))

    # ------------------------------------------------------------ operator (cell)
    def _now(self) -> float:
        return time.monotonic()

    def _op_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            with self.operator_lock:
                episode = self.operator.start(self._now())
        except EpisodeStateError as err:
            response.success, response.message = False, str(err)
            return response
        self.get_logger().info(f"episode {episode} started: mark it on /dexhier/episode/success or /failure")
        response.success, response.message = True, json.dumps({"episode": episode})
        return response

    def _op_end(self, result: dict | None, response: Trigger.Response) -> Trigger.Response:
        if result is None:
            response.success, response.message = True, "no episode running"
            return response
        self._record(result)  # under the operator lock: results keep their order
        self.get_logger().info(
            f"episode {result['episode']}: {result['outcome']} ({result['wall_time']:.1f} s)"
        )
        response.success, response.message = True, json.dumps(result)
        return response

    def _op_mark(self, success: bool, response: Trigger.Response) -> Trigger.Response:
        with self.operator_lock:
            try:
                result = self.operator.mark(success, self._now())
            except EpisodeStateError as err:
                response.success, response.message = False, str(err)
                return response
            return self._op_end(result, response)

    def _op_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.operator_lock:
            return self._op_end(self.operator.stop(self._now()), response)

    def _op_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.operator_lock:
            running, episode = self.operator.running, self.operator.episode
        response.success = not running
        response.message = (
            f"episode {episode} is running: mark or stop it first"
            if running
            else "the operator resets the cell's scene; nothing to do here"
        )
        return response

    def _op_expire(self) -> None:
        with self.operator_lock:
            result = self.operator.expire(self._now())
            if result is None:
                return
            self._record(result)
        self.get_logger().warning(
            f"episode {result['episode']}: no verdict after {self.timeout:g} s, recorded as a time-out"
        )

    # -------------------------------------------------------------------- services
    def _srv_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.active_seed is not None:
            response.success, response.message = False, f"episode {self.active_seed} is running"
            return response
        result = self.run_episode()
        response.success, response.message = True, json.dumps(result)
        return response

    def _srv_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        running = self.active_seed is not None
        self.active_seed = None
        response.success, response.message = True, "stopped" if running else "no episode running"
        return response

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        episode, seed = self._reset_twin()
        response.success, response.message = True, json.dumps({"episode": episode, "seed": seed})
        return response

    def wait_until_ready(self) -> None:
        """Wait (wall clock, up to ``ready_timeout``) until every ``ready_topics`` topic has a publisher."""
        t0 = time.monotonic()
        missing = self.ready_topics
        while missing and time.monotonic() - t0 < self.ready_timeout:
            missing = [t for t in self.ready_topics if self.count_publishers(t) == 0]
            time.sleep(0.1)
        if missing:
            late = ", ".join(missing)
            self.get_logger().error(f"no publisher on {late} after {self.ready_timeout:g} s: starting anyway")
        elif self.ready_topics:
            self.get_logger().info(f"graph ready after {time.monotonic() - t0:.1f} s")

    def run_all(self) -> None:
        try:
            self.wait_until_ready()
            for _ in range(self.episodes):
                self.run_episode()
        except Exception as err:  # the launch must end (and say why), never hang
            self.get_logger().error(f"stopping: {type(err).__name__}: {err}")
            self.failed = True
            self.finished = True
            return
        ok = sum(r["success"] for r in self.results)
        summary = {"episodes": len(self.results), "successes": ok,
                   "success_rate": ok / max(1, len(self.results))}  # fmt: skip
        self.get_logger().info(f"summary: {json.dumps(summary)}")
        print(f"SUMMARY {json.dumps(summary)}", flush=True)
        self.finished = True


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = EpisodeCoordinator()
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    try:
        if node.episodes > 0:
            import threading

            runner = threading.Thread(target=node.run_all, daemon=True)
            runner.start()
            while rclpy.ok() and not node.finished:
                executor.spin_once(timeout_sec=0.05)
        else:
            while rclpy.ok():
                try:
                    executor.spin_once(timeout_sec=0.1)
                except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
                    raise
                except Exception as err:  # no message may end the coordinator (and with it the launch)
                    if not rclpy.ok():
                        raise
                    report_exception(node, err)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        failed = node.failed
        node.destroy_node()
        rclpy.try_shutdown()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
