"""The recorder node (``recorder``): teleop demonstrations from the ROS graph into an episode dataset.

Per episode it writes two things into the dataset at ``out`` (the format the trainers read):

* the episode (`dexhier.episode_journal.JournaledRecorder`: crash-safe, a ``kill -9`` loses at most
  ``flush_every`` steps): one step per ``1 / control_hz`` s of the node clock (sim time with the twin)
  with the keys of the twin loop (`dexhier.teleop.session`) except ``privileged/*``: joint positions
  and velocities, tool tip gap (``/dexhier/tool_state``; NaN while perception has none), the scene
  camera's colour / depth / pose, ``action`` = the latest command the safety supervisor forwarded
  (``/{arm,hand}_controller/joint_trajectory``), ``action/request`` = the latest request
  (``/dexhier/command/{arm,hand}``; both NaN until one arrived), the raw device request
  (``/dexhier/teleop/joy``; ``teleop/valid`` false and zeros when none is fresh) and ``safety/held``.
  A step whose inputs are missing or stale (joint states or images older than ``stale_after`` s) is
  skipped and counted (episode meta ``skipped_steps``): nothing made up is written.
* ``bags/episode_XXXXXX.mcap``: every message of the recorded topics as received (raw CDR bytes of
  ``raw=True`` subscriptions, exact), stamped with the receive time on the node clock; written as
  ``bags/.inflight-episode_XXXXXX.mcap`` and renamed when the episode is kept.
  Both are fsynced every ``sync_interval`` s (0.5) of wall time, by writes and a timer: a ``kill -9``
  loses about that much; the next start-up (`recover_dataset`) rewrites the bag into a valid MCAP.

Services (std_srvs/Trigger): ``/dexhier/recorder/{start,save,fail,discard,rerecord}``; save keeps
the episode as a success, fail as a failure, discard drops it, rerecord drops it and starts again
(without laying the scene out again: the twin has no "same seed" reset). With the twin, its
``/dexhier/sim/episode`` ends the episode too: task success → saved, its time limit → failed.
``episode_time`` s of recording end it as a failure; shutting the node down keeps the episode in
flight, marked ``incomplete``. Status on ``/dexhier/recorder/status`` (String, JSON: state, episode,
duration_s, rate_hz, steps, skipped_steps, disk_free_gb, bag_mb, saved) at 2 Hz wall time and on
every change. The loop rate is measured on the node clock; below ``min_rate_fraction`` (90 %) of
``control_hz`` the episode is marked ``rate_ok: false``. A disk error (full, read-only) is logged
once and ends the episode; the node stays up. At start-up the journals and in-flight bags a crash
left are recovered (`dexhier.dataset_review.recover_dataset`) and recording resumes in the same
dataset, after its last episode.

Known limitation: the dataset meta (joint names, limits, camera intrinsics) and the scene camera's
pose come from the twin model of ``task`` (``TwinEnv(render=False)``), which must be the cell's.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image, JointState, Joy
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dexhier import vocabulary as V
from dexhier.episode_journal import JOURNAL_PREFIX, DatasetLock, JournaledRecorder, next_index
from dexhier.episodes import BAGS_DIR, EpisodeWriter, episode_dirname
from dexhier.teleop.bag import RELIABLE_QOS, SENSOR_QOS, McapBagWriter
from dexhier_ros import messages as M
from dexhier_ros.runtime import parameter, run_node

CAMERA = "scene"
"""The graph's camera (docs/ARCHITECTURE.md: /camera/...): the twin's scene camera or the cell's
RGB-D camera."""
DEPTH_TOPIC = "/camera/depth/image_raw"
GROUPS = ("arm", "hand")
HELD_VERDICTS = frozenset({"held_stale", "held_estop", "rejected"})
DISK_ERROR = "disk error"


@dataclass(frozen=True)
class RecordedTopic:
    topic: str
    msg_class: type
    sensor: bool = False  # best effort (cameras), else reliable

    @property
    def msgtype(self) -> str:
        """e.g. ``sensor_msgs/msg/JointState``."""
        package = self.msg_class.__module__.split(".")[0]
        return f"{package}/msg/{self.msg_class.__name__}"


TOPICS: tuple[RecordedTopic, ...] = (
    RecordedTopic(V.TOPIC_JOINT_STATES, JointState),
    RecordedTopic(V.camera_topic(CAMERA), Image, sensor=True),
    RecordedTopic(DEPTH_TOPIC, Image, sensor=True),
    RecordedTopic("/camera/color/camera_info", CameraInfo, sensor=True),
    *(RecordedTopic(V.command_topic(g), JointTrajectory) for g in GROUPS),
    *(RecordedTopic(V.controller_topic(g), JointTrajectory) for g in GROUPS),
    RecordedTopic(V.TOPIC_TELEOP_JOY, Joy),
    RecordedTopic(V.TOPIC_TOOL_STATE, JointState),
    RecordedTopic("/dexhier/estop", Bool),
    RecordedTopic("/dexhier/safety/status", String),
)
"""What goes into each episode's bag: the teleop path from device to controllers, sensors and safety."""


