"""Tests of the low-level policy on a tiny synthetic dataset: data, training, checkpoints, inference.

The dataset is written by the tests with ``EpisodeWriter``. Each step encodes where it comes from:
action / arm joint 0 = 0.5 * episode, action / arm joint 1 = 0.04 * t, tip gap = 0.01 (e + 1) + 0.0002 t,
and pixel (0, 0) of every image = (episode, t, camera), so a batch can be traced back to its source.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dexhier import vocabulary as V
from dexhier.checkpoints import CheckpointError
from dexhier.episodes import EpisodeWriter
from policies.low_level import CHECKPOINT_TYPE, LowLevelPolicy, PolicyConfig
from policies.low_level.dataset import ChunkDataset, GoalSampling
from policies.low_level.network import NetConfig
from policies.low_level.training import TrainConfig, Trainer, train

A = len(V.ARM_JOINTS) + len(V.HAND_JOINTS)
N_ARM = len(V.ARM_JOINTS)
LOWER = -2.0 - 0.05 * np.arange(A)
UPPER = 2.0 + 0.05 * np.arange(A)
LENGTHS = (25, 20, 30, 25)
CAM_CODE = {"scene": 1, "wrist": 2}
S = 64

SMALL_NET = NetConfig(d_model=32, layers=1, heads=2, image_channels=(8, 8), keypoints=4)
SMALL = PolicyConfig(net=SMALL_NET, horizon=8, exec_steps=4, obs_horizon=2)  # history paths tested


def small_train_config(steps: int = 2, **kw) -> TrainConfig:
    kw.setdefault("policy", SMALL)
    return TrainConfig(steps=steps, batch_size=8, checkpoint_every=2, val_episodes=0.25, **kw)


# ----------------------------------------------------------------------------- synthetic data
def dataset_meta(arm_joints=V.ARM_JOINTS) -> dict:
    return {
        "source": "test",
        "arm_joints": list(arm_joints),
        "hand_joints": list(V.HAND_JOINTS),
        "action_lower": LOWER.tolist(),
        "action_upper": UPPER.tolist(),
        "cameras": list(V.DEFAULT_CAMERAS),
    }


def joints(e: int, t: int) -> np.ndarray:
    q = 0.5 * np.sin(0.2 * t + 0.3 * np.arange(A) + e)
    q[0], q[1] = 0.5 * e, 0.04 * t
    return q


def tip_gap(e: int, t: int) -> float:
    return 0.01 * (e + 1) + 0.0002 * t


def image(e: int, t: int, cam: str, size: int = S) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([(4 * x + 8 * t) % 256, (4 * y + 30 * e) % 256, (2 * x + 2 * y) % 256], -1).astype(
        np.uint8
    )
    img[0, 0] = (e, t, CAM_CODE[cam])
    return img


def write_dataset(root: Path, lengths=LENGTHS, meta: dict | None = None, size: int = S) -> Path:
    w = EpisodeWriter(root, meta or dataset_meta())
    for e, n in enumerate(lengths):
        with w.begin(e, {"task": "synthetic"}) as rec:
            for t in range(n):
                q = joints(e, t)
                step = {
                    V.STEP_TIME: 0.05 * t,
                    V.OBS_ARM_QPOS: q[:N_ARM],
                    V.OBS_HAND_QPOS: q[N_ARM:],
                    V.OBS_TOOL_TIP_GAP: np.array([tip_gap(e, t)]),
                    V.ACTION: q,
                    V.ACTION_REQUEST: q,
                }
                for cam in V.DEFAULT_CAMERAS:
                    step[V.rgb_key(cam)] = image(e, t, cam, size)
                rec.add_step(step)
            rec.commit(True)
    return root


def observation(e: int = 1, t: int = 5) -> dict[str, np.ndarray]:
    q = joints(e, t)
    obs = {
        V.OBS_ARM_QPOS: q[:N_ARM],
        V.OBS_HAND_QPOS: q[N_ARM:],
        V.OBS_TOOL_TIP_GAP: np.array([tip_gap(e, t)]),
    }
    for cam in V.DEFAULT_CAMERAS:
        obs[V.rgb_key(cam)] = image(e, t, cam)
    return obs


def goal_of(e: int = 1, t: int = 15) -> dict[str, np.ndarray]:
    return {V.GOAL_RGB: image(e, t, "scene"), V.GOAL_TOOL_TIP_GAP: np.array([tip_gap(e, t)])}


def in_limits(a: np.ndarray) -> bool:
    return bool(np.all(a >= LOWER - 1e-12) and np.all(a <= UPPER + 1e-12))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lowlevel_data") / "ds")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> tuple[Path, dict, list[str]]:
    """A checkpoint of the small network after 2 training steps: (dir, metrics, log lines)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("lowlevel_ckpt") / "ckpt"
    log: list[str] = []
    metrics = train([data_dir], out, small_train_config(2), log=log.append)
    return out, metrics, log


