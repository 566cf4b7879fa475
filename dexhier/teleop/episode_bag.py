"""One MCAP file per teleop episode with the topics the ROS graph carries, written from the twin loop.

The file is written as ``bags/.inflight-episode_000007.mcap`` and renamed to
``bags/episode_000007.mcap`` when the episode is saved, so a finished bag always has its footer.
The writer ends its chunk and fsyncs every 0.5 s (`McapBagWriter` ``sync_interval``), so a crash
loses at most about that much. A bag left by a crash keeps its in-flight name; ``dexhier dataset
recover`` rewrites it into a valid, indexed MCAP, ``episode_000007.incomplete.mcap``, which the
recovered episode's meta names.

Topics (docs/ARCHITECTURE.md, "ROS 2 graph"): ``/joint_states``, the camera images,
``/dexhier/teleop/joy`` (the raw
device request), ``/dexhier/command/{arm,hand}`` (the joint request) and
``/{arm,hand}_controller/joint_trajectory`` (what the supervisor forwarded). Message times are the
twin's clock, the time the messages would carry on the graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from dexhier_ros import messages as M

from dexhier import vocabulary as V
from dexhier.episode_journal import JOURNAL_PREFIX
from dexhier.teleop.bag import RELIABLE_QOS, SENSOR_QOS, McapBagWriter
from dexhier.teleop.commands import DeviceCommand


class EpisodeBag:
    """The MCAP bag of one episode, in ``directory`` under ``name`` (``episode_000007``)."""

    def __init__(
        self, directory: Path, name: str, joint_names: Sequence[str], cameras: Sequence[str], n_arm: int = 6
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.final = directory / f"{name}.mcap"
        self.path = directory / f"{JOURNAL_PREFIX}{name}.mcap"
        self.names = list(joint_names)
        self.n_arm = n_arm
        self.writer = McapBagWriter(self.path)
        self.writer.add_topic(V.TOPIC_JOINT_STATES, "sensor_msgs/msg/JointState", RELIABLE_QOS)
        self.writer.add_topic(V.TOPIC_TELEOP_JOY, "sensor_msgs/msg/Joy", RELIABLE_QOS)
        for cam in cameras:
            self.writer.add_topic(V.camera_topic(cam), "sensor_msgs/msg/Image", SENSOR_QOS)
        for group in ("arm", "hand"):
            self.writer.add_topic(V.command_topic(group), "trajectory_msgs/msg/JointTrajectory", RELIABLE_QOS)
            self.writer.add_topic(
                V.controller_topic(group), "trajectory_msgs/msg/JointTrajectory", RELIABLE_QOS
            )

    @property
    def nbytes(self) -> int:
        return self.writer.nbytes

    def write_step(
        self,
        t: float,
        obs: dict[str, np.ndarray],
        cmd: DeviceCommand,
        request: np.ndarray,
        sent: np.ndarray,
        cameras: Sequence[str],
    ) -> None:
        """Write one control step at twin time ``t`` (s)."""
        ns = round(t * 1e9)
        q = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
        dq = np.concatenate([obs[V.OBS_ARM_QVEL], obs[V.OBS_HAND_QVEL]])
        self.writer.write_message(V.TOPIC_JOINT_STATES, M.joint_state(self.names, q, dq, t), ns)
        for cam in cameras:
            frame = V.FRAME_SCENE_CAMERA if cam == "scene" else V.FRAME_WRIST_CAMERA
            self.writer.write_message(V.camera_topic(cam), M.image(obs[V.rgb_key(cam)], t, frame), ns)
        self.writer.write_message(V.TOPIC_TELEOP_JOY, M.joy(cmd.axes(), [int(bool(cmd.clutch))], t), ns)
        a = self.n_arm
        for group, sl in (("arm", slice(0, a)), ("hand", slice(a, None))):
            names = self.names[sl]
            if np.all(np.isfinite(request[sl])):  # an ignored device command makes no request
                self.writer.write_message(V.command_topic(group), _stamped(names, request[sl], t), ns)
            self.writer.write_message(V.controller_topic(group), _stamped(names, sent[sl], t), ns)

    def save(self) -> Path:
        """Close the file and give it its final name; returns it."""
        self.writer.close()
        self.path.replace(self.final)
        return self.final

    def discard(self) -> None:
        self.close_quietly()
        self.path.unlink(missing_ok=True)

    def close_quietly(self) -> None:
        """Close the file, ignoring disk errors: the caller is already handling one."""
        with contextlib.suppress(OSError):
            self.writer.close()


def _stamped(names: Sequence[str], q: np.ndarray, t: float):
    msg = M.trajectory(names, q[None, :], [0.0])
    msg.header.stamp = M.to_time(t)
    return msg
