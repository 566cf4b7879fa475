"""One damaged file must not break a dataset: the reader, `dexhier dataset` and training skip it and name it.

Each test damages a real file the way a crash, a full disk or a bad copy does (a truncated zip, a
corrupted member, a cut JSON) and checks that the error names the file while intact episodes still
list, read and train.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dexhier import vocabulary as V
from dexhier.episodes import EpisodeDataset, EpisodeFormatError, EpisodeWriter

ARM, HAND = 6, 16
META = {
    "source": "test",
    "task": "tweezer_pick",
    "control_hz": 20.0,
    "cameras": ["scene", "wrist"],
    "arm_joints": [f"a{i}" for i in range(ARM)],
    "hand_joints": [f"h{i}" for i in range(HAND)],
    "action_lower": [-3.0] * (ARM + HAND),
    "action_upper": [3.0] * (ARM + HAND),
}


def _step(rng: np.random.Generator, t: int) -> dict:
    return {
        V.STEP_TIME: t * 0.05,
        V.OBS_ARM_QPOS: rng.normal(size=ARM),
        V.OBS_HAND_QPOS: rng.normal(size=HAND),
        V.OBS_TOOL_TIP_GAP: np.array([0.004]),
        V.ACTION: rng.uniform(-1, 1, ARM + HAND),
        V.rgb_key("scene"): rng.integers(0, 256, (64, 64, 3), np.uint8),
        V.rgb_key("wrist"): rng.integers(0, 256, (64, 64, 3), np.uint8),
    }


def make_dataset(root: Path, episodes: int = 3, steps: int = 12) -> EpisodeWriter:
    writer = EpisodeWriter(root, META)
    for index in range(episodes):
        rng = np.random.default_rng(index)
        with writer.begin(index, {"task": "tweezer_pick", "instruction": "pick"}) as rec:
            for t in range(steps):
                rec.add_step(_step(rng, t))
            rec.commit(success=True)
    return writer


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def corrupt_member(path: Path, member: str) -> None:
    """Flip bytes inside one member's data, leaving the zip directory intact (a bad sector)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 200
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))


def steps_file(root: Path, index: int) -> Path:
    return root / "episodes" / f"episode_{index:06d}" / "steps.npz"


def test_truncated_steps_file_is_skipped_and_named_while_the_others_read(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    truncate(steps_file(root, 1))
    ds = EpisodeDataset(root)
    with pytest.warns(UserWarning, match=r"episode_000001/steps\.npz"):
        episodes = list(ds)
    assert [ep.index for ep in episodes] == [0, 2]
    for ep in episodes:  # intact episodes read in full
        assert ep[V.rgb_key("scene")].shape == (12, 64, 64, 3)
    with pytest.raises(EpisodeFormatError, match=r"episode_000001/steps\.npz"):
        ds.episode(1)


def test_a_corrupted_member_raises_a_format_error_naming_the_file(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root, episodes=1)
    corrupt_member(steps_file(root, 0), V.rgb_key("scene") + ".npy")
    ep = EpisodeDataset(root).episode(0)
    assert ep[V.STEP_TIME].shape == (12,)  # the other members are fine
    with pytest.raises(EpisodeFormatError, match=r"episode_000000/steps\.npz.*rgb/scene"):
        ep[V.rgb_key("scene")]


def test_a_cut_episode_json_is_skipped(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    doc = root / "episodes" / "episode_000000" / "episode.json"
    truncate(doc, 0.3)
    with pytest.warns(UserWarning, match=r"episode_000000/episode\.json"):
        assert [ep.index for ep in EpisodeDataset(root)] == [1, 2]


def test_training_data_loads_the_intact_episodes(tmp_path):
    pytest.importorskip("torch")
    from policies.low_level.config import PolicyConfig
    from policies.low_level.dataset import ChunkDataset

    root = tmp_path / "ds"
    make_dataset(root, episodes=3)
    truncate(steps_file(root, 0))
    with pytest.warns(UserWarning, match="episode_000000"):
        data = ChunkDataset([root], PolicyConfig())
    assert data.num_episodes == 2 and len(data) == 24


def _cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from dexhier.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_dataset_info_ls_show_report_the_damaged_episode_and_list_the_rest(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    truncate(steps_file(root, 1))
    code, out, _ = _cli("dataset", "ls", str(root), "--json")
    assert code == 0
    rows = json.loads(out.strip().splitlines()[-1])["episodes"]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[1]["error"] and "episode_000001/steps.npz" in rows[1]["error"]
    assert rows[0]["steps"] == 12 and "error" not in rows[0]
    assert "DAMAGED" in out and "episode_000001/steps.npz" in out
    code, out, _ = _cli("dataset", "info", str(root), "--json")
    info = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and info["episodes"] == 2 and info["steps"] == 24
    assert list(info["damaged"]) == ["1"] or list(info["damaged"]) == [1]
    code, _, err = _cli("dataset", "show", str(root), "1")
    assert code == 2 and "episode_000001/steps.npz" in err and len(err.strip().splitlines()) == 1
    code, out, _ = _cli("dataset", "show", str(root), "2")
    assert code == 0 and "steps" in out
