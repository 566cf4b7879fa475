"""Hand keypoints from the ROS topic, for the plain twin teleop loop (``dexhier teleop --device handpose``).

A small rclpy node in its own context subscribes ``/dexhier/teleop/hand_keypoints``
(``geometry_msgs/PoseArray``: 21 poses whose positions are the keypoints in the wrist frame, m,
MediaPipe order) and feeds a `HandPoseDevice` from an executor thread. Discovery follows the
environment (``ROS_DOMAIN_ID``, ``ROS_AUTOMATIC_DISCOVERY_RANGE``) as every dexhier node does.
"""

from __future__ import annotations

import contextlib
import threading

from dexhier.teleop.devices import HandPoseDevice, keypoints_from_poses

TOPIC = "/dexhier/teleop/hand_keypoints"


class HandKeypointTopic:
    """Subscribes ``topic`` and feeds ``device``; `close` stops the thread and the context."""

    def __init__(self, device: HandPoseDevice, topic: str = TOPIC) -> None:
        import rclpy
        from geometry_msgs.msg import PoseArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data

        self.device = device
        self.rejected = 0
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node("teleop_hand_keypoints", context=self._context)
        self._node.create_subscription(PoseArray, topic, self._on_msg, qos_profile_sensor_data)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name="hand-keypoints", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):  # `close` shut the context down
            self._executor.spin()

    def _on_msg(self, msg) -> None:
        try:
            k = keypoints_from_poses([(p.position.x, p.position.y, p.position.z) for p in msg.poses])
        except ValueError as err:
            self.rejected += 1
            self._node.get_logger().warning(f"ignored hand keypoints: {err}", throttle_duration_sec=1.0)
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.device.feed(k, stamp)

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        if self._context.ok():
            self._context.try_shutdown()
        self._thread.join(timeout=2.0)
