"""Teleop MCAP bags: written with the mcap library, read back with rosbags and with mcap_ros2.

Every test serialises rclpy message objects without ``rclpy.init()`` (serialisation needs no context).
"""

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy.serialization")

from dexhier_ros import messages as M  # noqa: E402
from mcap.reader import make_reader  # noqa: E402
from mcap_ros2.decoder import DecoderFactory  # noqa: E402
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.interfaces import QosReliability  # noqa: E402
from rosbags.rosbag2.metadata import parse_qos  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from dexhier.teleop import bag  # noqa: E402

JOINTS = ("shoulder", "elbow", "wrist", "finger_a", "finger_b")
TOPICS = {
    "/joint_states": "sensor_msgs/msg/JointState",
    "/camera/color/image_raw": "sensor_msgs/msg/Image",
    "/arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/dexhier/teleop/event": "std_msgs/msg/String",
}
T0 = 1_700_000_000_000_000_000  # ns: wall-clock epoch times, as a real recording has


def _recording(rng: np.random.Generator) -> list[tuple[str, object, int]]:
    """(topic, rclpy message, log time ns) in log-time order, interleaved like a live session."""
    out = []
    for i in range(6):
        t = T0 + i * 10_000_000  # 100 Hz
        q = rng.uniform(-1.0, 1.0, len(JOINTS))
        out.append(("/joint_states", M.joint_state(JOINTS, q, np.zeros(len(JOINTS)), t * 1e-9), t))
        if i % 2 == 0:
            rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            out.append(("/camera/color/image_raw", M.image(rgb, t * 1e-9, "camera_optical"), t + 1))
        if i % 3 == 0:
            traj = M.trajectory(JOINTS, rng.uniform(-1, 1, (3, len(JOINTS))), [0.1, 0.2, 0.3])
            out.append(("/arm_controller/joint_trajectory", traj, t + 2))
    out.append(("/dexhier/teleop/event", String(data="start"), T0 + 3))
    out.append(("/dexhier/teleop/event", String(data="save"), T0 + 99_000_000))
    return sorted(out, key=lambda x: x[2])


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, list[tuple[str, object, int]]]:
    path = tmp_path / "episode_000.mcap"
    msgs = _recording(np.random.default_rng(0))
    with bag.McapBagWriter(path, chunk_size=16 * 1024) as w:  # small chunks: several in the file
        for topic, msgtype in TOPICS.items():
            w.add_topic(topic, msgtype, bag.SENSOR_QOS if "camera" in topic else None)
        for topic, msg, t in msgs:
            w.write_message(topic, msg, t)
        assert w.counts == {topic: sum(1 for x in msgs if x[0] == topic) for topic in TOPICS}
    return path, msgs


def _by_topic(msgs, topic):
    return [(m, t) for tp, m, t in msgs if tp == topic]


def _check_same(topic: str, got, want) -> None:
    """Field values of a decoded message (rosbags or mcap_ros2 object) against the rclpy original."""
    if topic == "/joint_states":
        assert list(got.name) == list(want.name)
        np.testing.assert_array_equal(np.asarray(got.position), want.position)
        assert (got.header.stamp.sec, got.header.stamp.nanosec) == (
            want.header.stamp.sec,
            want.header.stamp.nanosec,
        )
        assert got.header.frame_id == "base_link"
    elif topic == "/camera/color/image_raw":
        assert (got.height, got.width, got.encoding, got.step) == (64, 64, "rgb8", 192)
        assert bytes(got.data) == bytes(want.data)
        assert got.header.frame_id == "camera_optical"
    elif topic == "/arm_controller/joint_trajectory":
        assert list(got.joint_names) == list(JOINTS)
        assert len(got.points) == 3
        for gp, wp in zip(got.points, want.points, strict=True):
            np.testing.assert_array_equal(np.asarray(gp.positions), wp.positions)
            assert (gp.time_from_start.sec, gp.time_from_start.nanosec) == (
                wp.time_from_start.sec,
                wp.time_from_start.nanosec,
            )
    else:
        assert got.data == want.data


