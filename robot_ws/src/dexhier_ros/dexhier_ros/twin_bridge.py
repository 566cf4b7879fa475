"""The MuJoCo twin as a ROS 2 robot driver (node ``twin_bridge``).

Publishes what a real cell's drivers publish: ``/clock`` (the twin is the clock; every node runs
with ``use_sim_time``), ``/joint_states``, the scene camera's colour / depth (32FC1, m) /
camera_info, the wrist camera's colour image ``/wrist_camera/color/image_raw`` (same size and rate
as the scene colour image), and ``/camera/points`` from the ``points_camera`` (the wrist camera at
320x240 by default, with a ``label`` field from the twin's segmentation); takes
joint-trajectory-controller commands on ``/arm_controller/joint_trajectory`` and
``/hand_controller/joint_trajectory``, validated and interpolated like ros2_control's JTC (invalid
trajectories are rejected with one log line). Services: ``/dexhier/sim/reset`` (starts episode k
with seed ``seed + k``; the start-up scene before the first reset uses ``seed`` too, idle),
``/dexhier/sim/pause`` (SetBool).

Debug outputs for the privileged expert and the coordinator (never for learned policies):
``/dexhier/sim/state`` (Float64MultiArray: time, qpos, qvel) and ``/dexhier/sim/episode``
(String, JSON: episode number (0 = the idle start-up scene), seed, task, instruction, episode
time, clock, success, done); the state message starts with the episode time (s since reset), the
clock keeps running across resets. The one exception: a learned policy node may take the episode
*boundary* (episode number and its start clock) from ``/dexhier/sim/episode`` to drop its plans and
inputs of the previous episode; it reads nothing else there.
"""

from __future__ import annotations

import collections
import json
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from dexhier import vocabulary as V
from dexhier.safety import LogThrottle
from dexhier_ros import messages as M
from dexhier_ros.runtime import log_summary, parameter, run_node
from dexhier_ros.scheduling import apply_realtime_priority, default_scheduler
from dexhier_ros.sensors import SensorPublisher
from sim.cell import SCENE_CAMERA, WRIST_CAMERA
from sim.twin import TwinConfig, TwinEnv


