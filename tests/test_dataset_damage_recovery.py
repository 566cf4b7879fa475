"""`dexhier dataset recover` on damaged files: it never crashes, keeps every intact part, and moves
the damaged ones to ROOT/quarantine/ (never deletes them); mistyped paths give one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dexhier.dataset_review import recover_dataset
from dexhier.episode_journal import (
    QUARANTINE_DIR,
    JournaledRecorder,
    inflight_indices,
    journal_path,
    next_index,
)
from dexhier.episodes import EpisodeDataset, EpisodeWriter

META = {"source": "test", "task": "tweezer_pick", "control_hz": 20.0}


def _step(t: int) -> dict:
    rng = np.random.default_rng(t)
    return {
        "time": t * 0.05,
        "arm/qpos": rng.normal(size=6),
        "rgb/scene": rng.integers(0, 255, (8, 8, 3), np.uint8),
    }


def journal(writer: EpisodeWriter, index: int, steps: int, every: int = 5) -> JournaledRecorder:
    """A journal left by a killed recorder: ``steps`` steps flushed in chunks of ``every``."""
    rec = JournaledRecorder(writer, index, {"task": "tweezer_pick", "instruction": "pick"}, flush_every=every)
    for t in range(steps):
        rec.add_step(_step(t))
    return rec


def cli(*args: str) -> tuple[int, str, str]:
    from dexhier.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def quarantined(root: Path) -> list[Path]:
    q = root / QUARANTINE_DIR
    return sorted(p.relative_to(q) for p in q.rglob("*") if p.is_file()) if q.exists() else []


def test_a_truncated_journal_chunk_keeps_every_intact_chunk_and_quarantines_it(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    journal(writer, 0, 20)  # chunks 0..3 of 5 steps
    chunk = journal_path(tmp_path, 0) / "chunk_000001.npz"
    damaged = chunk.read_bytes()[:-300]  # a truncated zip: np.load raises BadZipFile
    chunk.write_bytes(damaged)
    code, out, err = cli("dataset", "recover", str(tmp_path))
    assert code == 0, err
    assert "15 steps recovered" in out and "chunk_000001.npz" in out
    ep = EpisodeDataset(tmp_path).episode(0)
    assert ep.num_steps == 15 and ep.meta["incomplete"] is True and ep.meta["instruction"] == "pick"
    want = np.array([_step(t)["time"] for t in (*range(5), *range(10, 20))])
    np.testing.assert_array_equal(ep["time"], want)  # chunks 0, 2 and 3, in order
    assert ep.meta["recovery_gaps"] == [5]
    (moved,) = ep.meta["quarantined"]
    assert (tmp_path / moved).read_bytes() == damaged  # moved aside byte for byte, not deleted
    assert not journal_path(tmp_path, 0).exists() and inflight_indices(tmp_path) == []
    # Recording goes on in the same dataset: nothing left to trip over at the next start-up.
    assert recover_dataset(tmp_path) == [] and next_index(tmp_path) == 1
    journal(writer, 1, 3).commit(success=True)
    assert EpisodeDataset(tmp_path).indices == [0, 1]


def test_a_journal_with_no_intact_chunk_is_quarantined_whole_and_frees_its_index(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    journal(writer, 0, 10)
    for chunk in journal_path(tmp_path, 0).glob("chunk_*.npz"):
        chunk.write_bytes(chunk.read_bytes()[:100])
    messages = recover_dataset(tmp_path)
    assert any("no intact journal chunk" in m for m in messages), messages
    assert EpisodeDataset(tmp_path).indices == [] and inflight_indices(tmp_path) == []
    names = [p.name for p in quarantined(tmp_path)]
    assert sorted(names) == ["chunk_000000.npz", "chunk_000001.npz", "journal.json", "reason.txt"]


def test_an_unreadable_journal_description_still_recovers_the_steps(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    journal(writer, 0, 10)
    (journal_path(tmp_path, 0) / "journal.json").write_text('{"index": 0, "me')
    recover_dataset(tmp_path)
    ep = EpisodeDataset(tmp_path).episode(0)
    assert ep.num_steps == 10 and any("journal.json" in p for p in ep.meta["quarantined"])


def test_a_chunk_written_but_not_renamed_is_kept(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    journal(writer, 0, 10)
    path = journal_path(tmp_path, 0)
    (path / "chunk_000001.npz").rename(path / ".chunk_000001.npz-1a2b3c4d")  # killed before the rename
    recover_dataset(tmp_path)
    assert EpisodeDataset(tmp_path).episode(0).num_steps == 10


def test_a_damaged_committed_episode_is_quarantined_with_its_bag(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    for index in range(3):
        rec = journal(writer, index, 4)
        rec.commit(success=True, meta={"bag": f"bags/episode_{index:06d}.mcap"})
        (tmp_path / "bags").mkdir(exist_ok=True)
        (tmp_path / f"bags/episode_{index:06d}.mcap").write_bytes(b"bag %d" % index)
    steps = tmp_path / "episodes/episode_000001/steps.npz"
    steps.write_bytes(steps.read_bytes()[:-50])
    messages = recover_dataset(tmp_path)
    assert len(messages) == 1 and "episode 1 is damaged" in messages[0] and "steps.npz" in messages[0]
    assert EpisodeDataset(tmp_path).indices == [0, 2]
    names = sorted(p.name for p in quarantined(tmp_path))
    assert names == ["episode.json", "episode_000001.mcap", "reason.txt", "steps.npz"]
    assert (tmp_path / "bags/episode_000000.mcap").exists() and not (
        tmp_path / "bags/episode_000001.mcap"
    ).exists()
    code, out, _ = cli("dataset", "ls", str(tmp_path))
    assert code == 0 and "DAMAGED" not in out and "2 episodes" in out


@pytest.mark.parametrize("action", [("recover",), ("rm", "0"), ("info",), ("ls",)])
def test_a_mistyped_path_gives_one_line_and_creates_nothing(tmp_path, action):
    typo = tmp_path / "datset" / "pick"
    code, out, err = cli("dataset", action[0], str(typo), *action[1:])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(typo) in err and "not a dexhier episode dataset" in err
    assert not (tmp_path / "datset").exists()
    plain = tmp_path / "plain"  # an existing directory that is not a dataset: left untouched
    plain.mkdir()
    code, _, err = cli("dataset", action[0], str(plain), *action[1:])
    assert code == 2 and list(plain.iterdir()) == []


def test_rm_removes_a_damaged_episode_and_its_bag(tmp_path):
    writer = EpisodeWriter(tmp_path, META)
    journal(writer, 0, 4).commit(success=True, meta={"bag": "bags/episode_000000.mcap"})
    (tmp_path / "bags").mkdir()
    (tmp_path / "bags/episode_000000.mcap").write_bytes(b"x")
    (tmp_path / "episodes/episode_000000/episode.json").write_text("{")
    code, out, err = cli("dataset", "rm", str(tmp_path), "0")
    assert code == 0, err
    assert not (tmp_path / "episodes/episode_000000").exists()
    assert not (tmp_path / "bags/episode_000000.mcap").exists()


def test_recovery_never_stops_at_one_bad_journal(tmp_path, monkeypatch):
    """A journal whose recovery fails outright (here: its directory cannot be listed) is reported and
    left in place; the other journals are still recovered."""
    writer = EpisodeWriter(tmp_path, META)
    journal(writer, 0, 5)
    journal(writer, 1, 5)
    bad = journal_path(tmp_path, 0)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == bad:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    messages = recover_dataset(tmp_path)
    monkeypatch.undo()
    assert any("could not be recovered" in m and "Permission denied" in m for m in messages), messages
    assert EpisodeDataset(tmp_path).indices == [1] and bad.exists()
    shutil.rmtree(bad)
    assert json.loads(json.dumps(messages))  # plain strings for --json
