"""Bags that survive a crash: the header and each interval's chunk reach the disk, and `recover_bag` /
`dexhier dataset recover` turn what a killed writer left into a valid MCAP that rosbags and mcap open."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy.serialization")

from dexhier_ros import messages as M  # noqa: E402
from mcap.reader import make_reader  # noqa: E402

from dexhier.dataset_review import recover_dataset  # noqa: E402
from dexhier.episode_journal import QUARANTINE_DIR, JournaledRecorder  # noqa: E402
from dexhier.episodes import EpisodeDataset, EpisodeWriter  # noqa: E402
from dexhier.teleop import bag  # noqa: E402

JOINTS = ("a", "b")
TOPIC = "/joint_states"


def _msg(i: int):
    return M.joint_state(JOINTS, np.full(2, float(i)), np.zeros(2), i * 0.05)


def _writer(path: Path, **kw) -> bag.McapBagWriter:
    w = bag.McapBagWriter(path, **kw)
    w.add_topic(TOPIC, "sensor_msgs/msg/JointState")
    return w


def _killed_copy(path: Path) -> Path:
    """What the disk holds if the writing process is SIGKILLed now (the page cache survives a kill)."""
    copy = path.with_name("killed-" + path.name)
    shutil.copyfile(path, copy)
    return copy


def _read_both(path: Path) -> list[tuple[int, bytes]]:
    """(log time, data) of every message, read with mcap; rosbags must agree and decode each one."""
    from rosbags.highlevel import AnyReader

    with open(path, "rb") as f:
        got = [(m.log_time, m.data) for _, _, m in make_reader(f).iter_messages()]
    with AnyReader([path]) as reader:
        other = []
        for conn, t, raw in reader.messages(connections=reader.connections):
            reader.deserialize(raw, conn.msgtype)
            other.append((t, bytes(raw)))
    assert other == got
    return got


def test_the_header_is_on_disk_as_soon_as_the_bag_is_open(tmp_path):
    w = _writer(tmp_path / "b.mcap")
    killed = _killed_copy(w.path)
    assert killed.read_bytes().startswith(bag.MCAP_MAGIC)  # never a 0-byte bag
    result = bag.recover_bag(killed, tmp_path / "r.mcap")
    assert result.messages == 0 and _read_both(tmp_path / "r.mcap") == []
    w.close()


@pytest.mark.parametrize("interval", [0.2, None])
def test_a_write_after_the_sync_interval_puts_every_message_on_disk(tmp_path, interval):
    w = _writer(tmp_path / "b.mcap", sync_interval=interval)
    for i in range(5):
        w.write_message(TOPIC, _msg(i), i + 1)
    time.sleep(0.25)
    w.write_message(TOPIC, _msg(5), 6)  # due: ends the chunk with all six messages and fsyncs
    result = bag.recover_bag(_killed_copy(w.path), tmp_path / "r.mcap")
    assert result.messages == (6 if interval else 0)  # by size only (1 MiB), nothing would be on disk
    assert [t for t, _ in _read_both(tmp_path / "r.mcap")] == list(range(1, 7 if interval else 1))
    w.close()


def test_sync_if_due_serves_a_timer_when_messages_stop(tmp_path):
    w = _writer(tmp_path / "b.mcap", sync_interval=0.1)
    w.write_message(TOPIC, _msg(0), 1)
    assert not w.sync_if_due()  # not yet due
    time.sleep(0.12)
    assert w.sync_if_due() and not w.sync_if_due()  # nothing more waiting
    assert bag.recover_bag(_killed_copy(w.path), tmp_path / "r.mcap").messages == 1
    w.close()


def test_recover_keeps_the_exact_messages_of_every_intact_chunk_and_reports_the_cut(tmp_path):
    w = _writer(tmp_path / "b.mcap", chunk_size=2048, sync_interval=None)  # a chunk every ~20 messages
    sent = []
    for i in range(200):
        data = bag.cdr_bytes(_msg(i))
        w.write(TOPIC, data, 1000 + i)
        sent.append((1000 + i, data))
    w.flush()
    size = w.path.stat().st_size
    w.close()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(w.path.read_bytes()[: size - 100])  # the last chunk cut short, no footer
    result = bag.recover_bag(cut, tmp_path / "r.mcap")
    got = _read_both(tmp_path / "r.mcap")
    assert 150 < len(got) < 200 and got == sent[: len(got)]  # a prefix, byte for byte
    assert not result.complete and result.stopped and result.intact_bytes < size - 100
    assert bag.is_complete(tmp_path / "r.mcap")
    # Summary and indexes are there: the seeking reader answers without scanning.
    with open(tmp_path / "r.mcap", "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary.statistics.message_count == len(got) and summary.chunk_indexes


def test_recover_skips_a_damaged_chunk_and_keeps_the_ones_after_it(tmp_path):
    w = _writer(tmp_path / "b.mcap", chunk_size=2048, sync_interval=None)
    for i in range(200):
        w.write_message(TOPIC, _msg(i), 1000 + i)
    w.close()
    with open(w.path, "rb") as f:
        chunks = make_reader(f).get_summary().chunk_indexes
    victim = chunks[2]
    data = bytearray(w.path.read_bytes())
    middle = victim.chunk_start_offset + victim.chunk_length // 2
    data[middle : middle + 16] = bytes(16)  # a bad sector inside the chunk's compressed data
    damaged = tmp_path / "damaged.mcap"
    damaged.write_bytes(bytes(data))
    result = bag.recover_bag(damaged, tmp_path / "r.mcap")
    times = [t for t, _ in _read_both(tmp_path / "r.mcap")]
    lost = set(range(victim.message_start_time, victim.message_end_time + 1))
    assert result.damaged_chunks == 1 and result.complete
    assert times == [t for t in range(1000, 1200) if t not in lost]


def _journal_and_bag(root: Path, index: int, steps: int) -> tuple[JournaledRecorder, bag.McapBagWriter]:
    writer = EpisodeWriter(root, {"source": "test"})
    rec = JournaledRecorder(writer, index, {"task": "t"}, flush_every=5)
    (root / "bags").mkdir(exist_ok=True)
    w = _writer(root / "bags" / f".inflight-episode_{index:06d}.mcap", sync_interval=None)
    for t in range(steps):
        rec.add_step({"time": t * 0.05, "q": np.full(2, float(t))})
        w.write_message(TOPIC, _msg(t), t + 1)
    w.sync()
    return rec, w


def test_dataset_recover_rewrites_the_killed_bag_links_it_and_quarantines_its_tail(tmp_path):
    rec, w = _journal_and_bag(tmp_path, 0, 10)
    synced = w.path.stat().st_size
    for t in range(10, 14):  # a chunk in progress: half of it reached the disk when the kill came
        w.write_message(TOPIC, _msg(t), t + 1)
    w.flush()
    path = w.path
    full = path.read_bytes()
    end = synced + (len(full) - synced) // 2
    path.write_bytes(full[:end])
    messages = recover_dataset(tmp_path)
    assert any("no footer" in m and "10 messages" in m for m in messages), messages
    ep = EpisodeDataset(tmp_path).episode(0)
    assert ep.meta["bag"] == "bags/episode_000000.incomplete.mcap" and ep.num_steps == 10
    assert [t for t, _ in _read_both(tmp_path / ep.meta["bag"])] == list(range(1, 11))
    assert not path.exists()
    (tail,) = (tmp_path / QUARANTINE_DIR).rglob("*.tail")
    assert tail.read_bytes() == full[synced:end]  # exactly the unreadable part, moved aside


def test_a_bag_closed_before_the_kill_goes_to_the_name_its_committed_episode_gives(tmp_path):
    rec, w = _journal_and_bag(tmp_path, 0, 6)
    w.close()  # killed after the commit, before the rename
    rec.commit(success=True, meta={"bag": "bags/episode_000000.mcap"})
    messages = recover_dataset(tmp_path)
    assert messages == ["bag .inflight-episode_000000.mcap was complete: renamed episode_000000.mcap"]
    assert len(_read_both(tmp_path / "bags/episode_000000.mcap")) == 6


def test_an_unclosed_bag_of_a_committed_episode_is_rewritten_under_its_final_name(tmp_path):
    rec, w = _journal_and_bag(tmp_path, 0, 6)  # killed after the commit, while closing the bag
    rec.commit(success=True, meta={"bag": "bags/episode_000000.mcap"})
    recover_dataset(tmp_path)
    assert len(_read_both(tmp_path / "bags/episode_000000.mcap")) == 6
    assert EpisodeDataset(tmp_path).episode(0).success
