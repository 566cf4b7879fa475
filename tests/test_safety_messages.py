"""Regression tests of issue 16's crash findings in the shared codecs (dexhier_ros.messages, runtime).

Each of these single messages once ended a node: an Image with more data than step x height, a
/clock with sec = -1, episode messages with seed -1, 2**64 or 1e400, and JSON nested 100,000 deep.
"""

import json
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from dexhier_ros import messages as M  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

GOOD_EPISODE = {"episode": 2, "seed": 7, "task": "tweezer_pick", "instruction": "pick", "time": 0.0,
                "clock": 12.5, "steps": 0, "success": False, "done": False, "object_width": 0.01}  # fmt: skip


def _rgb(h: int = 4, w: int = 5) -> Image:
    return M.image(np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3), 1.0, "cam")


@pytest.mark.parametrize("extra", [1, 3 * 5, -1, -15])
def test_an_image_whose_data_is_not_step_times_height_is_rejected(extra):
    msg = _rgb()
    data = bytes(msg.data)
    msg.data = data + bytes(extra) if extra > 0 else data[:extra]
    with pytest.raises(M.MessageError, match="exactly step x height"):
        M.image_array(msg)


@pytest.mark.parametrize(
    "edit",
    [
        {"height": 0}, {"width": 0}, {"height": 100_000}, {"step": 2}, {"encoding": "mono16"},
        {"encoding": "32FC1"},  # rgb8 bytes: step 15 < 4 x 5
    ],
)  # fmt: skip
def test_malformed_image_geometry_is_a_message_error(edit):
    msg = _rgb()
    for k, v in edit.items():
        setattr(msg, k, v)
    with pytest.raises(M.MessageError):
        M.image_array(msg)


def test_valid_images_still_decode_with_row_padding():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    msg = M.image(img, 1.0, "cam")
    padded = np.zeros((4, 16), np.uint8)
    padded[:, :15] = img.reshape(4, 15)
    msg.step, msg.data = 16, padded.tobytes()
    np.testing.assert_array_equal(M.image_array(msg), img)
    depth = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(M.image_array(M.image(depth, 0.0, "d")), depth)


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"episode": 1, "seed": -1}', "seed"),
        ('{"episode": 1, "seed": 18446744073709551616}', "seed"),  # 2**64
        ('{"episode": 1, "seed": 1e400}', "seed"),
        ('{"episode": 1, "seed": NaN}', "NaN"),
        ('{"episode": 1, "seed": 3.5}', "seed"),
        ('{"episode": 1, "seed": true}', "seed"),
        ('{"episode": -3, "seed": 1}', "episode"),
        ('{"episode": 1, "seed": 1, "clock": Infinity}', "Infinity"),
        ('{"episode": 1, "seed": 1, "done": "yes"}', "done"),
        ('{"episode": 1, "seed": 1, "task": ["a"]}', "task"),
        ('{"episode": 1}', "lacks seed"),
        ("[1, 2]", "not an object"),
        ('"just a string"', "not an object"),
        ("{not json", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "longer"),  # RecursionError in the coordinator
        ("[" * 30_000 + "]" * 30_000, "nested too deep"),  # within the size bound
        ('{"episode": 1, "seed": 1, "x": "' + "a" * 70_000 + '"}', "longer"),
    ],
)
def test_episode_messages_are_parsed_with_bounds(text, why):
    with pytest.raises(M.MessageError, match=why):
        M.parse_episode(text)


def test_a_valid_episode_message_parses_and_unknown_fields_are_dropped():
    doc = M.parse_episode(json.dumps({**GOOD_EPISODE, "extra": [1, 2]}), ("episode", "seed", "done", "clock"))
    assert doc == GOOD_EPISODE
    assert M.parse_episode(json.dumps({"episode": 0, "seed": 2**63 - 1}))["seed"] == 2**63 - 1
    deep = '{"episode": 1, "seed": 1, "x": ' + "[" * 30_000 + "]" * 30_000 + "}"
    t0 = time.perf_counter()
    with pytest.raises(M.MessageError):
        M.parse_episode(deep)
    assert time.perf_counter() - t0 < 1.0


def test_a_clock_that_is_not_a_time_is_dropped_not_raised():
    from dexhier_ros.runtime import valid_clock
    from rclpy.clock import ClockType, ROSClock
    from rclpy.time_source import TimeSource

    source = TimeSource()
    clock = ROSClock()
    source.attach_clock(clock)
    source.ros_time_is_active = True
    source.clock_callback(Clock(clock=Time(sec=5, nanosec=0)))
    for bad in (Time(sec=-1, nanosec=0), Time(sec=-(2**31), nanosec=999_999_999)):
        assert valid_clock(Clock(clock=bad)) is not None
        source.clock_callback(Clock(clock=bad))  # raised ValueError in rclpy and ended the node
    assert clock.now().nanoseconds == 5_000_000_000 and clock.clock_type == ClockType.ROS_TIME
    big = Clock(clock=Time(sec=2**31 - 1, nanosec=999_999_999))  # huge but a time: accepted
    assert valid_clock(big) is None


def test_trajectories_outside_the_joint_limits_or_oversized_are_rejected():
    names = ("a", "b")
    lower, upper = np.array([-1.0, -2.0]), np.array([1.0, 2.0])
    ok = M.trajectory(names, np.array([[0.5, -1.9], [1.0, 2.0]]), [0.1, 0.2])
    times, points = M.parse_trajectory(ok, names, lower, upper)
    assert points.shape == (2, 2)
    for q in ([5.0, 0.0], [0.0, -2.01]):
        bad = M.trajectory(names, np.array([[0.0, 0.0], q]), [0.1, 0.2])
        with pytest.raises(M.MessageError, match="outside its limits"):
            M.parse_trajectory(bad, names, lower, upper)
        M.parse_trajectory(bad, names)  # without limits: only the structure is checked
    big = M.trajectory([f"j{i}" for i in range(20_000)], np.zeros(20_000), [0.1])
    t0 = time.perf_counter()
    with pytest.raises(M.MessageError, match="oversized"):
        M.parse_trajectory(big, names, lower, upper)
    assert time.perf_counter() - t0 < 0.05