@pytest.fixture
def policy(trained) -> LowLevelPolicy:
    return LowLevelPolicy.load(trained[0])


@pytest.fixture
def ckpt_copy(trained, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(trained[0], dst)
    return dst


# ----------------------------------------------------------------------------- dataset
def test_chunk_dataset_shapes(data_dir) -> None:
    ds = ChunkDataset([data_dir], SMALL)
    assert len(ds) == sum(LENGTHS) and ds.num_episodes == len(LENGTHS)
    assert ds.layout.arm_joints == V.ARM_JOINTS and ds.layout.hand_joints == V.HAND_JOINTS
    np.testing.assert_array_equal(ds.layout.lower, LOWER)
    b = ds.sample(16, np.random.default_rng(0), GoalSampling())
    assert b["proprio"].shape == (16, SMALL.obs_horizon, A + 1)
    assert b["images"].shape == (16, len(SMALL.cameras), S, S, 3) and b["images"].dtype == np.uint8
    assert b["goal_image"].shape == (16, S, S, 3) and b["goal_image"].dtype == np.uint8
    assert b["goal_gap"].shape == (16, 1)
    assert b["actions"].shape == (16, SMALL.horizon, A)


def test_chunk_dataset_never_crosses_episodes(data_dir) -> None:
    ds = ChunkDataset([data_dir], SMALL)
    goals = GoalSampling(min_offset=2, max_offset=12)
    b = ds.sample(1024, np.random.default_rng(1), goals)
    ep = np.rint(b["proprio"][:, -1, 0] / 0.5).astype(int)
    t = np.rint(b["proprio"][:, -1, 1] / 0.04).astype(int)
    last = np.array(LENGTHS)[ep] - 1
    assert set(ep) == set(range(len(LENGTHS)))
    assert (t == last).any() and (t == 0).any()  # the batch reaches both episode ends
    # proprio history: same episode, steps t-1, t (the first step repeated at the start)
    np.testing.assert_allclose(b["proprio"][:, :, 0], 0.5 * ep[:, None].repeat(SMALL.obs_horizon, 1))
    hist_t = np.clip(t[:, None] + np.arange(-SMALL.obs_horizon + 1, 1), 0, None)
    np.testing.assert_allclose(b["proprio"][:, :, 1], 0.04 * hist_t, atol=1e-6)
    # action chunk: same episode, steps t .. t+H-1 padded with the episode's last action
    np.testing.assert_allclose(b["actions"][:, :, 0], 0.5 * ep[:, None].repeat(SMALL.horizon, 1))
    chunk_t = np.minimum(t[:, None] + np.arange(SMALL.horizon), last[:, None])
    np.testing.assert_allclose(b["actions"][:, :, 1], 0.04 * chunk_t, atol=1e-6)
    # observation images: the same step, each camera in config order
    for c, cam in enumerate(SMALL.cameras):
        np.testing.assert_array_equal(
            b["images"][:, c, 0, 0], np.stack([ep, t, np.full_like(t, CAM_CODE[cam])], 1)
        )
    # goal: a later frame of the same episode, its gap and goal-camera image agree
    gap = b["goal_gap"][:, 0].astype(np.float64)
    goal_ep = np.floor(gap / 0.01 + 1e-6).astype(int) - 1
    goal_t = np.rint((gap - 0.01 * (goal_ep + 1)) / 0.0002).astype(int)
    np.testing.assert_array_equal(goal_ep, ep)
    assert np.all(goal_t >= np.minimum(t + goals.min_offset, last))
    assert np.all(goal_t <= np.minimum(t + goals.max_offset, last))
    assert (goal_t == last).any()
    cam_code = CAM_CODE[SMALL.goal_camera]
    np.testing.assert_array_equal(
        b["goal_image"][:, 0, 0], np.stack([ep, goal_t, np.full_like(t, cam_code)], 1)
    )


def test_chunk_dataset_episode_subset_and_short_episodes(tmp_path) -> None:
    root = write_dataset(tmp_path / "ds", lengths=(6, 1, 7))
    ds = ChunkDataset([root], SMALL)  # the 1-step episode is skipped
    assert ds.num_episodes == 2 and len(ds) == 13
    sub = ChunkDataset([root], SMALL, episodes=[1])
    assert sub.num_episodes == 1 and len(sub) == 7
    np.testing.assert_allclose(sub.proprio[:, 0], 0.5 * 2)  # episode index 2 on disk


def test_datasets_with_different_joint_names_are_rejected(tmp_path, data_dir) -> None:
    other = write_dataset(
        tmp_path / "other", lengths=(5,), meta=dataset_meta(tuple(f"j{i}" for i in range(6)))
    )
    with pytest.raises(ValueError, match="different joint names"):
        ChunkDataset([data_dir, other], SMALL)
    # same names, two datasets: concatenated
    same = write_dataset(tmp_path / "same", lengths=(5,))
    assert len(ChunkDataset([data_dir, same], SMALL)) == sum(LENGTHS) + 5


def test_dataset_with_wrong_image_size_names_the_key(tmp_path) -> None:
    root = write_dataset(tmp_path / "small_images", lengths=(4,), size=32)
    with pytest.raises(ValueError, match="rgb/scene"):
        ChunkDataset([root], SMALL)


def test_dataset_missing_key_or_meta(tmp_path) -> None:
    w = EpisodeWriter(tmp_path / "nokey", dataset_meta())
    with w.begin(0, {}) as rec:
        for t in range(3):
            q = joints(0, t)
            step = {V.OBS_ARM_QPOS: q[:N_ARM], V.OBS_HAND_QPOS: q[N_ARM:], V.ACTION: q}
            step[V.OBS_TOOL_TIP_GAP] = np.array([0.01])
            step[V.rgb_key("scene")] = image(0, t, "scene")  # no wrist image
            rec.add_step(step)
        rec.commit(True)
    with pytest.raises(ValueError, match="rgb/wrist"):
        ChunkDataset([tmp_path / "nokey"], SMALL)
    meta = dataset_meta()
    del meta["action_upper"]
    root = write_dataset(tmp_path / "nometa", lengths=(3,), meta=meta)
    with pytest.raises(ValueError, match="action_upper"):
        ChunkDataset([root], SMALL)


# ----------------------------------------------------------------------------- training and checkpoints
def test_train_writes_a_checkpoint(trained) -> None:
    out, metrics, log = trained
    for name in ("model.safetensors", "config.json", "normalization.json", "train_state.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "config.json").read_text())
    assert doc["type"] == CHECKPOINT_TYPE == "dexhier.lowlevel_policy"
    assert doc["format_version"] == 1
    assert PolicyConfig.from_json(doc["config"]["policy"]) == SMALL
    assert doc["config"]["robot"]["arm_joints"] == list(V.ARM_JOINTS)
    np.testing.assert_allclose(doc["config"]["robot"]["lower"], LOWER)
    assert doc["metrics"]["step"] == 2
    stats = json.loads((out / "normalization.json").read_text())
    assert set(stats) == {"proprio", "action", "goal_gap", "aux_object", "aux_goal_tip"}
    assert len(stats["action"]["min"]) == A and len(stats["proprio"]["min"]) == A + 1
    assert metrics["step"] == 2 and metrics["world_size"] == 1
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_chunk_mae"])
    n_train = sum(LENGTHS) - LENGTHS[np.random.default_rng(0).permutation(len(LENGTHS))[0]]
    assert f"data: {n_train} training steps from 3 episodes, 1 validation episodes" in log[0], log
    assert not any("resuming" in m for m in log)


def test_train_resumes_with_more_steps(trained, ckpt_copy, data_dir) -> None:
    before = (ckpt_copy / "model.safetensors").read_bytes()
    log: list[str] = []
    metrics = train([data_dir], ckpt_copy, small_train_config(4), log=log.append)
    assert metrics["step"] == 4
    assert any("resuming at step 2" in m for m in log), log
    assert json.loads((ckpt_copy / "train_state.json").read_text())["step"] == 4
    assert json.loads((ckpt_copy / "config.json").read_text())["metrics"]["step"] == 4
    assert (ckpt_copy / "model.safetensors").read_bytes() != before
    # nothing left to do: no new step, and the checkpoint is unchanged
    after = (ckpt_copy / "model.safetensors").read_bytes()
    log.clear()
    train([data_dir], ckpt_copy, small_train_config(4), log=log.append)
    assert any("resuming at step 4" in m for m in log)
    assert (ckpt_copy / "model.safetensors").read_bytes() == after


def test_train_refuses_another_recipe_in_the_same_dir(ckpt_copy, data_dir) -> None:
    with pytest.raises(ValueError, match="another recipe"):
        train([data_dir], ckpt_copy, small_train_config(4, lr=1e-3), log=lambda m: None)
    other = PolicyConfig(net=SMALL_NET, horizon=8, exec_steps=2)
    with pytest.raises(ValueError, match="another recipe"):
        train([data_dir], ckpt_copy, small_train_config(4, policy=other), log=lambda m: None)


def test_fine_tuning_starts_from_the_checkpoint_weights(trained, tmp_path, data_dir) -> None:
    start = LowLevelPolicy.load(trained[0], traced=False)
    cfg = small_train_config(1, init_from=str(trained[0]), lr=1e-9)
    train([data_dir], tmp_path / "ft", cfg, log=lambda m: None)
    tuned = LowLevelPolicy.load(tmp_path / "ft", traced=False)
    # One step at a vanishing learning rate: the weights are the start's, not a fresh init.
    for (k, a), b in zip(start.net.state_dict().items(), tuned.net.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), k
    assert tuned.normalizer.to_json() == start.normalizer.to_json()
    with pytest.raises(FileNotFoundError, match="init-from"):
        small_train_config(1, init_from=str(tmp_path / "nothing"))
    other = PolicyConfig(net=NetConfig(d_model=16, layers=1, heads=2, image_channels=(8, 8), keypoints=4))
    with pytest.raises(ValueError, match="another robot layout or network"):
        train([data_dir], tmp_path / "ft2", small_train_config(1, init_from=str(trained[0]), policy=other),
              log=lambda m: None)  # fmt: skip


def test_load_rejects_other_checkpoint_types_and_versions(ckpt_copy) -> None:
    path = ckpt_copy / "config.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "type": "dexhier.affordance_encoder"}))
    with pytest.raises(CheckpointError, match="affordance_encoder"):
        LowLevelPolicy.load(ckpt_copy)
    path.write_text(json.dumps({**doc, "format_version": 2}))
    with pytest.raises(CheckpointError, match="format version 2"):
        LowLevelPolicy.load(ckpt_copy)
    path.write_text(json.dumps(doc))
    (ckpt_copy / "normalization.json").unlink()
    with pytest.raises(CheckpointError, match="normalization.json"):
        LowLevelPolicy.load(ckpt_copy)


def test_load_rejects_weights_of_another_depth(ckpt_copy) -> None:
    path = ckpt_copy / "config.json"
    doc = json.loads(path.read_text())
    doc["config"]["policy"]["net"]["layers"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="do not match"):
        LowLevelPolicy.load(ckpt_copy)


def test_load_rejects_weights_of_another_width(ckpt_copy) -> None:
    path = ckpt_copy / "config.json"
    doc = json.loads(path.read_text())
    doc["config"]["policy"]["net"]["d_model"] = 64
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError):
        LowLevelPolicy.load(ckpt_copy)


def test_load_rejects_unknown_config_keys(ckpt_copy) -> None:
    path = ckpt_copy / "config.json"
    doc = json.loads(path.read_text())
    doc["config"]["policy"]["bogus"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="bogus"):
        LowLevelPolicy.load(ckpt_copy)


# ----------------------------------------------------------------------------- inference
def test_predict_chunk_shape_limits_and_purity(policy) -> None:
    obs, goal = observation(), goal_of()
    for d in (obs, goal):
        for v in d.values():
            v.flags.writeable = False  # any in-place change raises
    obs_copy, goal_copy = copy.deepcopy(obs), copy.deepcopy(goal)
    chunk = policy.predict_chunk(obs, goal)
    assert chunk.shape == (SMALL.horizon, A)
    assert np.isfinite(chunk).all() and in_limits(chunk)
    assert np.ptp(chunk) > 0
    for d, c in ((obs, obs_copy), (goal, goal_copy)):
        assert d.keys() == c.keys()
        for k in d:
            np.testing.assert_array_equal(d[k], c[k])
    assert policy.nonfinite_fallbacks == 0


@pytest.mark.parametrize("lam", [1.0, 2.0])
def test_traced_and_eager_networks_agree(trained, lam: float) -> None:
    traced = LowLevelPolicy.load(trained[0], cfg_lambda=lam)
    eager = LowLevelPolicy.load(trained[0], traced=False, cfg_lambda=lam)
    assert traced.traced and not eager.traced
    obs, goal = observation(), goal_of()
    for g in (goal, None):
        a = traced.predict_chunk(obs, g, torch.Generator().manual_seed(0))
        b = eager.predict_chunk(obs, g, torch.Generator().manual_seed(0))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_predict_chunk_is_seeded(policy) -> None:
    obs, goal = observation(), goal_of()
    a = policy.predict_chunk(obs, goal, torch.Generator().manual_seed(7))
    b = policy.predict_chunk(obs, goal, torch.Generator().manual_seed(7))
    c = policy.predict_chunk(obs, goal, torch.Generator().manual_seed(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_predict_chunk_accepts_history(policy) -> None:
    o1, o2 = observation(1, 4), observation(1, 5)
    hist = dict(o2)
    for k in (V.OBS_ARM_QPOS, V.OBS_HAND_QPOS, V.OBS_TOOL_TIP_GAP):
        hist[k] = np.stack([o1[k], o2[k]])
    g = torch.Generator
    a = policy.predict_chunk(hist, goal_of(), g().manual_seed(0))
    b = policy.predict_chunk(o2, goal_of(), g().manual_seed(0))
    assert a.shape == (SMALL.horizon, A) and in_limits(a)
    assert not np.allclose(a, b)  # the older step is seen
    hist[V.OBS_TOOL_TIP_GAP] = hist[V.OBS_TOOL_TIP_GAP][-1:]
    with pytest.raises(ValueError, match="different lengths"):
        policy.predict_chunk(hist, goal_of())


def test_goal_free_prediction(policy, trained) -> None:
    obs = observation()
    free = policy.predict_chunk(obs, None, torch.Generator().manual_seed(0))
    assert free.shape == (SMALL.horizon, A) and np.isfinite(free).all() and in_limits(free)
    with_goal = policy.predict_chunk(obs, goal_of(), torch.Generator().manual_seed(0))
    assert not np.allclose(free, with_goal)
    # lambda = 0 with a goal is the goal-free policy
    zero = LowLevelPolicy.load(trained[0], cfg_lambda=0.0)
    np.testing.assert_allclose(
        zero.predict_chunk(obs, goal_of(), torch.Generator().manual_seed(0)), free, atol=1e-6
    )


@pytest.mark.parametrize("sampler", ["heun", "euler_ancestral", "dpmpp_2m"])
def test_sampling_overrides(trained, sampler: str) -> None:
    p = LowLevelPolicy.load(trained[0], sampler=sampler, steps=5, cfg_lambda=2.0)
    assert p.config.sampler == sampler and p.config.steps == 5 and p.config.cfg_lambda == 2.0
    assert p.config.net == SMALL_NET  # training-time settings kept
    chunk = p.predict_chunk(observation(), goal_of())
    assert chunk.shape == (SMALL.horizon, A) and np.isfinite(chunk).all() and in_limits(chunk)


@pytest.mark.parametrize("ensemble", [False, True])
def test_select_action_works_outside_no_grad(trained, ensemble: bool) -> None:
    """Regression: select_action once ran the sampler with autograd on and raised on .numpy()."""
    p = LowLevelPolicy.load(trained[0], temporal_ensemble=ensemble)
    a = p.select_action(observation(), goal_of())
    assert a.shape == (A,) and in_limits(a)


def _count_chunks(policy: LowLevelPolicy) -> list[np.ndarray]:
    made: list[np.ndarray] = []
    inner = policy._chunk

    def wrapper(*args, **kw):
        out = inner(*args, **kw)
        made.append(out.copy())
        return out

    policy._chunk = wrapper
    return made


def test_select_action_replans_every_exec_steps(policy) -> None:
    obs, goal = observation(), goal_of()
    made = _count_chunks(policy)
    policy.reset(seed=3)
    actions = [policy.select_action(obs, goal) for _ in range(9)]
    assert len(made) == 3  # at steps 0, 4 and 8
    for a in actions:
        assert a.shape == (A,) and np.isfinite(a).all() and in_limits(a)
    np.testing.assert_array_equal(np.stack(actions[:4]), made[0][:4])
    np.testing.assert_array_equal(np.stack(actions[4:8]), made[1][:4])
    # the first chunk is the one predict_chunk gives for the same seed
    np.testing.assert_array_equal(made[0], policy.predict_chunk(obs, goal, torch.Generator().manual_seed(3)))
    # reset clears the queue: the next call replans
    policy.reset(seed=3)
    again = policy.select_action(obs, goal)
    assert len(made) == 5
    np.testing.assert_array_equal(again, actions[0])


def test_select_action_does_not_mutate_inputs(policy) -> None:
    obs, goal = observation(), goal_of()
    obs_copy, goal_copy = copy.deepcopy(obs), copy.deepcopy(goal)
    for _ in range(5):
        policy.select_action(obs, goal)
    for d, c in ((obs, obs_copy), (goal, goal_copy)):
        for k in c:
            np.testing.assert_array_equal(d[k], c[k])


def test_temporal_ensemble(trained) -> None:
    p = LowLevelPolicy.load(trained[0], temporal_ensemble=True)
    assert p.config.temporal_ensemble
    made = _count_chunks(p)
    obs, goal = observation(), goal_of()
    actions = [p.select_action(obs, goal) for _ in range(3)]
    assert len(made) == 3  # replans every step
    for a in actions:
        assert a.shape == (A,) and np.isfinite(a).all() and in_limits(a)
    np.testing.assert_allclose(actions[0], made[0][0])
    decay = SMALL.ensemble_decay
    w = np.exp(-decay * np.array([2.0, 1.0, 0.0]))
    expected = (w[0] * made[0][2] + w[1] * made[1][1] + w[2] * made[2][0]) / w.sum()
    np.testing.assert_allclose(actions[2], np.clip(expected, LOWER, UPPER), atol=1e-12)


def test_goal_free_select_action(policy) -> None:
    a = policy.select_action(observation(), None)
    assert a.shape == (A,) and np.isfinite(a).all() and in_limits(a)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "key", [V.OBS_ARM_QPOS, V.OBS_HAND_QPOS, V.OBS_TOOL_TIP_GAP, "rgb/scene", "rgb/wrist"]
)
def test_missing_observation_key(policy, key: str) -> None:
    obs = observation()
    del obs[key]
    with pytest.raises(KeyError, match=key):
        policy.predict_chunk(obs, goal_of())


@pytest.mark.parametrize("key", [V.GOAL_RGB, V.GOAL_TOOL_TIP_GAP])
def test_missing_goal_key(policy, key: str) -> None:
    goal = goal_of()
    del goal[key]
    with pytest.raises(KeyError, match=key):
        policy.predict_chunk(observation(), goal)


@pytest.mark.parametrize(
    "bad",
    [
        lambda img: img.astype(np.float32) / 255.0,
        lambda img: img[:32, :32],
        lambda img: img[..., :2],
        lambda img: img.astype(np.int64),
    ],
    ids=["float", "small", "two-channels", "int64"],
)
@pytest.mark.parametrize("key", ["rgb/scene", "rgb/wrist"])
def test_bad_images(policy, key: str, bad) -> None:
    obs = observation()
    obs[key] = bad(obs[key])
    with pytest.raises(ValueError, match=key):
        policy.predict_chunk(obs, goal_of())


def test_bad_goal_image(policy) -> None:
    goal = goal_of()
    goal[V.GOAL_RGB] = goal[V.GOAL_RGB].astype(np.float64)
    with pytest.raises(ValueError, match="goal/rgb"):
        policy.predict_chunk(observation(), goal)


@pytest.mark.parametrize("key", [V.OBS_ARM_QPOS, V.OBS_HAND_QPOS, V.OBS_TOOL_TIP_GAP])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_proprio(policy, key: str, value: float) -> None:
    obs = observation()
    obs[key] = obs[key].copy()
    obs[key][0] = value
    with pytest.raises(ValueError, match=key):
        policy.predict_chunk(obs, goal_of())
    with pytest.raises(ValueError, match=key):
        policy.select_action(obs, goal_of())


def test_non_finite_goal_gap(policy) -> None:
    goal = goal_of()
    goal[V.GOAL_TOOL_TIP_GAP] = np.array([np.nan])
    with pytest.raises(ValueError, match="goal/tool/tip_gap"):
        policy.predict_chunk(observation(), goal)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (V.OBS_ARM_QPOS, np.zeros(5)),
        (V.OBS_HAND_QPOS, np.zeros(17)),
        (V.OBS_TOOL_TIP_GAP, np.zeros(2)),
        (V.OBS_ARM_QPOS, np.zeros((2, 3, 6))),
    ],  # fmt: skip
)
def test_wrong_vector_length(policy, key: str, value: np.ndarray) -> None:
    obs = observation()
    obs[key] = value
    with pytest.raises(ValueError, match=key):
        policy.predict_chunk(obs, goal_of())