@dataclass
class Latest:
    """The newest value of an input and its receive time on the node clock (s)."""

    value: Any
    time: float


@dataclass
class _Episode:
    """The episode in flight."""

    rec: JournaledRecorder
    bag: McapBagWriter | None
    start: float  # node time, s
    meta: dict[str, Any]
    periods: list[float] = field(default_factory=list)  # node-clock seconds between ticks
    last_tick: float | None = None
    skipped: int = 0
    skip_reasons: set[str] = field(default_factory=set)
    invalid: int = 0  # steps without a fresh device request
    twin_episode: int | None = None

    @property
    def index(self) -> int:
        return self.rec.index


def _first_point(msg: JointTrajectory, names: tuple[str, ...]) -> np.ndarray:
    """Positions of ``names`` (rad) in the trajectory's first point; NaN for joints it does not name."""
    if not msg.points or len(msg.points[0].positions) != len(msg.joint_names):
        raise M.MessageError("no usable first point")
    index = {n: i for i, n in enumerate(msg.joint_names)}
    q = msg.points[0].positions
    return np.array([q[index[n]] if n in index else np.nan for n in names], dtype=np.float64)


class RecorderNode(Node):
    def __init__(self) -> None:
        super().__init__("recorder")
        self.out = Path(parameter(self, "out", "out/teleop"))
        self.task = parameter(self, "task", "tweezer_pick")
        self.instruction = parameter(self, "instruction", "")  # "" = the twin's (or the task name)
        self.control_hz = parameter(self, "control_hz", 20.0)
        self.bag_enabled = parameter(self, "bag", True)
        self.device = parameter(self, "device", "")  # for the episode meta only
        self.flush_every = parameter(self, "flush_every", 20)  # steps per journal chunk
        # s: the journal and the bag reach the disk (fsynced) at least this often: what a kill -9 loses.
        self.sync_interval = parameter(self, "sync_interval", 0.5)
        self.episode_time = parameter(self, "episode_time", 60.0)  # s of node clock
        self.stale_after = parameter(self, "stale_after", 0.5)  # s: older inputs skip the step
        self.min_rate_fraction = parameter(self, "min_rate_fraction", 0.9)
        size = (parameter(self, "image_width", 64), parameter(self, "image_height", 64))
        if not (
            self.control_hz > 0 and self.episode_time > 0 and self.stale_after > 0 and self.flush_every >= 1
            and self.sync_interval > 0
        ):  # fmt: skip
            raise ValueError(
                "control_hz, episode_time, stale_after and sync_interval must be > 0 and flush_every >= 1"
            )
        self.dt = 1.0 / self.control_hz

        meta, self.camera_pose = self._model_meta(size)
        self.writer = EpisodeWriter(self.out, meta)  # ValueError if the dataset was made for another robot
        # Held for the node's lifetime: no other recorder or `dataset recover` touches our journal.
        self.lock = DatasetLock(self.out).acquire()
        self.names = tuple(meta["action_names"])
        self.n_arm = len(meta["arm_joints"])
        self.group_names = {"arm": self.names[: self.n_arm], "hand": self.names[self.n_arm :]}
        self.image_shape = (size[1], size[0])
        self._recover()

        self.latest: dict[str, Latest] = {}
        self.held_since = dict.fromkeys(GROUPS, -np.inf)  # node time of the last hold / reject verdict
        self.twin: dict[str, Any] | None = None  # the latest /dexhier/sim/episode
        self.ep: _Episode | None = None
        self.saved = 0
        self.decoders: dict[str, Callable[[Any, float], None]] = {
            V.TOPIC_JOINT_STATES: self._on_joint_state,
            V.camera_topic(CAMERA): lambda m, t: self._on_image(V.rgb_key(CAMERA), m, t),
            DEPTH_TOPIC: lambda m, t: self._on_image(V.depth_key(CAMERA), m, t),
            V.TOPIC_TELEOP_JOY: self._on_joy,
            V.TOPIC_TOOL_STATE: self._on_tool_state,
            "/dexhier/safety/status": self._on_safety_status,
            **{
                V.command_topic(g): (lambda m, t, g=g: self._on_trajectory("request", g, m, t))
                for g in GROUPS
            },
            **{
                V.controller_topic(g): (lambda m, t, g=g: self._on_trajectory("sent", g, m, t))
                for g in GROUPS
            },
        }
        reliable = QoSProfile(depth=10)
        for spec in TOPICS:
            qos = qos_profile_sensor_data if spec.sensor else reliable
            self.create_subscription(
                spec.msg_class, spec.topic, lambda raw, spec=spec: self._on_raw(spec, raw), qos, raw=True
            )
        self.create_subscription(String, V.TOPIC_SIM_EPISODE, self._on_twin_episode, M.EPISODE_QOS)
        self.pub_status = self.create_publisher(String, "/dexhier/recorder/status", reliable)
        for name, handler in (("start", self._srv_start), ("save", self._srv_end("saved")),
                              ("fail", self._srv_end("failed")), ("discard", self._srv_end("discarded")),
                              ("rerecord", self._srv_rerecord)):  # fmt: skip
            self.create_service(Trigger, f"/dexhier/recorder/{name}", handler)
        self.create_timer(self.dt, self._tick)
        # Wall clock: the operator sees the status even when the sim clock stops.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(0.5, self._publish_status, clock=steady)
        # Also on the wall clock: what was recorded reaches the disk even when messages stop coming.
        self.create_timer(min(0.25, self.sync_interval / 2), self._sync_due, clock=steady)
        self.get_logger().info(
            f"recorder ready: {self.out} (next episode {next_index(self.out)}), {self.control_hz:g} Hz, "
            f"bags {'on' if self.bag_enabled else 'off'}"
        )

    def _model_meta(self, size: tuple[int, int]) -> tuple[dict[str, Any], np.ndarray]:
        """Dataset meta and the scene camera's pose (4, 4) in the base frame, from the twin model."""
        from dexhier.collection import dataset_meta
        from sim.camera import camera_pose_matrix
        from sim.twin import TwinConfig, TwinEnv

        env = TwinEnv(
            TwinConfig(task=self.task, image_width=size[0], image_height=size[1], cameras=(CAMERA,),
                       render=False, points=False, control_hz=self.control_hz)
        )  # fmt: skip
        try:
            env.reset(0)  # the camera is fixed in the cell: any scene gives its pose
            return {**dataset_meta(env), "source": "teleop"}, camera_pose_matrix(env.data, CAMERA)
        finally:
            env.close()

    def _recover(self) -> None:
        from dexhier.dataset_review import recover_dataset

        for message in recover_dataset(self.out, take_lock=False):
            self.get_logger().warning(f"recovered: {message}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ inputs
    def _on_raw(self, spec: RecordedTopic, raw: bytes) -> None:
        now_ns = self.get_clock().now().nanoseconds
        ep = self.ep
        if ep is not None and ep.bag is not None:
            try:
                ep.bag.write(spec.topic, raw, now_ns)
            except OSError as err:
                self._disk_error(err)
        decode = self.decoders.get(spec.topic)
        if decode is not None:
            decode(deserialize_message(raw, spec.msg_class), now_ns * 1e-9)

    def _reject(self, topic: str, err: Exception) -> None:
        self.get_logger().warning(f"ignored {topic}: {err}", throttle_duration_sec=1.0)

    def _on_joint_state(self, msg: JointState, t: float) -> None:
        try:
            q = M.joint_positions(msg, self.names)
        except M.MessageError as err:
            return self._reject(V.TOPIC_JOINT_STATES, err)
        self.latest["joints"] = Latest((q, M.joint_velocities(msg, self.names)), t)

    def _on_image(self, key: str, msg: Image, t: float) -> None:
        try:
            image = M.image_array(msg)
        except M.MessageError as err:
            return self._reject(key, err)
        self.latest[key] = Latest(image, t)

    def _on_tool_state(self, msg: JointState, t: float) -> None:
        names = list(msg.name)
        if "tip_gap" in names and len(msg.position) == len(names):
            self.latest["tip_gap"] = Latest(float(msg.position[names.index("tip_gap")]), t)

    def _on_joy(self, msg: Joy, t: float) -> None:
        if len(msg.axes) < 7 or len(msg.buttons) < 1:
            return self._reject(V.TOPIC_TELEOP_JOY, ValueError("expected 7 axes and 1 button"))
        self.latest["joy"] = Latest(msg, t)

    def _on_trajectory(self, kind: str, group: str, msg: JointTrajectory, t: float) -> None:
        try:
            self.latest[f"{kind}/{group}"] = Latest(_first_point(msg, self.group_names[group]), t)
        except M.MessageError as err:
            self._reject(f"{kind} {group} trajectory", err)

    def _on_safety_status(self, msg: String, t: float) -> None:
        try:
            doc = json.loads(msg.data)
            if doc["verdict"] in HELD_VERDICTS and doc["controller"] in GROUPS:
                self.held_since[doc["controller"]] = t
        except (ValueError, TypeError, KeyError):
            pass  # the supervisor's own format; nothing to record beyond the bag

    def _on_twin_episode(self, msg: String) -> None:
        """The twin's episode status: learn which twin episode is recorded, end it with the twin's end."""
        try:
            doc = json.loads(msg.data)
            number, done, success = int(doc["episode"]), bool(doc["done"]), bool(doc["success"])
        except (ValueError, TypeError, KeyError) as err:
            return self._reject(V.TOPIC_SIM_EPISODE, err)
        self.twin = doc
        ep = self.ep
        if ep is None:
            return
        if not done and (ep.twin_episode is None or number > ep.twin_episode):
            ep.twin_episode = number
            ep.meta.update(seed=doc.get("seed"), object_width=doc.get("object_width"))
            if not self.instruction and doc.get("instruction"):
                ep.meta["instruction"] = doc["instruction"]
        elif done and number == ep.twin_episode:
            if success:
                self._finish("saved", "task success (twin)")
            else:
                self._finish("failed", "the twin's episode ended (time limit)")

    def _sync_due(self) -> None:
        """Flush the journal and fsync the bag when ``sync_interval`` s have passed since they last did."""
        ep = self.ep
        if ep is None:
            return
        try:
            ep.rec.flush_if_due()
            if ep.bag is not None:
                ep.bag.sync_if_due()
        except OSError as err:
            self._disk_error(err)

    # -------------------------------------------------------------------- steps
    def _fresh(self, key: str, now: float) -> Latest | None:
        latest = self.latest.get(key)
        return latest if latest is not None and now - latest.time <= self.stale_after else None

    def _step(self, now: float) -> tuple[dict[str, Any] | None, str]:
        """The step due at ``now``, or (None, why) when a required input is missing or stale."""
        joints = self._fresh("joints", now)
        if joints is None:
            return None, f"no joint state in the last {self.stale_after:g} s"
        images = {}
        for key in (V.rgb_key(CAMERA), V.depth_key(CAMERA)):
            image = self._fresh(key, now)
            if image is None:
                return None, f"no {key} image in the last {self.stale_after:g} s"
            if image.value.shape[:2] != self.image_shape:
                (h, w), (dh, dw) = image.value.shape[:2], self.image_shape
                return None, f"{key} is {w}x{h} pixels, the dataset's are {dw}x{dh}"
            images[key] = image.value
        q, dq = joints.value
        a = self.n_arm
        step: dict[str, Any] = {V.STEP_TIME: now, V.STEP_WALL_TIME: time.time(),
                                V.OBS_ARM_QPOS: q[:a], V.OBS_ARM_QVEL: dq[:a],
                                V.OBS_HAND_QPOS: q[a:], V.OBS_HAND_QVEL: dq[a:]}  # fmt: skip
        gap = self._fresh("tip_gap", now)
        step[V.OBS_TOOL_TIP_GAP] = np.array([gap.value if gap is not None else np.nan])
        step.update(images)
        step[V.camera_pose_key(CAMERA)] = self.camera_pose
        step[V.ACTION] = self._joined("sent")
        step[V.ACTION_REQUEST] = self._joined("request")
        # A device request counts for the step when it came within two control periods.
        joy = self.latest.get("joy")
        valid = joy is not None and now - joy.time <= 2 * self.dt + 1e-6
        axes = np.asarray(joy.value.axes[:7], dtype=np.float64) if valid else np.zeros(7)
        step[V.TELEOP_LINEAR], step[V.TELEOP_ANGULAR], step[V.TELEOP_GRIP] = (
            axes[:3],
            axes[3:6],
            float(axes[6]),
        )
        step[V.TELEOP_CLUTCH] = bool(valid and joy.value.buttons[0])
        step[V.TELEOP_VALID] = bool(valid)
        step[V.SAFETY_HELD] = any(self._held(g, now) for g in GROUPS)
        return step, ""

    def _joined(self, kind: str) -> np.ndarray:
        """Arm then hand joint targets of the latest ``kind`` trajectories; NaN for a group with none."""
        parts = []
        for g in GROUPS:
            latest = self.latest.get(f"{kind}/{g}")
            parts.append(latest.value if latest is not None else np.full(len(self.group_names[g]), np.nan))
        return np.concatenate(parts)

    def _held(self, group: str, now: float) -> bool:
        """No fresh forwarded command, or the newest one was a hold (stale, e-stop) or a rejection."""
        sent = self.latest.get(f"sent/{group}")
        if sent is None or now - sent.time > 2 * self.dt + 1e-6:
            return True
        return self.held_since[group] >= sent.time - 0.01  # the hold's status follows its command

    def _tick(self) -> None:
        ep = self.ep
        if ep is None:
            return
        now = self._now()
        if ep.last_tick is not None:
            ep.periods.append(now - ep.last_tick)
        ep.last_tick = now
        if now - ep.start >= self.episode_time:
            self._finish("failed", f"episode time limit ({self.episode_time:g} s)")
            return
        step, why = self._step(now)
        if step is None:
            ep.skipped += 1
            if why not in ep.skip_reasons:
                ep.skip_reasons.add(why)
                self.get_logger().warning(f"episode {ep.index}: skipping steps: {why}")
            return
        ep.invalid += not step[V.TELEOP_VALID]
        try:
            ep.rec.add_step(step)
        except OSError as err:
            self._disk_error(err)

    # ----------------------------------------------------------------- episodes
    def _start(self) -> _Episode:
        index = next_index(self.out)
        twin = self.twin if self.twin is not None and not self.twin.get("done") else None
        instruction = self.instruction or (twin or {}).get("instruction") or self.task
        meta = {"task": self.task, "instruction": instruction, "source": "teleop", "device": self.device,
                "control_hz": self.control_hz, "seed": (twin or {}).get("seed"),
                "object_width": (twin or {}).get("object_width")}  # fmt: skip
        rec = JournaledRecorder(
            self.writer, index, meta, flush_every=self.flush_every, flush_interval=self.sync_interval
        )
        bag = None
        if self.bag_enabled:
            try:
                bag = self._open_bag(index)
            except BaseException:
                rec.discard()
                raise
        ep = _Episode(rec, bag, self._now(), dict(meta))
        ep.twin_episode = int(twin["episode"]) if twin is not None else None
        self.ep = ep
        self.get_logger().info(f"episode {index}: recording ({instruction})")
        self._publish_status()
        return ep

    def _open_bag(self, index: int) -> McapBagWriter:
        directory = self.out / BAGS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        bag = McapBagWriter(
            directory / f"{JOURNAL_PREFIX}{episode_dirname(index)}.mcap", sync_interval=self.sync_interval
        )
        try:
            for spec in TOPICS:
                bag.add_topic(spec.topic, spec.msgtype, SENSOR_QOS if spec.sensor else RELIABLE_QOS)
        except BaseException:
            bag.close()
            bag.path.unlink(missing_ok=True)
            raise
        return bag

    def _finish(self, outcome: str, reason: str) -> tuple[str, bool]:
        """End the episode in flight: commit it (saved / failed / incomplete) or discard it.

        Returns (the one-line summary it logged, whether it succeeded). A disk error (OSError) is
        handled here: one error line, the journal keeps the flushed steps for recovery.
        """
        ep, self.ep = self.ep, None
        assert ep is not None
        # The first period includes the start; zero periods (two ticks on one clock value) carry no rate.
        periods = np.array([p for p in ep.periods[1:] if p > 0] or [self.dt])
        median_rate = float(1.0 / np.median(periods))
        mean_rate = float(len(periods) / periods.sum())  # so a few long stalls count too
        rate_ok = mean_rate >= self.min_rate_fraction * self.control_hz
        steps = ep.rec.num_steps
        keep = outcome != "discarded" and steps > 0
        bag = self._close_bag(ep, keep)
        try:
            if not keep:
                ep.rec.discard()
                outcome = "discarded"
            else:
                if not rate_ok:
                    self._report(
                        "warning",
                        f"episode {ep.index} ran at {mean_rate:.1f} Hz, below {self.min_rate_fraction:.0%} "
                        f"of {self.control_hz:g} Hz: marked rate_ok=false",
                    )
                meta = {**ep.meta, "end_reason": reason, "loop_rate_hz": mean_rate,
                        "loop_rate_median_hz": median_rate, "rate_ok": rate_ok,
                        "invalid_device_commands": ep.invalid, "incomplete": outcome == "incomplete",
                        "skipped_steps": ep.skipped, "twin_episode": ep.twin_episode,
                        "bag": str(bag.relative_to(self.out)) if bag is not None else None}  # fmt: skip
                ep.rec.commit(success=outcome == "saved", meta=meta)
                self.saved += 1
                if bag is not None:  # after the episode: a bag is never named final without its episode
                    self._name_bag(ep.index, bag)
        except OSError as err:  # the journal keeps every flushed step: nothing more is lost
            summary = (
                f"episode {ep.index}: {reason}; not committed ({err}): its journal keeps "
                f"{ep.rec.flushed_steps} steps: run `dexhier dataset recover {self.out}` or restart "
                "the recorder"
            )
            self._report("error", summary)
            self._publish_status()
            return summary, False
        summary = f"episode {ep.index}: {outcome} ({reason}), {steps} steps, {ep.skipped} skipped"
        self._report("error" if reason.startswith(DISK_ERROR) else "info", summary)
        self._publish_status()
        return summary, True

    def _report(self, level: str, message: str) -> None:
        """Log ``message``; after Ctrl-C (context shut down, no rosout) straight to the console."""
        if not self.context.ok():
            print(f"[{level.upper()}] [recorder]: {message}", file=sys.stderr, flush=True)
        elif level == "error":  # one call site per severity: rclpy loggers require it
            self.get_logger().error(message)
        elif level == "warning":
            self.get_logger().warning(message)
        else:
            self.get_logger().info(message)

    def _close_bag(self, ep: _Episode, keep: bool) -> Path | None:
        """Finish the episode's bag (``keep``: the name it will have, else delete it).

        A bag that cannot be finished (disk error) keeps its in-flight name and the episode is
        committed without it; `dexhier dataset recover` renames such bags ``.incomplete.mcap``.
        """
        bag, ep.bag = ep.bag, None
        if bag is None:
            return None
        try:
            bag.close()
            if not keep:
                bag.path.unlink(missing_ok=True)
                return None
        except OSError as err:
            self._report("error", f"episode {ep.index}: bag {bag.path.name} could not be finished ({err})")
            return None
        return bag.path.with_name(f"{episode_dirname(ep.index)}.mcap")

    def _name_bag(self, index: int, final: Path) -> None:
        inflight = final.with_name(f"{JOURNAL_PREFIX}{final.name}")
        try:
            inflight.replace(final)
        except OSError as err:
            self._report(
                "warning", f"episode {index} is saved but its bag is not ({err}); it stays {inflight}"
            )

    def _disk_error(self, err: OSError) -> None:
        """A write failed mid-episode: end the episode (keeping what can be kept), stay up."""
        ep = self.ep
        if ep is None:
            return
        self._finish("incomplete", f"{DISK_ERROR}: {err}")  # logs the one error line

    # ------------------------------------------------------------------ services
    def _srv_start(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.ep is not None:
            response.success, response.message = False, f"episode {self.ep.index} is recording"
            return response
        try:
            ep = self._start()
        except (OSError, ValueError) as err:
            self.get_logger().error(f"cannot start an episode: {err}")
            response.success, response.message = False, f"cannot start: {err}"
            return response
        response.success, response.message = True, f"episode {ep.index}: recording"
        return response

    def _srv_end(self, outcome: str) -> Callable[[Trigger.Request, Trigger.Response], Trigger.Response]:
        def serve(request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
            if self.ep is None:
                response.success, response.message = False, "no episode is recording"
                return response
            verb = {"saved": "save", "failed": "fail", "discarded": "discard"}[outcome]
            response.message, response.success = self._finish(outcome, f"operator: {verb}")
            return response

        return serve

    def _srv_rerecord(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.ep is not None:
            self._finish("discarded", "operator: rerecord")
        return self._srv_start(request, response)

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        ep = self.ep
        try:
            free = shutil.disk_usage(self.out).free / 1e9
        except OSError:
            free = None
        doc: dict[str, Any] = {"state": "idle" if ep is None else "recording", "episode": None,
                               "duration_s": 0.0, "rate_hz": None, "steps": 0, "skipped_steps": 0,
                               "disk_free_gb": free, "bag_mb": 0.0, "saved": self.saved}  # fmt: skip
        if ep is not None:
            recent = [p for p in ep.periods[-20:] if p > 0]
            doc.update(episode=ep.index, duration_s=max(0.0, self._now() - ep.start), steps=ep.rec.num_steps,
                       rate_hz=len(recent) / sum(recent) if recent else None, skipped_steps=ep.skipped,
                       bag_mb=ep.bag.nbytes / 1e6 if ep.bag is not None else 0.0)  # fmt: skip
        return doc

    def _publish_status(self) -> None:
        if self.context.ok():  # not while shutting down (close() ends the episode after Ctrl-C)
            self.pub_status.publish(String(data=json.dumps(self.status())))

    def close(self) -> None:
        """Shutting down mid-episode keeps what was recorded, marked incomplete (as QUIT in the twin loop)."""
        if self.ep is not None:
            self._finish("incomplete", "the recorder was shut down")
        self.lock.release()


def main(args: list[str] | None = None) -> None:
    def make() -> RecorderNode:
        try:
            return RecorderNode()
        except (ValueError, RuntimeError, OSError) as err:  # bad parameter, another robot's dataset, in use
            print(f"recorder: error: {err}", flush=True)
            raise SystemExit(2) from None

    run_node(make, args)


if __name__ == "__main__":
    main()
