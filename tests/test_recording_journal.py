"""The journal flushes by time as well as by steps, so a slow loop loses no more than a fast one."""

from __future__ import annotations

import time

import numpy as np

from dexhier.episode_journal import JournaledRecorder, journal_path
from dexhier.episodes import EpisodeWriter


def _chunks(root) -> list[int]:
    return [len(np.load(c)["time"]) for c in sorted(journal_path(root, 0).glob("chunk_*.npz"))]


def test_a_step_older_than_the_interval_is_flushed_with_the_next_step(tmp_path):
    rec = JournaledRecorder(EpisodeWriter(tmp_path, {}), 0, {}, flush_every=20, flush_interval=0.1)
    rec.add_step({"time": 0.0})
    time.sleep(0.12)  # a stalled loop: one step in 0.12 s
    assert _chunks(tmp_path) == []
    rec.add_step({"time": 0.05})
    assert _chunks(tmp_path) == [2] and rec.flushed_steps == 2


def test_flush_if_due_serves_ticks_without_steps(tmp_path):
    rec = JournaledRecorder(EpisodeWriter(tmp_path, {}), 0, {}, flush_every=20, flush_interval=0.1)
    assert not rec.flush_if_due()  # nothing waiting
    rec.add_step({"time": 0.0})
    assert not rec.flush_if_due()  # not yet due
    time.sleep(0.12)
    assert rec.flush_if_due() and _chunks(tmp_path) == [1]
    assert not rec.flush_if_due()


def test_without_an_interval_only_steps_count(tmp_path):
    rec = JournaledRecorder(EpisodeWriter(tmp_path, {}), 0, {}, flush_every=3, flush_interval=None)
    rec.add_step({"time": 0.0})
    time.sleep(0.05)
    rec.add_step({"time": 0.05})
    assert _chunks(tmp_path) == [] and not rec.flush_if_due()
    rec.add_step({"time": 0.1})
    assert _chunks(tmp_path) == [3]
