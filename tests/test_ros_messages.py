"""Conversions between ROS messages and numpy, and the JTC-like trajectory checks (no DDS needed)."""

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")

from dexhier_ros import messages as M  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from sim.camera import Intrinsics  # noqa: E402

JOINTS = ("a", "b", "c")


def test_time_round_trip():
    for t in (0.0, 0.05, 12.345678901, 1e5 + 0.25):
        assert M.from_time(M.to_time(t)) == pytest.approx(t, abs=1e-9)


def test_time_never_goes_back_when_rounding_to_nanoseconds():
    # The twin's clock is a sum of 0.002 s steps: 2.9999999999999 must become 3 s, not 2 s.
    m = M.to_time(2.9999999999999)
    assert (m.sec, m.nanosec) == (3, 0)
    t, last = 0.0, -1.0
    for _ in range(5000):
        t += 0.002
        now = M.from_time(M.to_time(t))
        assert now > last
        last = now
    d = M.to_duration(0.9999999999999)
    assert (d.sec, d.nanosec) == (1, 0)


def test_joint_state_is_matched_by_name():
    msg = M.joint_state(("c", "a", "b"), np.array([3.0, 1.0, 2.0]), np.zeros(3), 1.0)
    np.testing.assert_array_equal(M.joint_positions(msg, JOINTS), [1.0, 2.0, 3.0])
    with pytest.raises(M.MessageError, match="lacks joints"):
        M.joint_positions(msg, ("a", "z"))
    bad = JointState(name=["a"], position=[1.0, 2.0])
    with pytest.raises(M.MessageError, match="names"):
        M.joint_positions(bad, ("a",))
    nan = JointState(name=["a"], position=[float("nan")])
    with pytest.raises(M.MessageError, match="non-finite"):
        M.joint_positions(nan, ("a",))


def test_trajectory_round_trip_reorders_by_name():
    msg = M.trajectory(("b", "c", "a"), np.array([[2.0, 3.0, 1.0], [5.0, 6.0, 4.0]]), [0.1, 0.2])
    times, pos = M.parse_trajectory(msg, JOINTS)
    np.testing.assert_allclose(times, [0.1, 0.2])
    np.testing.assert_array_equal(pos, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def _traj(names, rows, times):
    msg = JointTrajectory(joint_names=list(names))
    for q, t in zip(rows, times, strict=True):
        msg.points.append(JointTrajectoryPoint(positions=list(q), time_from_start=M.to_duration(t)))
    return msg


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (_traj([], [], []), "empty joint_names"),
        (_traj(JOINTS, [], []), "empty trajectory"),
        (_traj(("a", "b"), [[0, 0]], [0.1]), "missing joints"),
        (_traj(("a", "b", "c", "x"), [[0, 0, 0, 0]], [0.1]), "unknown joints"),
        (_traj(("a", "a", "b"), [[0, 0, 0]], [0.1]), "duplicate"),
        (_traj(JOINTS, [[0, 0, float("nan")]], [0.1]), "non-finite"),
        (_traj(JOINTS, [[0, 0, 0], [1, 1, 1]], [0.2, 0.1]), "strictly increasing"),
        (_traj(JOINTS, [[0, 0]], [0.1]), "positions for"),
    ],
    ids=["no-names", "no-points", "partial", "unknown", "duplicate", "nan", "time-order", "short-point"],
)
def test_invalid_trajectories_are_rejected_like_ros2_control(msg, reason):
    with pytest.raises(M.MessageError, match=reason):
        M.parse_trajectory(msg, JOINTS)


def test_images_round_trip_and_bad_encodings_are_rejected():
    rgb = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    depth = np.random.default_rng(1).random((6, 8)).astype(np.float32)
    np.testing.assert_array_equal(M.image_array(M.image(rgb, 0.0, "cam")), rgb)
    np.testing.assert_array_equal(M.image_array(M.image(depth, 0.0, "cam")), depth)
    bgr = M.image(rgb, 0.0, "cam")
    bgr.encoding = "bgr8"
    np.testing.assert_array_equal(M.image_array(bgr), rgb[..., ::-1])
    with pytest.raises(M.MessageError, match="unsupported image encoding"):
        M.image_array(Image(height=2, width=2, encoding="mono16", step=4, data=bytes(8)))
    short = M.image(rgb, 0.0, "cam")
    short.data = bytes(10)
    with pytest.raises(M.MessageError, match="bytes"):
        M.image_array(short)
    with pytest.raises(M.MessageError, match="cannot encode"):
        M.image(np.zeros((4, 4), np.int16), 0.0, "cam")


def test_camera_info_carries_the_intrinsics():
    intr = Intrinsics.from_fovy(50.0, 64, 48)
    info = M.camera_info(intr, 1.5, "cam")
    assert (info.width, info.height) == (64, 48)
    np.testing.assert_allclose(np.array(info.k).reshape(3, 3), intr.matrix())


def test_fit_image_crops_the_centred_square_and_averages_blocks():
    from dexhier_ros.messages import MessageError, fit_image

    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :8] = 255  # outside the centred 48x48 square: cropped away
    img[:, 8:56, 0] = np.arange(48, dtype=np.uint8)[None, :] * 5  # a horizontal ramp inside it
    out = fit_image(img, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out[..., 1].max() == 0  # the white columns are gone
    # Each output pixel is the mean of its 3x3 block: column j averages ramp values 3j..3j+2.
    assert np.array_equal(out[0, :, 0], np.round(np.arange(16) * 15 + 5).astype(np.uint8))
    assert np.array_equal(fit_image(img[:, 8:56], 48), img[:, 8:56])  # already at size: unchanged
    with pytest.raises(MessageError, match="smaller than the 64x64"):
        fit_image(img, 64)


def test_only_a_failed_take_counts_as_a_dropped_message_not_a_callback_error():
    from dexhier_ros.runtime import _failed_take

    def _take_subscription():  # where rclpy's executor takes a message off the middleware
        raise RuntimeError("Unable to convert call argument '0' to Python object")

    def on_message():  # a node's own callback
        raise RuntimeError("a bug in the callback")

    for fn, expected in ((_take_subscription, True), (on_message, False)):
        try:
            fn()
        except RuntimeError as err:
            assert _failed_take(err) is expected