# ----------------------------------------------------------------------------- output safety
def test_huge_network_outputs_are_clipped_to_the_limits(policy) -> None:
    with torch.no_grad():
        policy.net.head.weight.mul_(1e4)
        policy.net.head.bias.mul_(1e4)
    chunk = policy.predict_chunk(observation(), goal_of(), torch.Generator().manual_seed(0))
    assert np.isfinite(chunk).all() and in_limits(chunk)
    # Clipped to the training data's action range (inside the joint limits), as BESO does.
    lo, hi = policy.normalizer.lo["action"], policy.normalizer.hi["action"]
    assert np.all(chunk >= np.maximum(lo, LOWER) - 1e-9) and np.all(chunk <= np.minimum(hi, UPPER) + 1e-9)
    at_limit = np.isclose(chunk, lo) | np.isclose(chunk, hi)
    assert at_limit.mean() > 0.5  # the raw outputs were far outside: the clamp really acts
    policy.reset()
    for _ in range(5):
        a = policy.select_action(observation(), goal_of())
        assert np.isfinite(a).all() and in_limits(a)


def test_nan_network_outputs_hold_the_measured_position(policy) -> None:
    with torch.no_grad():
        policy.net.head.weight.fill_(float("nan"))
    obs = observation(2, 7)
    chunk = policy.predict_chunk(obs, goal_of())
    assert policy.nonfinite_fallbacks == 1
    measured = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
    np.testing.assert_allclose(chunk, np.broadcast_to(measured, (SMALL.horizon, A)))
    policy.reset()
    a = policy.select_action(obs, None)
    np.testing.assert_allclose(a, measured)
    assert policy.nonfinite_fallbacks == 2