def test_rosbags_reads_back_counts_types_and_values(recorded):
    path, msgs = recorded
    assert bag.is_complete(path)
    want_counts = {topic: len(_by_topic(msgs, topic)) for topic in TOPICS}
    summary = bag.read_bag_summary(path)
    assert summary == {topic: {"msgtype": TOPICS[topic], "count": want_counts[topic]} for topic in TOPICS}
    assert bag.read_bag_summary(path, deserialize=False) == summary  # summary statistics agree

    seen: dict[str, list] = {topic: [] for topic in TOPICS}
    with AnyReader([path]) as reader:  # no default typestore: the file's own schemas must suffice
        assert {c.topic: c.msgtype for c in reader.connections} == TOPICS
        for conn, t, raw in reader.messages(connections=reader.connections):
            seen[conn.topic].append((reader.deserialize(raw, conn.msgtype), t))
    for topic in TOPICS:
        want = _by_topic(msgs, topic)
        assert [t for _, t in seen[topic]] == [t for _, t in want]
        for (got, _), (orig, _) in zip(seen[topic], want, strict=True):
            _check_same(topic, got, orig)


def _mcap_ros2_decoded(path: Path) -> list:
    """(schema, channel, message, decoded) via mcap_ros2's decoder.

    mcap_ros2.reader.read_ros2_messages does the same but is deprecated (warns) in 0.6.
    """
    with open(path, "rb") as f:
        return list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())


def test_mcap_ros2_decodes_the_same_messages(recorded):
    path, msgs = recorded
    decoded = _mcap_ros2_decoded(path)
    assert len(decoded) == len(msgs)
    for schema, channel, message, _ in decoded:
        assert channel.message_encoding == "cdr"
        assert schema.encoding == "ros2msg"
        assert schema.name == TOPICS[channel.topic]
        assert message.publish_time == message.log_time  # no publish time given: the receive time
    for topic in TOPICS:
        got = [(ros, m.log_time, m.sequence) for _, c, m, ros in decoded if c.topic == topic]
        want = _by_topic(msgs, topic)
        assert [t for _, t, _ in got] == [t for _, t in want]
        assert [s for _, _, s in got] == list(range(len(want)))  # per-topic counter, as rosbag2
        for (g, _, _), (w, _) in zip(got, want, strict=True):
            _check_same(topic, g, w)


def test_file_layout_is_rosbag2_mcap(recorded):
    path, _ = recorded
    with open(path, "rb") as f:
        reader = make_reader(f)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
    assert summary is not None and len(summary.chunk_indexes) > 1
    assert {c.compression for c in summary.chunk_indexes} == {"zstd"}
    assert summary.statistics.message_count == sum(summary.statistics.channel_message_counts.values())
    schemas = {s.name: s for s in summary.schemas.values()}
    assert set(schemas) == set(TOPICS.values())  # one schema per type
    for s in schemas.values():
        text = s.data.decode()
        assert s.encoding == "ros2msg"
        assert "\ntime stamp" not in text  # ROS 1 `time`: what generate_msgdef's default would write
    assert (
        "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec"
        in schemas["sensor_msgs/msg/Image"].data.decode()
    )
    qos = {c.topic: parse_qos(c.metadata["offered_qos_profiles"]) for c in summary.channels.values()}
    assert qos["/camera/color/image_raw"][0].reliability == QosReliability.BEST_EFFORT
    assert qos["/joint_states"][0].reliability == QosReliability.RELIABLE
    for c in summary.channels.values():
        assert c.metadata["topic_type_hash"].startswith("RIHS01_")


def test_type_hashes_match_the_installed_interfaces(recorded):
    # The schemas come from rosbags' typestore; the installed wheels ship each type's RIHS01 hash.
    path, _ = recorded
    with open(path, "rb") as f:
        channels = make_reader(f).get_summary().channels.values()
    for c in channels:
        pkg, _, name = TOPICS[c.topic].split("/")
        description = Path(sys.prefix) / "share" / pkg / "msg" / f"{name}.json"
        if not description.exists():
            pytest.skip(f"{description} not installed")
        hashes = json.loads(description.read_text())["type_hashes"]
        assert c.metadata["topic_type_hash"] == hashes[0]["hash_string"]


