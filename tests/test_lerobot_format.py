"""LeRobot v3 export and import: layout, exact round trip, generic import, hostile input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dexhier import vocabulary as V
from dexhier.cli import main
from dexhier.episodes import EpisodeDataset, EpisodeWriter
from dexhier.lerobot_export import export_lerobot
from dexhier.lerobot_format import LeRobotFormatError
from dexhier.lerobot_import import import_lerobot

S = 32  # image side, px
LENGTHS = (7, 12, 5)
INDICES = (0, 3, 4)  # not contiguous: LeRobot renumbers, the sidecar restores them
ARM, HAND = list(V.ARM_JOINTS), list(V.HAND_JOINTS)
A = len(ARM) + len(HAND)


def _meta() -> dict:
    return {
        "source": "test",
        "task": "tool_open_to",
        "arm_joints": ARM,
        "hand_joints": HAND,
        "action_names": ARM + HAND,
        "action_lower": [-3.0] * A,
        "action_upper": [3.0] * A,
        "cameras": ["scene", "wrist"],
        "image_size": [S, S],
        "control_hz": 20.0,
    }


def _image(rng: np.random.Generator, e: int, t: int) -> np.ndarray:
    """A smooth picture (what an H.264 codec keeps well) that changes with the episode and step."""
    y, x = np.mgrid[0:S, 0:S] / S
    cx, cy = 0.3 + 0.02 * t, 0.5 + 0.1 * e
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02)
    img = np.stack([200 * blob + 30, 120 * x + 60, 100 * y + 40 * blob + 50], -1)
    return np.clip(img + rng.normal(0, 1.0, img.shape), 0, 255).astype(np.uint8)


def write_source(root: Path, lengths=LENGTHS, odd_episode: int | None = None) -> Path:
    """A dexhier dataset with every kind of key the exporter meets (random float64, NaN, -0.0, bool)."""
    rng = np.random.default_rng(0)
    w = EpisodeWriter(root, _meta())
    for e, (index, n) in enumerate(zip(INDICES, lengths, strict=False)):
        meta = {"task": "tool_open_to", "instruction": f"open to {10 + e} mm", "seed": e, "target_gap": 0.01}
        with w.begin(index, meta) as rec:
            for t in range(n):
                request = rng.normal(size=A)
                if t == 1:
                    request[:] = np.nan  # an invalid teleop command
                step = {
                    "time": 0.05 * t + 100.0,
                    "arm/qpos": rng.normal(size=6),
                    "arm/qvel": rng.normal(size=6),
                    "hand/qpos": rng.normal(size=16),
                    "hand/qvel": rng.normal(size=16),
                    "tool/tip_gap": np.array([-0.0 if t == 0 else rng.uniform(0, 0.03)]),
                    "action": rng.normal(size=A),
                    "action/request": request,
                    "rgb/scene": _image(rng, e, t),
                    "rgb/wrist": _image(rng, e + 5, t)[::-1].copy(),
                    "depth/scene": rng.uniform(0.2, 1.0, (S, S)).astype(np.float32),
                    "camera_pose/scene": rng.normal(size=(4, 4)),
                    "privileged/object_pos": rng.normal(size=3),
                    "safety/held": bool(t % 3 == 0),
                    "teleop/grip": float(rng.uniform(-1, 1)),
                }
                if odd_episode == e:
                    step["extra/key"] = 1.0
                rec.add_step(step)
            rec.commit(success=e != 1)
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("src") / "ds")


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lerobot") / "lr"
    export_lerobot(source, out, progress=False)
    return out


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():  # checks that fail before writing do not even create the parent
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


# ----------------------------------------------------------------------------- export layout
def test_export_writes_the_v3_layout(exported):
    info = json.loads((exported / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == 20 and info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS)
    feats = info["features"]
    assert feats["observation.state"] == {"dtype": "float64", "shape": [A], "names": ARM + HAND}
    assert feats["action"]["shape"] == [A] and feats["observation.tool_tip_gap"]["shape"] == [1]
    assert feats["observation.images.scene"]["dtype"] == "video"
    assert feats["observation.images.scene"]["shape"] == [S, S, 3]
    assert feats["dexhier.camera_pose.scene"]["shape"] == [16]
    assert not any("depth" in k or "/" in k for k in feats)  # depth skipped; "/" is not allowed by LeRobot

    data = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    assert set(data.column_names) == {k for k, ft in feats.items() if ft["dtype"] != "video"}
    assert data.num_rows == sum(LENGTHS)
    assert data.schema.field("observation.state").type == pa.list_(pa.float64(), A)
    assert data.schema.field("timestamp").type == pa.float32()
    ep_index = data["episode_index"].to_numpy()
    np.testing.assert_array_equal(ep_index, np.repeat([0, 1, 2], LENGTHS))
    np.testing.assert_array_equal(data["index"].to_numpy(), np.arange(sum(LENGTHS)))

    rows = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["length"] for r in rows] == list(LENGTHS)
    assert [r["dataset_to_index"] for r in rows] == list(np.cumsum(LENGTHS))
    assert rows[1]["videos/observation.images.wrist/from_timestamp"] == pytest.approx(LENGTHS[0] / 20)
    assert rows[2]["tasks"] == ["open to 12 mm"]

    tasks = pq.read_table(exported / "meta/tasks.parquet")
    assert tasks["task"].to_pylist() == ["open to 10 mm", "open to 11 mm", "open to 12 mm"]
    assert tasks["task_index"].to_pylist() == [0, 1, 2]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    stats = json.loads((exported / "meta/stats.json").read_text())
    state = np.concatenate([data["observation.state"].combine_chunks().flatten().to_numpy().reshape(-1, A)])
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0))
    np.testing.assert_allclose(stats["observation.state"]["max"], state.max(0))
    assert np.array(stats["observation.images.scene"]["mean"]).shape == (3, 1, 1)
    assert stats["dexhier.action.request"]["count"] == [sum(LENGTHS)]
    assert all(v is not None for v in stats["dexhier.action.request"]["min"])  # NaN steps are ignored

    with imageio.get_reader(str(exported / "videos/observation.images.scene/chunk-000/file-000.mp4")) as r:
        assert sum(1 for _ in r) == sum(LENGTHS)


# ----------------------------------------------------------------------------- round trip
def test_round_trip_gives_the_same_arrays(source, exported, tmp_path):
    out = tmp_path / "back"
    summary = import_lerobot(exported, out, progress=False)
    assert summary["sidecar"] and summary["episodes"] == 3
    a, b = EpisodeDataset(source), EpisodeDataset(out)
    assert b.meta == a.meta and b.indices == a.indices == list(INDICES)
    for ea in a:
        eb = b.episode(ea.index)
        assert (eb.success, eb.meta, eb.num_steps) == (ea.success, ea.meta, ea.num_steps)
        assert set(eb.keys) == {k for k in ea.keys if not k.startswith("depth/")}
        for key in eb.keys:
            x, y = np.asarray(ea[key]), np.asarray(eb[key])
            assert (y.dtype, y.shape) == (x.dtype, x.shape), key
            if key.startswith("rgb/"):
                diff = np.abs(x.astype(int) - y.astype(int))
                assert diff.mean() < 4.0 and np.percentile(diff, 99) < 40, (key, diff.mean())
            else:  # bit for bit: NaN requests and -0.0 included
                assert x.tobytes() == y.tobytes(), key


def test_imported_dataset_feeds_the_low_level_trainer(exported, tmp_path):
    from policies.low_level.config import PolicyConfig
    from policies.low_level.dataset import ChunkDataset, GoalSampling

    out = tmp_path / "back"
    import_lerobot(exported, out, progress=False)
    data = ChunkDataset([out], PolicyConfig(image_size=S))
    assert len(data) == sum(LENGTHS)
    batch = data.sample(4, np.random.default_rng(0), GoalSampling())
    assert batch["images"].shape == (4, 2, S, S, 3) and batch["actions"].shape[-1] == A


def test_generic_import_without_the_sidecar(source, exported, tmp_path):
    """A dataset LeRobot wrote has no meta/dexhier.json: state and action are split at --arm-dof."""
    lr = tmp_path / "foreign"
    shutil.copytree(exported, lr)
    (lr / "meta/dexhier.json").unlink()
    info = json.loads((lr / "meta/info.json").read_text())
    del info["features"]["observation.tool_tip_gap"]  # a LeRobot robot has no tweezers
    info["features"]["observation.state"]["names"] = {"motors": ARM + HAND}  # the older names form
    (lr / "meta/info.json").write_text(json.dumps(info))
    out = tmp_path / "generic"
    summary = import_lerobot(
        lr, out, arm_dof=6, camera_map={"wrist": "scene", "scene": "wrist"}, progress=False
    )
    assert not summary["sidecar"]
    a, b = EpisodeDataset(source), EpisodeDataset(out)
    assert b.indices == [0, 1, 2]
    assert b.meta["arm_joints"] == ARM and b.meta["hand_joints"] == HAND
    actions = np.concatenate([ep["action"] for ep in a])
    np.testing.assert_array_equal(b.meta["action_lower"], actions.min(0))
    np.testing.assert_array_equal(b.meta["action_upper"], actions.max(0))
    for ea, eb in zip(a, b, strict=True):
        for key in ("arm/qpos", "hand/qpos", "arm/qvel", "hand/qvel", "action"):
            np.testing.assert_array_equal(eb[key], ea[key])
        np.testing.assert_array_equal(eb["tool/tip_gap"], np.zeros((ea.num_steps, 1)))
        assert eb.success and eb.meta["instruction"] == ea.meta["instruction"]
        assert np.abs(eb["rgb/scene"].astype(int) - ea["rgb/wrist"]).mean() < 4.0  # renamed cameras


def test_generic_import_resizes_images(exported, tmp_path):
    lr = tmp_path / "foreign"
    shutil.copytree(exported, lr)
    (lr / "meta/dexhier.json").unlink()
    out = tmp_path / "small"
    import_lerobot(lr, out, image_size=16, progress=False)
    ds = EpisodeDataset(out)
    assert ds.meta["image_size"] == [16, 16] and ds.episode(0)["rgb/scene"].shape == (LENGTHS[0], 16, 16, 3)


# ----------------------------------------------------------------------------- hostile input
def _edit_info(root: Path, fn) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    fn(info)
    (root / "meta/info.json").write_text(json.dumps(info))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "missing info": (lambda r: (r / "meta/info.json").unlink(), "meta/info.json is missing"),
    "wrong version": (lambda r: _edit_info(r, lambda i: i.update(codebase_version="v2.1")), "'v2.1' is not"),
    "missing tasks": (lambda r: (r / "meta/tasks.parquet").unlink(), "tasks.parquet is missing"),
    "missing episodes": (lambda r: shutil.rmtree(r / "meta/episodes"), "no episode metadata"),
    "action shape": (
        lambda r: _edit_info(r, lambda i: i["features"]["action"].update(shape=[A + 1])),
        f"size {A}, meta/info.json says [{A + 1}]",
    ),
    "damaged data": (
        lambda r: _truncate(r / "data/chunk-000/file-000.parquet"),
        "damaged or unreadable data",
    ),
    "damaged episodes": (
        lambda r: _truncate(r / "meta/episodes/chunk-000/file-000.parquet"),
        "damaged or unreadable episode",
    ),
    "missing video": (
        lambda r: (r / "videos/observation.images.wrist/chunk-000/file-000.mp4").unlink(),
        "video file is missing",
    ),
    "short video": (
        lambda r: _edit_info(r, lambda i: i.update(fps=40)),  # spans now point past the end of the video
        "video ends at frame",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_hostile_input_gives_one_line_and_writes_nothing(exported, tmp_path, case):
    damage, expected = DAMAGE[case]
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    damage(bad)
    out = tmp_path / "out" / "ds"
    with pytest.raises(LeRobotFormatError) as err:
        import_lerobot(bad, out, progress=False)
    assert expected in str(err.value) and "\n" not in str(err.value)
    _no_leftovers(out)


def test_cli_reports_a_bad_dataset_on_one_line(exported, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    _edit_info(bad, lambda i: i.update(codebase_version="v2.1"))
    out = tmp_path / "ds"
    assert main(["dataset", "import", str(bad), "--format", "lerobot", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dexhier: error:") and "codebase_version 'v2.1'" in err and "\n" not in err
    _no_leftovers(out)


def test_cli_export_then_import(source, tmp_path, capsys):
    lr, back = tmp_path / "lr", tmp_path / "back"
    assert main(["dataset", "export", str(source), "--format", "lerobot", "--out", str(lr), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["frames"] == sum(LENGTHS)
    assert main(["dataset", "import", str(lr), "--format", "lerobot", "--out", str(back)]) == 0
    assert EpisodeDataset(back).indices == list(INDICES)


def test_export_refuses_an_existing_out_and_mixed_episodes(source, tmp_path):
    out = tmp_path / "lr"
    out.mkdir()
    with pytest.raises(LeRobotFormatError, match="already exists"):
        export_lerobot(source, out, progress=False)
    mixed = write_source(tmp_path / "mixed", odd_episode=2)
    with pytest.raises(LeRobotFormatError, match="episode 4 has other keys"):
        export_lerobot(mixed, tmp_path / "mixed_lr", progress=False)
    _no_leftovers(tmp_path / "mixed_lr")