def test_nan_output_hold_is_clipped(policy) -> None:
    with torch.no_grad():
        policy.net.head.weight.fill_(float("nan"))
    obs = observation()
    obs[V.OBS_ARM_QPOS] = obs[V.OBS_ARM_QPOS].copy()
    obs[V.OBS_ARM_QPOS][3] = 10.0  # measured outside the limits
    chunk = policy.predict_chunk(obs, goal_of())
    assert in_limits(chunk) and np.allclose(chunk[:, 3], UPPER[3])


# ----------------------------------------------------------------------------- the DDPM peer
def test_ddpm_peer_trains_and_predicts(tmp_path, data_dir) -> None:
    cfg = PolicyConfig(net=SMALL_NET, horizon=8, exec_steps=4, diffusion="ddpm", steps=5, ddpm_train_steps=10)
    metrics = train([data_dir], tmp_path / "ddpm", small_train_config(2, policy=cfg), log=lambda m: None)
    assert metrics["step"] == 2 and np.isfinite(metrics["train_loss"])
    p = LowLevelPolicy.load(tmp_path / "ddpm")
    assert p.config.diffusion == "ddpm" and p.config.steps == 5
    a = p.predict_chunk(observation(), goal_of(), torch.Generator().manual_seed(0))
    b = p.predict_chunk(observation(), goal_of(), torch.Generator().manual_seed(0))
    assert a.shape == (8, A) and np.isfinite(a).all() and in_limits(a)
    np.testing.assert_array_equal(a, b)
    free = p.predict_chunk(observation(), None)
    assert np.isfinite(free).all() and in_limits(free)