def test_qos_constants_use_rosbag2_policy_names():
    for text, reliability in ((bag.RELIABLE_QOS, "RELIABLE"), (bag.SENSOR_QOS, "BEST_EFFORT")):
        (profile,) = parse_qos(text)
        assert profile.reliability == QosReliability[reliability]
        assert profile.durability.name == "VOLATILE"
    latched = parse_qos(bag.qos_profile_yaml(durability="transient_local", depth=5))[0]
    assert (latched.durability.name, latched.depth) == ("TRANSIENT_LOCAL", 5)
    # rmw short names are what rosbag2 (Jazzy and later) parses back into policies
    assert ReliabilityPolicy.get_from_short_key("best_effort") == ReliabilityPolicy.BEST_EFFORT
    assert DurabilityPolicy.get_from_short_key("transient_local") == DurabilityPolicy.TRANSIENT_LOCAL
    with pytest.raises(ValueError, match="reliability"):
        bag.qos_profile_yaml(reliability="1")


def test_cdr_bytes_are_what_a_subscription_receives():
    # serialize_message sizes its buffer by an upper bound (rmw_fastrtps); cdr_bytes keeps the message.
    msgs = [
        M.joint_state(JOINTS, np.arange(5.0), np.zeros(5), 1.5),
        M.trajectory(JOINTS, np.ones((2, 5)), [0.5, 1.0]),
        String(data="hi"),
        M.image(np.zeros((4, 4, 3), np.uint8), 2.0, "cam"),
    ]
    for msg in msgs:
        full, exact = serialize_message(msg), bag.cdr_bytes(msg)
        assert full.startswith(exact)
        assert deserialize_message(exact, type(msg)) == msg
    assert bag.msgtype_of(JointState()) == "sensor_msgs/msg/JointState"
    assert bag.msgtype_of(JointTrajectory()) == "trajectory_msgs/msg/JointTrajectory"


def test_raw_bytes_are_stored_unchanged(tmp_path):
    path = tmp_path / "raw.mcap"
    data = bag.cdr_bytes(String(data="raw"))
    with bag.McapBagWriter(path, compression="none") as w:
        w.add_topic("/s", "std_msgs/msg/String")
        w.write("/s", data, 5, publish_time_ns=4)
    ((_, _, message, decoded),) = _mcap_ros2_decoded(path)
    assert (decoded.data, message.log_time, message.publish_time) == ("raw", 5, 4)
    assert message.data == data


@pytest.mark.parametrize(("name", "stored"), [("zstd", "zstd"), ("lz4", "lz4"), ("none", "")])
def test_compression_choice(tmp_path, name, stored):
    path = tmp_path / f"{name}.mcap"
    with bag.McapBagWriter(path, compression=name) as w:
        w.add_topic("/cam", "sensor_msgs/msg/Image", bag.SENSOR_QOS)
        w.write_message("/cam", M.image(np.zeros((64, 64, 3), np.uint8), 0.0, "cam"), 1)
    with open(path, "rb") as f:
        assert [c.compression for c in make_reader(f).get_summary().chunk_indexes] == [stored]
    assert bag.read_bag_summary(path) == {"/cam": {"msgtype": "sensor_msgs/msg/Image", "count": 1}}
    with pytest.raises(ValueError, match="compression"):
        bag.McapBagWriter(tmp_path / "x.mcap", compression="gzip")


def test_nbytes_counts_and_close(tmp_path):
    path = tmp_path / "n.mcap"
    w = bag.McapBagWriter(path, chunk_size=4096)
    w.add_topic("/cam", "sensor_msgs/msg/Image")
    start = w.nbytes
    assert start > 0  # magic, header, schema, channel
    rng = np.random.default_rng(1)
    for i in range(3):  # incompressible 12 KiB images: each closes a chunk
        w.write_message("/cam", M.image(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), i, "c"), i)
    assert w.counts == {"/cam": 3}
    assert w.nbytes > start + 3 * 64 * 64 * 3
    w.close()
    assert w.closed and w.nbytes == path.stat().st_size
    w.close()  # idempotent
    assert bag.is_complete(path)


def test_crash_leaves_an_incomplete_file(tmp_path):
    path = tmp_path / "live.mcap"
    w = bag.McapBagWriter(path)
    w.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    for i in range(10):
        w.write_message("/joint_states", M.joint_state(JOINTS, np.full(5, i), np.zeros(5), i), i)
    w.flush()  # one chunk on disk, no summary or footer yet
    crashed = tmp_path / "crashed.mcap"
    shutil.copyfile(path, crashed)  # what the disk holds if the process dies now
    assert crashed.stat().st_size > 0
    assert not bag.is_complete(crashed)
    # Documented choice: an incomplete file raises rather than returning a partial summary.
    with pytest.raises(bag.IncompleteBagError, match="no MCAP footer"):
        bag.read_bag_summary(crashed)
    w.close()
    assert bag.is_complete(path)
    assert bag.read_bag_summary(path)["/joint_states"]["count"] == 10

    cut = tmp_path / "cut.mcap"  # a closed file that lost its tail (copy interrupted, disk full)
    cut.write_bytes(path.read_bytes()[:-20])
    assert not bag.is_complete(cut)
    with pytest.raises(bag.IncompleteBagError):
        bag.read_bag_summary(cut)
    empty = tmp_path / "empty.mcap"
    empty.write_bytes(b"")
    assert not bag.is_complete(empty)


