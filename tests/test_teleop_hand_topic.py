"""Hand keypoints reach the twin teleop loop's handpose device over real DDS (loopback)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dexhier.teleop.devices import EventMerge, HandPoseDevice, ReplayDevice, keypoints_from_poses

pytestmark = pytest.mark.ros


def test_keypoints_topic_feeds_the_device_and_rejects_malformed_messages():
    import rclpy
    from geometry_msgs.msg import Pose, PoseArray
    from rclpy.qos import qos_profile_sensor_data

    from dexhier.teleop.hand_topic import TOPIC, HandKeypointTopic

    device = HandPoseDevice()
    topic = HandKeypointTopic(device)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("test_keypoint_publisher", context=ctx)
    try:
        pub = node.create_publisher(PoseArray, TOPIC, qos_profile_sensor_data)
        msg = PoseArray()
        for i in range(21):
            pose = Pose()
            pose.position.x, pose.position.y, pose.position.z = 0.01 * i, -0.002 * i, 0.05
            msg.poses.append(pose)
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            pub.publish(msg)
            time.sleep(0.05)
            got = device.poll(0.0).hand_keypoints
        assert got is not None, "no keypoints arrived"
        np.testing.assert_allclose(got[:, 0], 0.01 * np.arange(21))
        np.testing.assert_allclose(got[:, 2], 0.05)
        short = PoseArray()
        short.poses = list(msg.poses[:5])
        deadline = time.monotonic() + 5
        while topic.rejected == 0 and time.monotonic() < deadline:
            pub.publish(short)
            time.sleep(0.05)
        assert topic.rejected >= 1
    finally:
        topic.close()
        node.destroy_node()
        ctx.try_shutdown()


def test_keypoints_from_poses_checks_the_count():
    assert keypoints_from_poses([(0.0, 0.0, 0.0)] * 21).shape == (21, 3)
    with pytest.raises(ValueError, match="21 poses"):
        keypoints_from_poses([(0.0, 0.0, 0.0)] * 20)


def test_event_merge_adds_the_second_devices_events():
    motion = ReplayDevice.from_records(
        [{"t": 0.0, "linear": [0.5, 0, 0], "clutch": True, "events": ["start"]}]
    )
    keys = ReplayDevice.from_records([{"t": 0.0, "linear": [-1, 0, 0], "events": ["estop"]}])
    c = EventMerge(motion, keys).poll(0.0)
    assert [e.value for e in c.events] == ["start", "estop"]
    assert c.linear[0] == 0.5 and c.clutch  # motion only from the first device
