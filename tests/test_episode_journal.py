"""The journal of an episode in flight: flushed steps survive a crash and come back marked incomplete."""

from __future__ import annotations

import numpy as np
import pytest

from dexhier.episode_journal import (
    INCOMPLETE_REASON,
    JournaledRecorder,
    inflight_indices,
    journal_path,
    next_index,
    recover,
)
from dexhier.episodes import EpisodeDataset, EpisodeWriter

META = {"source": "test", "control_hz": 20.0}


def _step(t: int) -> dict:
    rng = np.random.default_rng(t)
    return {
        "time": t * 0.05,
        "arm/qpos": rng.normal(size=6),
        "rgb/scene": rng.integers(0, 255, (8, 8, 3), np.uint8),
    }


def test_flushes_every_n_steps_and_commit_removes_the_journal(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    rec = JournaledRecorder(writer, 0, {"task": "t"}, flush_every=4)
    for t in range(10):
        rec.add_step(_step(t))
    assert rec.flushed_steps == 8
    assert sorted(p.name for p in rec.path.glob("chunk_*.npz")) == ["chunk_000000.npz", "chunk_000001.npz"]
    assert inflight_indices(tmp_path) == [0]
    path = rec.commit(success=True)
    assert not rec.path.exists() and inflight_indices(tmp_path) == []
    ep = EpisodeDataset(tmp_path).episode(0)
    assert ep.num_steps == 10 and ep.success
    np.testing.assert_array_equal(ep["arm/qpos"][9], _step(9)["arm/qpos"])
    assert path == ep.path


def test_discard_removes_the_journal_and_keeps_the_index_free(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    rec = JournaledRecorder(writer, 0, {}, flush_every=2)
    for t in range(5):
        rec.add_step(_step(t))
    rec.discard()
    assert not journal_path(tmp_path, 0).exists()
    assert next_index(tmp_path) == 0 and len(EpisodeDataset(tmp_path)) == 0


def test_recover_commits_flushed_steps_bit_identical_marked_incomplete(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    done = JournaledRecorder(writer, 0, {"task": "t"}, flush_every=3)
    for t in range(4):
        done.add_step(_step(t))
    done.commit(success=True)
    crashed = JournaledRecorder(writer, 1, {"task": "t", "instruction": "pick"}, flush_every=3)
    for t in range(8):  # 6 flushed, 2 only in memory when the "crash" happens
        crashed.add_step(_step(t))
    del crashed  # the process dies: nothing else runs
    # A chunk half-written at the crash is a dot-file and must be ignored.
    (journal_path(tmp_path, 1) / ".chunk_000002.npz-dead").write_bytes(b"PK\x03garbage")
    assert next_index(tmp_path) == 2  # a journaled index is not reused

    results = recover(EpisodeWriter(tmp_path, META))
    assert [(r.index, r.action, r.steps) for r in results] == [(1, "committed", 6)]
    ds = EpisodeDataset(tmp_path)
    assert ds.indices == [0, 1] and inflight_indices(tmp_path) == []
    ep = ds.episode(1)
    assert ep.num_steps == 6 and not ep.success
    assert ep.meta["incomplete"] is True and ep.meta["end_reason"] == INCOMPLETE_REASON
    assert ep.meta["instruction"] == "pick"
    for t in range(6):
        for key, value in _step(t).items():
            np.testing.assert_array_equal(ep[key][t], value)
    assert ds.episode(0).num_steps == 4 and ds.episode(0).success  # untouched


def test_recover_removes_empty_journals_and_quarantines_unreadable_ones(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    empty = JournaledRecorder(writer, 0, {}, flush_every=100)
    empty.add_step(_step(0))
    broken = JournaledRecorder(writer, 1, {}, flush_every=1)
    broken.add_step(_step(0))
    (broken.path / "chunk_000000.npz").write_bytes(b"not a zip")
    results = {r.index: r for r in recover(writer)}
    assert results[0].action == "removed" and not journal_path(tmp_path, 0).exists()
    # Moved aside whole (never deleted), so it no longer blocks its index or the next start-up.
    assert results[1].action == "quarantined" and not journal_path(tmp_path, 1).exists()
    (moved,) = results[1].quarantined
    assert (tmp_path / moved / "chunk_000000.npz").read_bytes() == b"not a zip"
    assert len(EpisodeDataset(tmp_path)) == 0


def test_a_journal_left_after_its_commit_is_just_removed(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    rec = JournaledRecorder(writer, 0, {}, flush_every=1)
    rec.add_step(_step(0))
    rec._rec.commit(success=True)  # killed between the commit and the journal's removal
    results = recover(writer)
    assert [(r.index, r.action) for r in results] == [(0, "removed")]
    assert EpisodeDataset(tmp_path).episode(0).success


def test_an_index_with_a_journal_cannot_be_recorded_again(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    JournaledRecorder(writer, 0, {}, flush_every=1).add_step(_step(0))
    with pytest.raises(FileExistsError, match="recover"):
        JournaledRecorder(writer, 0, {})
    with pytest.raises(ValueError, match="flush_every"):
        JournaledRecorder(writer, 5, {}, flush_every=0)