class TrajectoryFollower:
    """Linear interpolation of accepted trajectories for one controller (positions only, JTC-like)."""

    def __init__(
        self, joints: tuple[str, ...], start: np.ndarray, limits: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        self.joints = joints
        self.limits = limits  # (lower, upper) rad: a goal outside them is rejected, as a JTC does
        self._hold = start.copy()
        self._t0 = 0.0
        self._times = np.zeros(0)
        self._points = np.zeros((0, len(joints)))

    def accept(self, msg: JointTrajectory, now: float, current: np.ndarray) -> None:
        """Replace the active trajectory (raises MessageError if invalid)."""
        times, points = M.parse_trajectory(msg, self.joints, *(self.limits or (None, None)))
        stamp = M.from_time(msg.header.stamp)
        if stamp != 0.0 and stamp + times[-1] < now:
            raise M.MessageError(f"trajectory ends in the past (stamp {stamp:.3f} s, now {now:.3f} s)")
        if stamp > now + 10.0:
            raise M.MessageError(f"trajectory starts {stamp - now:.1f} s in the future")
        self._hold = current.copy()
        self._t0 = now if stamp == 0.0 else stamp
        self._times, self._points = times, points

    def target(self, now: float) -> np.ndarray:
        if len(self._times) == 0:
            return self._hold
        t = now - self._t0
        times = np.concatenate([[0.0], self._times])
        points = np.vstack([self._hold, self._points])
        if t >= times[-1]:
            return points[-1]
        i = int(np.searchsorted(times, t, side="right")) - 1
        if i < 0:
            return points[0]
        a = (t - times[i]) / (times[i + 1] - times[i])
        return (1 - a) * points[i] + a * points[i + 1]


class TwinBridge(Node):
    def __init__(self) -> None:
        super().__init__("twin_bridge")
        # Before any worker thread starts: they inherit it (the sensor thread then steps down itself).
        apply_realtime_priority(self, parameter(self, "realtime_priority", 0))
        self.task = parameter(self, "task", "tweezer_pick")
        self.seed = parameter(self, "seed", 0)
        self.rtf = parameter(self, "real_time_factor", 1.0)
        self.camera_every = parameter(self, "camera_every", 2)
        self.video_dir = parameter(self, "video_dir", "")  # "" = no videos
        self.video_episodes = parameter(self, "video_episodes", 1)
        self.video = None
        size = (parameter(self, "image_width", 64), parameter(self, "image_height", 64))
        self.env = TwinEnv(
            TwinConfig(task=self.task, image_width=size[0], image_height=size[1], cameras=(SCENE_CAMERA,),
                       render=False, points=False)
        )  # fmt: skip
        self.image_size = size
        # The cloud comes from its own depth camera and size (perception wants a close, dense view).
        self.points_camera = parameter(self, "points_camera", "wrist")
        self.points_every = parameter(self, "points_every", 4)  # control steps per cloud (5 Hz)
        if self.camera_every < 1 or self.points_every < 1 or self.rtf <= 0:
            raise ValueError("camera_every and points_every must be >= 1 and real_time_factor > 0")
        self.points_size = (parameter(self, "points_width", 320), parameter(self, "points_height", 240))

        self.dt = 1.0 / self.env.config.control_hz
        self.names = self.env.action_spec.names
        self.arm_joints, self.hand_joints = self.env.robot.arm_joints, self.env.robot.hand_joints
        reliable = QoSProfile(depth=10)
        self.pub_clock = self.create_publisher(Clock, "/clock", reliable)
        self.pub_js = self.create_publisher(JointState, "/joint_states", reliable)
        self.pub_rgb = self.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data)
        self.pub_depth = self.create_publisher(Image, "/camera/depth/image_raw", qos_profile_sensor_data)
        self.pub_info = self.create_publisher(
            CameraInfo, "/camera/color/camera_info", qos_profile_sensor_data
        )
        self.pub_points = self.create_publisher(PointCloud2, "/camera/points", qos_profile_sensor_data)
        wrist_topic = V.camera_topic(WRIST_CAMERA)  # /wrist_camera/color/image_raw
        self.pub_wrist_rgb = self.create_publisher(Image, wrist_topic, qos_profile_sensor_data)
        self.pub_state = self.create_publisher(Float64MultiArray, "/dexhier/sim/state", reliable)
        self.pub_episode = self.create_publisher(String, V.TOPIC_SIM_EPISODE, M.EPISODE_QOS)
        self.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", self._on_arm, reliable)
        self.create_subscription(
            JointTrajectory, "/hand_controller/joint_trajectory", self._on_hand, reliable
        )
        self.create_service(Trigger, "/dexhier/sim/reset", self._on_reset)
        self.create_service(SetBool, "/dexhier/sim/pause", self._on_pause)
        self.paused = False
        self.reject_log = LogThrottle()
        self.tick_times: collections.deque[float] = collections.deque(maxlen=100_000)  # wall s of each tick
        self.started = 0  # episodes started through /dexhier/sim/reset
        self.clock_offset = 0.0  # /clock stays monotonic across resets (the twin's time restarts at 0)
        self.sensors = SensorPublisher(
            (self.pub_rgb, self.pub_depth, self.pub_info, self.pub_points),
            size,
            self.points_camera,
            self.points_size,
            wrist_rgb=self.pub_wrist_rgb,
        )
        self.sensors.start()
        self.sensor_error_logged = False
        self._reset(self.seed)
        self.create_timer(self.dt / max(self.rtf, 1e-3), self._tick)
        self.get_logger().info(
            f"twin ready: task {self.task}, {1 / self.dt:g} Hz, real-time factor {self.rtf:g}"
        )

    # ---------------------------------------------------------------- commands
    def _current(self, joints: tuple[str, ...]) -> np.ndarray:
        return np.array([self.command[self.names.index(j)] for j in joints])

    def _accept(self, follower: TrajectoryFollower, msg: JointTrajectory, what: str) -> None:
        try:
            follower.accept(msg, self._now(), self._current(follower.joints))
        except M.MessageError as err:
            # Throttled per controller and reason, with counts: a flood must not flood the log.
            reason = f"{what}:{str(err).split(':')[0].split(' ')[0]}"
            text = f"rejected {what} trajectory: {str(err)[:300]}"
            if line := self.reject_log.message(reason, text, time.monotonic()):
                self.get_logger().warning(line)

    def _on_arm(self, msg: JointTrajectory) -> None:
        self._accept(self.arm, msg, "arm")

    def _on_hand(self, msg: JointTrajectory) -> None:
        self._accept(self.hand, msg, "hand")

    # ---------------------------------------------------------------- episodes
    def _close_video(self) -> None:
        if self.video is not None:
            self.video.close()
            self.get_logger().info(f"wrote {self.video.path} ({self.video.frames} frames)")
            self.video = None

    def _video_frame(self) -> None:
        if self.video is not None:
            with default_scheduler():  # recording is bulk work (and starts GL threads)
                views = [self.env.render(camera, 320, 240) for camera in ("scene", "wrist")]
            self.video.append(np.concatenate(views, axis=1))

    def _reset(self, seed: int) -> None:
        self._close_video()
        if hasattr(self, "obs"):
            self.clock_offset += float(self.env.data.time) + self.dt
        self.current_seed = seed
        with default_scheduler():  # a new scene: bulk work
            self.obs = self.env.reset(seed)
        q = np.concatenate([self.obs[V.OBS_ARM_QPOS], self.obs[V.OBS_HAND_QPOS]])
        self.command = q.copy()
        spec, n = self.env.action_spec, len(self.arm_joints)
        self.arm = TrajectoryFollower(self.arm_joints, q[:n], (spec.lower[:n], spec.upper[:n]))
        self.hand = TrajectoryFollower(self.hand_joints, q[n:], (spec.lower[n:], spec.upper[n:]))
        self.done, self.success, self.steps = False, False, 0
        # The start-up scene is idle; the recorded episodes are the first ones started by a reset.
        if self.video_dir and 1 <= self.started <= self.video_episodes:
            from sim.video import VideoWriter

            path = f"{self.video_dir}/{self.task}_seed{seed}.mp4"
            self.video = VideoWriter(path, fps=1.0 / self.dt)
            self._video_frame()
        self._publish(camera=True, cloud=True)
        self._publish_episode()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        seed = self.seed + self.started
        self.started += 1
        self._reset(seed)
        response.success, response.message = True, json.dumps({"episode": self.started, "seed": seed})
        return response

    def _on_pause(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.paused = bool(request.data)
        response.success, response.message = True, "paused" if self.paused else "running"
        return response

    def _publish_episode(self) -> None:
        inst = self.env.instance
        doc = {
            "episode": self.started, "seed": self.current_seed, "task": inst.task,
            "instruction": inst.instruction,
            "time": float(self.env.data.time), "clock": self._now(), "steps": self.steps,
            "success": self.success, "done": self.done, "object_width": inst.object.width,
        }  # fmt: skip
        self.pub_episode.publish(String(data=json.dumps(doc)))

    # -------------------------------------------------------------------- loop
    def _now(self) -> float:
        """ROS time of the twin (s): episode time plus the length of the earlier episodes."""
        return self.clock_offset + float(self.env.data.time)

    def _tick(self) -> None:
        if self.paused or not rclpy.ok():
            return
        if self.sensors.error and not self.sensor_error_logged:
            self.get_logger().error(f"sensor thread stopped: {self.sensors.error}")
            self.sensor_error_logged = True
        t = self._now()
        self.command = np.concatenate([self.arm.target(t + self.dt), self.hand.target(t + self.dt)])
        self.obs, _, terminated, truncated, info = self.env.step(self.command)
        self.steps += 1
        if not self.done:
            self._video_frame()
        if not self.done and (terminated or truncated):
            self.done, self.success = True, bool(info["success"])
            self._close_video()
            self._publish_episode()
        self._publish(camera=self.steps % self.camera_every == 0, cloud=self.steps % self.points_every == 0)
        self.tick_times.append(time.monotonic())

    def close(self) -> None:
        if len(self.tick_times) > 2:
            period = 1000 * self.dt / self.rtf
            p50, p99 = np.quantile(np.abs(1000 * np.diff(self.tick_times) - period), [0.5, 0.99])
            text = (f"{len(self.tick_times)} control ticks; state published every {period:g} ms, jitter "
                    f"p50 {p50:.2f} / p99 {p99:.2f} ms (wall, across pauses and resets)")  # fmt: skip
            log_summary(self, text)
        self._close_video()
        self.sensors.stop()
        self.env.close()

    def _publish(self, camera: bool, cloud: bool = True) -> None:
        d, now = self.env.data, self._now()
        clock = Clock()
        clock.clock = M.to_time(now)
        self.pub_clock.publish(clock)
        pos = np.concatenate([self.obs[V.OBS_ARM_QPOS], self.obs[V.OBS_HAND_QPOS]])
        vel = np.concatenate([self.obs[V.OBS_ARM_QVEL], self.obs[V.OBS_HAND_QVEL]])
        self.pub_js.publish(M.joint_state(self.names, pos, vel, now))
        state = Float64MultiArray()
        state.data = [float(d.time), *d.qpos.tolist(), *d.qvel.tolist()]  # episode time, qpos, qvel
        self.pub_state.publish(state)
        if camera or cloud:  # rendered and published by the sensor thread, off this control tick
            self.sensors.submit(self.env.model, d, now, camera, cloud)


def main(args: list[str] | None = None) -> None:
    # The sensor thread's Python work holds the GIL; a 0.5 ms switch interval (not 5) lets the control
    # tick take it back promptly.
    sys.setswitchinterval(0.0005)
    run_node(TwinBridge, args)


if __name__ == "__main__":
    main()