def test_ddpm_steps_cannot_exceed_training_steps() -> None:
    with pytest.raises(ValueError, match="cannot exceed"):
        PolicyConfig(diffusion="ddpm", steps=20, ddpm_train_steps=10)


# ----------------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(tmp_path, data_dir) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "ddp"
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    launch = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port())]
    args = [
        "train",
        "lowlevel",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "2",
        "--threads",
        "1",
        "--json",
    ]
    cmd = [*launch, "-m", "dexhier.cli", *args, "--data", str(data_dir), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["step"] == 4
    assert json.loads((out / "train_state.json").read_text())["world_size"] == 2
    p = LowLevelPolicy.load(out)
    chunk = p.predict_chunk(observation(), goal_of())
    assert chunk.shape == (p.config.horizon, A) and in_limits(chunk)


# ----------------------------------------------------------------------------- oracle goals
@pytest.mark.sim
def test_oracle_goals_follow_the_robot() -> None:
    from dexhier.oracle_goals import OracleConfig, OracleGoals
    from sim.twin import TwinConfig

    cfg = TwinConfig(task="tool_open_to", image_width=64, image_height=64)
    oracle = OracleGoals(cfg, "scene", OracleConfig(lookahead=2))
    try:
        with pytest.raises(RuntimeError, match="prepare"):
            oracle.goal(observation())
        _check_oracle(oracle)
    finally:
        oracle.close()


def _check_oracle(oracle) -> None:
    ref = oracle.prepare(seed=3)
    n = len(ref.joints)
    assert ref.success is True
    assert ref.images.shape == (n, 64, 64, 3) and ref.images.dtype == np.uint8
    assert ref.joints.shape == (n, A) and ref.tip_gap.shape == (n,)
    assert oracle.progress == 0
    lookahead = oracle.config.lookahead
    prev = 0
    moving = np.linalg.norm(np.diff(ref.joints, axis=0), axis=1) > 1e-3
    for k in list(range(0, n, 2)) + [n - 1]:
        obs = {V.OBS_ARM_QPOS: ref.joints[k, :N_ARM], V.OBS_HAND_QPOS: ref.joints[k, N_ARM:]}
        goal = oracle.goal(obs)
        p = oracle.progress
        assert prev <= p <= k
        np.testing.assert_allclose(ref.joints[p], ref.joints[k], atol=1e-6)  # a frame where the robot is
        if k < len(moving) and moving[k] and (k == 0 or moving[k - 1]):
            assert p == k
        g = min(p + lookahead, n - 1)
        np.testing.assert_array_equal(goal[V.GOAL_RGB], ref.images[g])
        np.testing.assert_allclose(goal[V.GOAL_TOOL_TIP_GAP], [ref.tip_gap[g]])
        prev = p
    # never backwards: the robot back at the start keeps the progress
    first = {V.OBS_ARM_QPOS: ref.joints[0, :N_ARM], V.OBS_HAND_QPOS: ref.joints[0, N_ARM:]}
    goal = oracle.goal(first)
    assert oracle.progress == prev
    np.testing.assert_array_equal(goal[V.GOAL_RGB], ref.images[min(prev + lookahead, n - 1)])
    # prepare resets the tracking
    oracle.prepare(seed=3)
    assert oracle.progress == 0


# ----------------------------------------------------------------------------- the rollout adapter
def test_lowlevel_options_are_checked(trained, tmp_path) -> None:
    from dexhier.goal_rollout import LowLevelOptions, env_config

    with pytest.raises(FileNotFoundError, match="config.json"):
        LowLevelOptions(checkpoint=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="unknown goal source 'planner'.*oracle"):
        LowLevelOptions(checkpoint=str(trained[0]), goal_source="planner")
    with pytest.raises(ValueError, match="tool_noise"):
        LowLevelOptions(checkpoint=str(trained[0]), tool_noise=-0.1)
    opts = LowLevelOptions(checkpoint=str(trained[0]), steps=5, sampler="heun")
    assert opts.overrides() == {"steps": 5, "sampler": "heun", "cfg_lambda": None, "exec_steps": None,
                                "temporal_ensemble": None}  # fmt: skip
    cfg = env_config("tool_open_to", opts)
    assert cfg.task == "tool_open_to" and cfg.render and not cfg.points
    assert set(cfg.cameras) == {"scene", "wrist"} and cfg.image_width == cfg.image_height == S


@pytest.mark.sim
def test_goal_conditioned_policy_in_the_twin(trained) -> None:
    from dexhier.goal_rollout import GoalConditionedPolicy, LowLevelOptions, env_config
    from sim.twin import TwinEnv

    opts = LowLevelOptions(checkpoint=str(trained[0]), tool_noise=0.001, exec_steps=2)
    env = TwinEnv(env_config("tool_open_to", opts))
    try:
        gp = GoalConditionedPolicy(env, opts)
        assert gp.policy.config.exec_steps == 2
        obs = env.reset(3)
        gp.reset()
        assert gp.goals.reference is not None and gp.goals.reference.success
        for _ in range(3):
            gap = obs[V.OBS_TOOL_TIP_GAP].copy()
            a = gp.select_action(obs)
            np.testing.assert_array_equal(obs[V.OBS_TOOL_TIP_GAP], gap)  # noise is added to a copy
            assert a.shape == (A,) and np.isfinite(a).all() and in_limits(a)
            obs = env.step(a)[0]
        gp.goals.close()
    finally:
        env.close()


# ----------------------------------------------------------------------------- auxiliary losses
def _with_ground_truth(root: Path) -> Path:
    """A dataset whose steps also carry the twin's ground truth (object and tool-tip positions)."""
    w = EpisodeWriter(root, dataset_meta())
    for e, n in enumerate(LENGTHS[:2]):
        with w.begin(e, {"task": "synthetic"}) as rec:
            for t in range(n):
                q = joints(e, t)
                step = {V.STEP_TIME: 0.05 * t, V.OBS_ARM_QPOS: q[:N_ARM], V.OBS_HAND_QPOS: q[N_ARM:],
                        V.OBS_TOOL_TIP_GAP: np.array([tip_gap(e, t)]), V.ACTION: q, V.ACTION_REQUEST: q,
                        "privileged/object_pos": np.array([0.5 + 0.01 * e, 0.0, 0.005]),
                        "privileged/tip_center": np.array([0.4, 0.001 * t, 0.1])}  # fmt: skip
                for cam in V.DEFAULT_CAMERAS:
                    step[V.rgb_key(cam)] = image(e, t, cam)
                rec.add_step(step)
            rec.commit(True)
    return root


def test_auxiliary_targets_are_the_state_the_images_show(tmp_path) -> None:
    ds = ChunkDataset([_with_ground_truth(tmp_path / "gt")], SMALL)
    assert np.isfinite(ds.aux).all()
    # A step's ground truth is recorded after its action: the images of step t show record t - 1.
    np.testing.assert_allclose(ds.aux[:3, 4], [0.0, 0.0, 0.001], atol=1e-7)
    without = ChunkDataset([write_dataset(tmp_path / "plain")], SMALL)
    assert np.isnan(without.aux).all()  # e.g. teleop data: the losses are skipped


def test_auxiliary_losses_train_the_heads_and_are_skipped_without_ground_truth(tmp_path) -> None:
    root = _with_ground_truth(tmp_path / "gt")
    trainer = Trainer([root], tmp_path / "out", small_train_config(steps=3))
    before = trainer.net.aux_object.weight.detach().clone()
    trainer.train_step()
    assert not torch.equal(before, trainer.net.aux_object.weight)  # the heads get gradients
    plain = Trainer([write_dataset(tmp_path / "plain")], tmp_path / "out2", small_train_config(steps=3))
    before = plain.net.aux_object.weight.detach().clone()
    loss = plain.train_step()
    assert np.isfinite(loss)
    assert torch.equal(before, plain.net.aux_object.weight)  # no ground truth: no auxiliary gradient


def test_fine_tuning_widens_the_normalization_and_keeps_aux_ranges_without_labels(tmp_path) -> None:
    start_dir = tmp_path / "start"
    train([_with_ground_truth(tmp_path / "gt")], start_dir, small_train_config(1), log=lambda m: None)
    start = LowLevelPolicy.load(start_dir, traced=False).normalizer
    plain = write_dataset(tmp_path / "plain")  # no ground truth, as teleop data
    trainer = Trainer([plain], tmp_path / "ft", small_train_config(1, init_from=str(start_dir)))
    norm = trainer.normalizer
    for key in ("aux_object", "aux_goal_tip"):  # not stretched to the placeholder zeros
        np.testing.assert_array_equal(norm.lo[key], start.lo[key])
        np.testing.assert_array_equal(norm.hi[key], start.hi[key])
    actions = trainer.train_set.actions
    assert np.all(norm.lo["action"] <= np.minimum(start.lo["action"], actions.min(0)) + 1e-12)
    assert np.all(norm.hi["action"] >= np.maximum(start.hi["action"], actions.max(0)) - 1e-12)
