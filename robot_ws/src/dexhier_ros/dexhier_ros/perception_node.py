"""The perception node (``perception``): point cloud → tool state, with the affordance encoder.

Subscribes ``/camera/points`` (PointCloud2, sensor-data QoS; a ``label`` field, when present, splits
tool and object) and ``/joint_states`` (the tool-mount pose follows by forward kinematics).
Publishes ``/dexhier/tool_state`` (JointState: ``tip_gap`` m, ``opening_angle`` rad, ``max_gap`` m,
then, when an object is seen, the affordance fields ``approach_opening``, ``contact_opening`` m,
``graspable`` probability and the object centre ``object_x``, ``object_y``, ``object_z`` in the
tool-mount frame, m; see :func:`tool_state_fields`) and ``/dexhier/tool_latent`` (Float32MultiArray, the 64-D
tool-state embedding). Unusable clouds (empty, NaN, too few tool points) publish nothing and log
their reason, at most once a second.

``cloud_frame``: ``base`` (the twin: the cloud is in the robot base frame, the mount pose comes from
``/joint_states``) or ``camera`` (a cell's wrist camera driver: the cloud is in the camera's optical
frame, and ``camera_in_mount`` is the hand-eye calibration, "x y z qw qx qy qz" in m of the optical
frame in the tool-mount frame; empty = the twin's wrist camera by design, from the cell model). A
camera on the hand moves with the mount, so this path needs no joint states.
"""

from __future__ import annotations

import mujoco
import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import JointState, PointCloud2
from std_msgs.msg import Float32MultiArray

from dexhier import vocabulary as V
from dexhier_ros import messages as M
from dexhier_ros.runtime import parameter, run_node
from perception.encoder import AffordanceEncoder, AffordanceEstimate
from perception.pointcloud2 import pointcloud2_to_points
from sim.cell import WRIST_CAMERA
from sim.kinematics import ToolMountKinematics


def tool_state_fields(est: AffordanceEstimate) -> tuple[list[str], list[float]]:
    """(names, values) of a valid estimate on ``/dexhier/tool_state``.

    The tool's fields always (``tip_gap``, ``opening_angle``, ``max_gap``), the object's only when it
    is in the cloud; consumers match them by name (the high level rebuilds the estimate from them).
    """
    names = [*V.TOOL_STATE_NAMES, V.TOOL_STATE_MAX_GAP]
    values = [est.tip_gap, est.opening_angle, est.max_gap]
    if est.object_valid:
        names += V.TOOL_STATE_OBJECT_NAMES
        values += [est.approach_opening, est.contact_opening, est.graspable_prob]
        values += [float(v) for v in np.asarray(est.object_center, float).reshape(3)]
    return names, [float(v) for v in values]


def parse_pose(text: str) -> np.ndarray:
    """ "x y z qw qx qy qz" (m; a quaternion, normalized here) -> (4, 4); ValueError if malformed."""
    try:
        values = np.array([float(v) for v in text.replace(",", " ").split()])
    except ValueError as err:
        raise ValueError(f"camera_in_mount {text!r}: not numbers") from err
    if values.shape != (7,) or not np.all(np.isfinite(values)) or np.linalg.norm(values[3:]) < 1e-6:
        raise ValueError(f"camera_in_mount {text!r}: expected 'x y z qw qx qy qz', a non-zero quaternion")
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, values[3:] / np.linalg.norm(values[3:]))
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot.reshape(3, 3), values[:3]
    return pose


class PerceptionNode(Node):
    def __init__(self) -> None:
        super().__init__("perception")
        checkpoint = parameter(self, "checkpoint", "checkpoints/affordance")
        self.encoder = AffordanceEncoder.load(checkpoint)
        self.kinematics = ToolMountKinematics()
        self.cloud_frame = parameter(self, "cloud_frame", "base")
        if self.cloud_frame not in ("base", "camera"):
            raise ValueError(f"parameter 'cloud_frame': {self.cloud_frame!r}, expected base or camera")
        calibration = parameter(self, "camera_in_mount", "")
        # encode() maps the cloud into the mount frame with the inverse of the pose it is given: for a
        # camera-frame cloud that pose is the mount's in the camera frame.
        self.mount_in_camera: np.ndarray | None = None
        if self.cloud_frame == "camera":
            camera = parse_pose(calibration) if calibration else self.kinematics.camera_in_mount(WRIST_CAMERA)
            self.mount_in_camera = np.linalg.inv(camera)
        self.joint_names: list[str] | None = None
        self.joint_positions: np.ndarray | None = None
        reliable = QoSProfile(depth=10)
        self.pub_state = self.create_publisher(JointState, V.TOPIC_TOOL_STATE, reliable)
        self.pub_latent = self.create_publisher(Float32MultiArray, "/dexhier/tool_latent", reliable)
        self.create_subscription(JointState, "/joint_states", self._on_joints, reliable)
        self.create_subscription(PointCloud2, "/camera/points", self._on_cloud, qos_profile_sensor_data)
        self.get_logger().info(f"affordance encoder loaded from {checkpoint}")

    def _on_joints(self, msg: JointState) -> None:
        if len(msg.position) == len(msg.name):
            self.joint_names, self.joint_positions = list(msg.name), np.asarray(msg.position, float)

    def _reject(self, reason: str) -> None:
        self.get_logger().warning(f"no tool state: {reason}", throttle_duration_sec=1.0)

    def _on_cloud(self, msg: PointCloud2) -> None:
        if self.mount_in_camera is None and self.joint_names is None:
            return self._reject("no joint_states yet (the tool pose comes from them)")
        try:
            points, labels = pointcloud2_to_points(msg)
            if self.mount_in_camera is not None:
                pose = self.mount_in_camera
            else:
                pose = self.kinematics.pose(self.joint_names, self.joint_positions)
        except ValueError as err:
            return self._reject(str(err))
        est = self.encoder.encode(points, labels, pose)
        if not est.valid:
            return self._reject(est.reason)
        stamp = M.from_time(msg.header.stamp)
        names, values = tool_state_fields(est)
        self.pub_state.publish(M.joint_state(names, np.array(values), np.zeros(len(values)), stamp))
        self.pub_latent.publish(Float32MultiArray(data=[float(v) for v in est.latent]))


def main(args: list[str] | None = None) -> None:
    run_node(PerceptionNode, args)


if __name__ == "__main__":
    main()