def test_exception_in_with_block_still_finishes_the_file(tmp_path):
    path = tmp_path / "e.mcap"
    with pytest.raises(RuntimeError, match="operator"), bag.McapBagWriter(path) as w:
        w.add_topic("/dexhier/teleop/event", "std_msgs/msg/String")
        w.write_message("/dexhier/teleop/event", String(data="start"), 1)
        raise RuntimeError("operator quit")
    assert bag.read_bag_summary(path) == {
        "/dexhier/teleop/event": {"msgtype": "std_msgs/msg/String", "count": 1}
    }


def test_usage_errors(tmp_path):
    w = bag.McapBagWriter(tmp_path / "u.mcap")
    w.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    w.add_topic("/joint_states", "sensor_msgs/msg/JointState")  # same type again: nothing happens
    with pytest.raises(KeyError, match="/not_added"):
        w.write("/not_added", b"\x00\x01\x00\x00", 1)
    with pytest.raises(KeyError, match="/not_added"):
        w.write_message("/not_added", String(data="x"), 1)
    with pytest.raises(ValueError, match="already has type sensor_msgs/msg/JointState"):
        w.add_topic("/joint_states", "sensor_msgs/msg/Image")
    with pytest.raises(ValueError, match="unknown ROS 2 message type"):
        w.add_topic("/x", "dexhier_msgs/msg/Nope")
    with pytest.raises(ValueError, match="absolute"):
        w.add_topic("joint_states_relative", "sensor_msgs/msg/JointState")
    with pytest.raises(ValueError, match="carries sensor_msgs/msg/JointState"):
        w.write_message("/joint_states", String(data="x"), 1)
    with pytest.raises(ValueError, match="nanoseconds"):
        w.write_message("/joint_states", JointState(), 1.5)  # seconds as float: a unit mistake
    with pytest.raises(ValueError, match="nanoseconds"):
        w.write("/joint_states", bag.cdr_bytes(JointState()), -1)
    with pytest.raises(ValueError, match="CDR"):
        w.write("/joint_states", b"\x00", 1)
    assert w.counts == {"/joint_states": 0}
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write("/joint_states", bag.cdr_bytes(JointState()), 2)
    with pytest.raises(RuntimeError, match="closed"):
        w.write_message("/joint_states", JointState(), 2)
    with pytest.raises(RuntimeError, match="closed"):
        w.add_topic("/other", "std_msgs/msg/String")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_disk_full_propagates_as_oserror(tmp_path):
    # Every write to /dev/full fails with ENOSPC. The header is written through at once (a bag is
    # never left 0 bytes long), so a full disk shows when the bag is opened.
    with pytest.raises(OSError) as info:
        bag.McapBagWriter("/dev/full", chunk_size=1024, compression="none")
    assert info.value.errno == errno.ENOSPC
    # Later, a sync (due by time) writes the chunk through: the disk error comes from that write.
    w = bag.McapBagWriter(tmp_path / "b.mcap", compression="none", sync_interval=0.05)
    w.add_topic("/cam", "sensor_msgs/msg/Image")
    img = M.image(np.zeros((64, 64, 3), np.uint8), 0.0, "cam")
    w.write_message("/cam", img, 0)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, w._file.fileno())  # the bag's descriptor now fails every write, as a full disk does
    os.close(full)
    time.sleep(0.06)
    with pytest.raises(OSError):
        w.write_message("/cam", img, 1)  # due: the chunk goes to the failing descriptor
        time.sleep(0.06)  # only if a stall made the first write sync on its own: now this one is due
        w.sync_if_due()
    with pytest.raises(OSError):
        w.close()
    assert w.closed
    w.close()  # nothing left to do
    with pytest.raises(RuntimeError):
        w.write_message("/cam", img, 99)
