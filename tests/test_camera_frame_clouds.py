"""Perception on a cell's wrist camera: clouds in the camera's optical frame.

A real RGB-D driver publishes its cloud in the camera frame. The perception node then maps the cloud
into the tool-mount frame with the hand-eye calibration (``camera_in_mount``; by default the twin's
wrist camera as designed, from the cell model). Such a cloud has no segmentation labels either;
without them the tip gap is far off (14.9 mm MAE on twin clouds, docs/benchmarks.md), which is not
tested here as working.
"""

from __future__ import annotations

import numpy as np
import pytest

from dexhier import vocabulary as V
from perception.encoder import AffordanceEncoder
from sim.cell import WRIST_CAMERA
from sim.kinematics import ToolMountKinematics
from sim.twin import TwinConfig, TwinEnv

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def wrist_cloud():
    """A tweezer_pick wrist cloud (base frame, labelled), the mount pose and the twin's tip gap."""
    env = TwinEnv(TwinConfig(task="tweezer_pick", cameras=(WRIST_CAMERA,), points_camera=WRIST_CAMERA,
                             image_width=160, image_height=120))  # fmt: skip
    obs = env.reset(3)
    out = obs[V.OBS_POINTS], obs[V.OBS_POINTS_LABEL], env.tool_mount_pose(), env.tip_gap()
    env.close()
    return out


def test_the_camera_sits_rigidly_on_the_hand():
    kin = ToolMountKinematics()
    first = kin.camera_in_mount(WRIST_CAMERA)
    kin.pose(list(kin.robot.arm_joints), np.full(len(kin.robot.arm_joints), 0.4))
    assert np.allclose(kin.camera_in_mount(WRIST_CAMERA), first, atol=1e-9)
    assert np.allclose(first[:3, :3] @ first[:3, :3].T, np.eye(3), atol=1e-9)
    with pytest.raises(KeyError, match="no camera 'palm_cam'.*'wrist'"):
        kin.camera_in_mount("palm_cam")


def test_a_camera_frame_cloud_gives_the_base_frame_estimate(wrist_cloud):
    points, labels, mount, gap = wrist_cloud
    encoder = AffordanceEncoder.load("checkpoints/affordance")
    camera_in_mount = ToolMountKinematics().camera_in_mount(WRIST_CAMERA)
    camera_in_base = mount @ camera_in_mount
    in_camera = (np.linalg.inv(camera_in_base) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    # The base-frame points are not where the camera sees them from: the check below can fail.
    assert np.abs(in_camera - points).max() > 0.1
    reference = encoder.encode(points, labels, mount)
    from_camera = encoder.encode(in_camera, labels, np.linalg.inv(camera_in_mount))
    assert reference.valid and from_camera.valid
    assert from_camera.tip_gap == pytest.approx(reference.tip_gap, abs=1e-4)
    assert abs(reference.tip_gap - gap) < 0.0015


def test_hand_eye_calibration_strings_are_checked():
    pytest.importorskip("rclpy")
    from dexhier_ros.perception_node import parse_pose

    pose = parse_pose("0.1 0 0.2  0 0 0 1")  # half a turn about z (qw = 0, qz = 1)
    assert np.allclose(pose[:3, 3], [0.1, 0.0, 0.2])
    assert np.allclose(pose[:3, :3], np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    assert np.allclose(parse_pose("0,0,0,2,0,0,0")[:3, :3], np.eye(3))  # the quaternion is normalized
    for bad in ("0 0 0 1 0 0", "0 0 0 0 0 0 0", "a b c 1 0 0 0", "0 0 nan 1 0 0 0"):
        with pytest.raises(ValueError, match="camera_in_mount"):
            parse_pose(bad)
