"""Tests of dexhier.episodes: exact round trip, validation, atomic commit, versioning, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dexhier.episodes import (
    FORMAT_VERSION,
    EpisodeDataset,
    EpisodeFormatError,
    EpisodeRecorder,
    EpisodeWriter,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATASET_META = {"arm_joints": ["j1", "j2"], "cameras": ["scene"], "control_hz": 20.0}


def make_step(rng: np.random.Generator, t: int) -> dict[str, object]:
    depth = rng.uniform(0.2, 2.0, (12, 16)).astype(np.float32)
    depth[0, :3] = [np.nan, np.inf, -0.0]  # stored bit-exactly too
    return {
        "time": 0.05 * t,
        "rgb/scene": rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
        "depth/scene": depth,
        "arm/qpos": rng.normal(size=6),
        "tool/tip_gap": np.array([0.004 + 1e-4 * t]),
        "action": rng.normal(size=22),
        "action/request": rng.normal(size=22),
        "grasped": t % 2 == 0,
        "phase": t,
        "gain": np.float32(0.5),
        "file": np.arange(3, dtype=np.int16),  # a name np.savez would take as its own argument
    }


@pytest.fixture
def writer(tmp_path: Path) -> EpisodeWriter:
    return EpisodeWriter(tmp_path / "ds", DATASET_META)


def record(writer: EpisodeWriter, index: int, num_steps: int = 3, success: bool = True) -> Path:
    rng = np.random.default_rng(index)
    with writer.begin(index, {"seed": index}) as rec:
        for t in range(num_steps):
            rec.add_step(make_step(rng, t))
        return rec.commit(success)


def good_step() -> dict[str, object]:
    return {"arm/qpos": np.zeros(6), "time": 0.0}


def test_exact_round_trip(writer: EpisodeWriter) -> None:
    rng = np.random.default_rng(7)
    steps = [make_step(rng, t) for t in range(5)]
    with writer.begin(0, {}) as rec:
        for step in steps:
            rec.add_step(step)
        rec.commit(True)

    ep = EpisodeDataset(writer.root).episode(0)
    assert ep.num_steps == len(ep) == 5
    assert set(ep.keys) == set(steps[0])
    for key in ep.keys:
        expected = np.stack([np.asarray(step[key]) for step in steps])
        got = ep[key]
        assert got.dtype == expected.dtype, key
        assert got.shape == expected.shape, key
        assert got.tobytes() == expected.tobytes(), key  # bit-identical, NaN included
        if key != "depth/scene":
            assert np.array_equal(got, expected), key
    assert ep["time"].dtype == np.float64
    assert ep["time"].shape == (5,)
    assert ep["grasped"].dtype == np.bool_
    assert ep["phase"].dtype == np.int64
    assert ep["gain"].dtype == np.float32

    for t in (0, 3, -1):
        step = ep.step(t)
        assert set(step) == set(ep.keys)
        for key, value in step.items():
            expected = np.asarray(steps[t][key])
            assert isinstance(value, np.ndarray)
            assert value.dtype == expected.dtype
            assert value.shape == expected.shape
            assert value.tobytes() == expected.tobytes()
    with pytest.raises(IndexError):
        ep.step(5)


def test_arrays_are_copied_on_add_and_read_only_on_read(writer: EpisodeWriter) -> None:
    buffer = np.zeros(6)
    with writer.begin(0, {}) as rec:
        rec.add_step({"arm/qpos": buffer})
        buffer[:] = 1.0  # a renderer or driver reusing its buffer must not change what was recorded
        rec.add_step({"arm/qpos": buffer})
        rec.commit(True)
    ep = EpisodeDataset(writer.root).episode(0)
    assert np.array_equal(ep["arm/qpos"], [np.zeros(6), np.ones(6)])
    assert not ep["arm/qpos"].flags.writeable
    with pytest.raises(KeyError, match="nope"):
        ep["nope"]


def test_success_and_meta_round_trip(writer: EpisodeWriter) -> None:
    with writer.begin(3, {"task": "pick", "instruction": "pick up the bead", "seed": np.int64(11)}) as rec:
        rec.add_step(good_step())
        path = rec.commit(False, meta={"failure": "dropped", "task": "pick_small"})
    assert path == writer.root / "episodes" / "episode_000003"

    ds = EpisodeDataset(writer.root)
    assert ds.meta == DATASET_META
    assert ds.info["format_version"] == FORMAT_VERSION
    assert "created_at" in ds.info
    ep = ds.episode(3)
    assert ep.index == 3
    assert ep.success is False
    assert ep.meta == {
        "task": "pick_small",
        "instruction": "pick up the bead",
        "seed": 11,
        "failure": "dropped",
    }

    doc = json.loads((path / "episode.json").read_text())
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["index"] == 3
    assert doc["num_steps"] == 1
    assert doc["success"] is False
    assert doc["keys"] == {
        "arm/qpos": {"shape": [6], "dtype": "float64"},
        "time": {"shape": [], "dtype": "float64"},
    }
    assert sorted(os.listdir(path)) == ["episode.json", "steps.npz"]


def test_unserialisable_meta_fails_at_begin(writer: EpisodeWriter) -> None:
    with pytest.raises(ValueError, match="JSON"):
        writer.begin(0, {"when": object()})
    with pytest.raises(ValueError, match="JSON"):
        writer.begin(0, {"x": float("nan")})


@pytest.mark.parametrize(
    ("bad_step", "named"),
    [
        ({"arm/qpos": np.zeros(6)}, "time"),  # missing key
        ({**good_step(), "extra": 1.0}, "extra"),  # extra key
        ({"arm/qpos": np.zeros(7), "time": 0.0}, "arm/qpos"),  # other shape
        ({"arm/qpos": np.zeros(6, np.float32), "time": 0.0}, "arm/qpos"),  # other dtype
        ({"arm/qpos": np.zeros(6), "time": 1}, "time"),  # int where float was recorded
    ],
)
def test_mismatched_step_raises_and_recorder_stays_valid(
    writer: EpisodeWriter, bad_step: dict[str, object], named: str
) -> None:
    with writer.begin(0, {}) as rec:
        rec.add_step(good_step())
        with pytest.raises(ValueError, match=named):
            rec.add_step(bad_step)
        assert rec.num_steps == 1
        rec.add_step({"time": 0.05, "arm/qpos": np.ones(6)})  # key order does not matter
        rec.commit(True)
    ep = EpisodeDataset(writer.root).episode(0)
    assert ep.num_steps == 2
    assert np.array_equal(ep["time"], [0.0, 0.05])


def test_invalid_keys_and_values_are_rejected(writer: EpisodeWriter) -> None:
    rec = writer.begin(0, {})
    assert isinstance(rec, EpisodeRecorder)
    assert rec.index == 0
    with pytest.raises(TypeError):
        rec.add_step({1: np.zeros(2)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="obj"):
        rec.add_step({"obj": np.array([object()])})
    with pytest.raises(ValueError, match="ragged"):
        rec.add_step({"ragged": [[1, 2], [3]]})
    for key in ("", "/a", "a/", "a//b", "a b", "../x"):
        with pytest.raises(ValueError, match="key"):
            rec.add_step({key: 1.0})
    assert rec.num_steps == 0
    rec.add_step(good_step())
    rec.commit(True)


def test_empty_commit_raises(writer: EpisodeWriter) -> None:
    rec = writer.begin(0, {})
    with pytest.raises(ValueError, match="no steps"):
        rec.commit(True)
    assert not rec.closed
    assert EpisodeDataset(writer.root).indices == []
    rec.add_step(good_step())
    rec.commit(True)
    assert rec.closed
    with pytest.raises(RuntimeError):
        rec.add_step(good_step())


def test_duplicate_index_raises(writer: EpisodeWriter) -> None:
    first = writer.begin(1, {})
    second = writer.begin(1, {})
    first.add_step(good_step())
    first.commit(True)
    with pytest.raises(FileExistsError, match="episode 1"):
        writer.begin(1, {})
    second.add_step({"time": 9.0, "arm/qpos": np.ones(6)})
    with pytest.raises(FileExistsError, match="episode 1"):
        second.commit(True)
    ds = EpisodeDataset(writer.root)
    assert ds.indices == [1]
    assert ds.incomplete == []
    assert np.array_equal(ds.episode(1)["time"], [0.0])  # the first one is untouched


def test_version_mismatch_raises(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"format_version": 99, "meta": {}}))
    with pytest.raises(EpisodeFormatError, match="format_version 99"):
        EpisodeWriter(root, {})
    with pytest.raises(EpisodeFormatError, match="format_version 99"):
        EpisodeDataset(root)
    assert issubclass(EpisodeFormatError, ValueError)


def test_missing_dataset_json_raises(tmp_path: Path) -> None:
    with pytest.raises(EpisodeFormatError, match=r"dataset\.json is missing"):
        EpisodeDataset(tmp_path)


def test_episode_version_mismatch_raises(writer: EpisodeWriter) -> None:
    path = record(writer, 0)
    doc = json.loads((path / "episode.json").read_text())
    (path / "episode.json").write_text(json.dumps({**doc, "format_version": 2}))
    with pytest.raises(EpisodeFormatError, match="format_version 2"):
        EpisodeDataset(writer.root).episode(0)


def test_reopen_existing_dataset(writer: EpisodeWriter) -> None:
    record(writer, 0)
    again = EpisodeWriter(writer.root, dict(DATASET_META))
    record(again, 1)
    assert EpisodeDataset(writer.root).indices == [0, 1]
    with pytest.raises(ValueError, match="dataset_meta differs"):
        EpisodeWriter(writer.root, {**DATASET_META, "control_hz": 10.0})


def test_exception_inside_with_leaves_no_episode(writer: EpisodeWriter) -> None:
    with pytest.raises(RuntimeError, match="boom"), writer.begin(0, {}) as rec:
        rec.add_step(good_step())
        raise RuntimeError("boom")
    assert rec.closed
    ds = EpisodeDataset(writer.root)
    assert ds.indices == []
    assert ds.incomplete == []
    assert os.listdir(writer.episodes_dir) == []


def test_leaving_with_without_commit_warns_and_discards(writer: EpisodeWriter) -> None:
    with pytest.warns(RuntimeWarning, match="discards 1 steps"), writer.begin(0, {}) as rec:
        rec.add_step(good_step())
    assert EpisodeDataset(writer.root).indices == []


def test_indices_sorted_and_iteration_in_order(writer: EpisodeWriter) -> None:
    for index in (10, 0, 2):
        record(writer, index, success=index != 2)
    ds = EpisodeDataset(writer.root)
    assert ds.indices == [0, 2, 10]
    assert len(ds) == 3
    assert [(ep.index, ep.success) for ep in ds] == [(0, True), (2, False), (10, True)]
    with pytest.raises(KeyError):
        ds.episode(1)


def test_reader_ignores_tmp_leftovers(writer: EpisodeWriter) -> None:
    record(writer, 0)
    leftover = writer.episodes_dir / ".tmp-episode_000001-deadbeef"
    leftover.mkdir()
    (leftover / "steps.npz").write_bytes(b"PK\x03\x04 half written")
    ds = EpisodeDataset(writer.root)
    assert ds.indices == [0]
    assert len(ds) == 1
    assert ds.incomplete == [leftover]
    assert [ep.index for ep in ds] == [0]
    record(writer, 1)  # a leftover does not block the index
    assert EpisodeDataset(writer.root).indices == [0, 1]


CRASH_SCRIPT = """
import sys
import numpy as np
from dexhier.episodes import EpisodeWriter

writer = EpisodeWriter(sys.argv[1], {"cameras": ["scene"]})
for index in range(1000):
    rng = np.random.default_rng(index)
    with writer.begin(index, {"seed": index}) as rec:
        for t in range(4):
            rec.add_step({"rgb/scene": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), "time": 0.05 * t})
        print("commit", index, flush=True)
        rec.commit(success=index % 2 == 0)
    print("committed", index, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("delay_s", [0.0, 0.003, 0.02])
def test_sigkill_leaves_only_complete_episodes(tmp_path: Path, delay_s: float) -> None:
    root = tmp_path / "ds"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-c", CRASH_SCRIPT, str(root)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        watchdog = threading.Timer(60.0, proc.kill)
        watchdog.start()
        try:
            committed = 0
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("committed"):
                    committed += 1
                elif committed >= 3:  # "commit <i>": the child is about to write an episode
                    time.sleep(delay_s)
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            proc.wait()
        finally:
            watchdog.cancel()
        assert proc.stderr is not None
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()

    ds = EpisodeDataset(root)
    indices = ds.indices
    assert len(indices) >= 3
    assert indices == list(range(len(indices)))  # committed in order; nothing missing in between
    for ep in ds:
        rng = np.random.default_rng(ep.index)
        expected = np.stack([rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(4)])
        assert ep.num_steps == 4
        assert ep.success == (ep.index % 2 == 0)
        assert ep.meta == {"seed": ep.index}
        assert np.array_equal(ep["rgb/scene"], expected)
        assert np.array_equal(ep["time"], 0.05 * np.arange(4))
    for name in os.listdir(ds.episodes_dir):  # anything else is an uncommitted .tmp- directory
        assert name.startswith(".tmp-") or name.startswith("episode_"), name
    assert all(path.name.startswith(".tmp-episode_") for path in ds.incomplete)
