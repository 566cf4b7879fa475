"""The object-centric low level: data recorded with label-free perception, training, the policy
contract, holds under perception dropout, the probe report, and refusal of old datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dexhier import vocabulary as V
from dexhier.collection import CollectRequest, collect
from dexhier.episodes import EpisodeDataset
from policies.low_level.object_centric import OCConfig
from policies.low_level.oc_policy import ObjectCentricPolicy
from policies.low_level.oc_training import OCData, OCTrainConfig, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oc") / "pick"
    results = list(collect(CollectRequest(task="tweezer_pick", episodes=2, seed=7, out=out, perception=True)))
    assert len(results) == 2
    return out


@pytest.fixture(scope="module", params=["joint", "tip"])
def checkpoint(dataset, tmp_path_factory, request) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / f"oc_{request.param}"
    cfg = OCConfig(width=64, blocks=1, point_width=16, action_space=request.param)
    metrics = train([dataset], out, cfg, OCTrainConfig(batch=32, warmup=5, val_fraction=0.4), steps=30,
                    checkpoint_every=30, log=lambda m: None)  # fmt: skip
    assert np.isfinite(metrics["val_chunk_mae"])
    return out


def _obs(dataset: Path, t: int) -> dict[str, np.ndarray]:
    ep = EpisodeDataset(dataset).episode(0)
    return {k: np.asarray(ep[k][t]) for k in (V.OBS_ARM_QPOS, V.OBS_HAND_QPOS, *V.PERCEPTION_KEYS)}


def test_collection_records_perception_keys_with_shapes(dataset):
    ds = EpisodeDataset(dataset)
    ep = ds.episode(0)
    assert ds.meta["perception"]["cameras"] == ["workspace", "wrist"]
    assert ep[V.PERC_TOOL_POINTS].shape[1:] == (64, 3)
    assert ep[V.PERC_OBJECT].shape[1:] == (6,)
    # The expert's episode: perception saw the tool and the object in most frames.
    assert ep[V.PERC_VALID].mean() > 0.9 and ep[V.PERC_OBJECT_VALID].mean() > 0.8


def test_training_batches_are_relative_offsets(dataset):
    d = OCData([dataset], horizon=16)
    b = d.batch(np.arange(10), np.random.default_rng(0), OCTrainConfig())
    assert b["action"].shape == (10, 16 * len(d.joint_names))
    assert b["goal"].shape == (10, 4) and b["extra"].shape == (10, 10)
    # Offsets from the measured joints: the first is the action sent minus the joints measured.
    a = len(d.joint_names)
    np.testing.assert_allclose(b["action"][:, :a], d.data["action"][:10] - d.data["proprio"][:10])


def test_policy_contract(checkpoint, dataset):
    pol = ObjectCentricPolicy.load(checkpoint)
    obs = _obs(dataset, 40)
    before = {k: v.copy() for k, v in obs.items()}
    goal = {V.GOAL_TOOL_TIP_GAP: np.array([0.02]), V.GOAL_TOOL_TIP_CENTER: obs[V.PERC_TIP_CENTER] + 0.01}
    chunk = pol.predict_chunk(obs, goal)
    assert chunk.shape == (pol.config.horizon, len(pol.joint_names))
    assert np.all(np.isfinite(chunk)) and np.all(chunk >= pol.lower) and np.all(chunk <= pol.upper)
    for k in obs:
        np.testing.assert_array_equal(obs[k], before[k])
    pol.reset(0)
    a = [pol.select_action(obs, goal) for _ in range(pol.config.exec_steps)]
    np.testing.assert_allclose(np.stack(a), pol.predict_chunk(obs, goal, _gen(0))[: pol.config.exec_steps])
    assert pol.predict_chunk(obs, None).shape == chunk.shape


def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def test_bad_inputs_raise_with_the_key(checkpoint, dataset):
    pol = ObjectCentricPolicy.load(checkpoint)
    obs = _obs(dataset, 40)
    with pytest.raises(KeyError, match="perception/object"):
        pol.predict_chunk({k: v for k, v in obs.items() if k != V.PERC_OBJECT}, None)
    with pytest.raises(ValueError, match="non-finite"):
        pol.predict_chunk({**obs, V.PERC_OBJECT: np.full(6, np.nan)}, None)
    with pytest.raises(ValueError, match="tool_points"):
        pol.predict_chunk({**obs, V.PERC_TOOL_POINTS: obs[V.PERC_TOOL_POINTS][:10]}, None)
    goal = {V.GOAL_TOOL_TIP_GAP: np.array([np.inf]), V.GOAL_TOOL_TIP_CENTER: np.zeros(3)}
    with pytest.raises(ValueError, match="goal"):
        pol.predict_chunk(obs, goal)


def test_perception_dropout_holds_and_commands_nothing(checkpoint, dataset):
    pol = ObjectCentricPolicy.load(checkpoint)
    obs = _obs(dataset, 40)
    q = np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]])
    never = {**obs, V.PERC_OBJECT_AGE: np.array([10_000.0])}
    pol.reset(0)
    for _ in range(3):  # the object never seen: hold where the robot is
        np.testing.assert_allclose(pol.select_action(never, None), np.clip(q, pol.lower, pol.upper))
    assert pol.holds == 3
    # Fresh perception: it plans (a chunk, not the hold).
    sent = pol.select_action(obs, None)
    assert pol.holds == 3
    # No tool state for longer than the timeout: it repeats its last target, commanding nothing new.
    blind = {**obs, V.PERC_VALID: np.zeros(1)}
    for _ in range(pol.config.hold_after):  # within the timeout it still acts
        pol.select_action(blind, None)
    assert pol.holds == 3
    last = pol._last.copy()
    for _ in range(5):
        np.testing.assert_array_equal(pol.select_action(blind, None), np.clip(last, pol.lower, pol.upper))
    assert pol.holds == 5 + 3 and np.all(np.isfinite(sent))


def test_tip_space_targets_reproduce_the_recorded_commands_through_the_ik(dataset):
    from policies.low_level.tip_actions import TipKinematics

    d = OCData([dataset], horizon=16, action_space="tip")
    kin = TipKinematics(d.joint_names)
    for i in (5, 40, 90):
        b = d.batch(np.array([i]), np.random.default_rng(0), OCTrainConfig())
        q = d.data["proprio"][i]
        kin.reset_ik(q[:6], 0.05)
        joints = kin.joints(q, b["action"].reshape(16, -1)[:4])
        np.testing.assert_allclose(joints, d.data["action"][i : i + 4], atol=5e-3)


def test_old_datasets_are_refused_with_the_command_that_records_perception(tmp_path):
    out = tmp_path / "plain"
    list(collect(CollectRequest(task="tool_open_to", episodes=1, seed=1, out=out)))
    with pytest.raises(ValueError, match="--perception"):
        OCData([out], horizon=16)


def test_probe_reports_the_three_checks(checkpoint, dataset):
    from policies.low_level.oc_probe import ProbeConfig, probe

    res = probe(checkpoint, dataset, ProbeConfig(frames=4))
    assert res["frames"] >= 2 and res["dropout_holds"] is True
    for key in ("object_shift_response_goal_free", "goal_swap_ratio"):
        assert np.isfinite(res[key])


def test_oracle_tracks_the_tool_state_and_gives_goal_tips():
    from dexhier.oracle_goals import OracleConfig, OracleGoals
    from sim.twin import TwinConfig

    goals = OracleGoals(TwinConfig(task="tweezer_pick", render=True, points=False, cameras=("workspace",)),
                        "workspace", OracleConfig(lookahead=8), tips=True)  # fmt: skip
    try:
        ref = goals.prepare(7)
        assert ref.tip_center.shape == (len(ref.joints), 3)
        n_arm = 6
        seen = []
        for t in range(0, len(ref.joints), 5):
            obs = {V.OBS_ARM_QPOS: ref.joints[t, :n_arm], V.OBS_HAND_QPOS: ref.joints[t, n_arm:],
                   V.OBS_TOOL_TIP_GAP: np.array([ref.tip_gap[t]])}  # fmt: skip
            g = goals.goal(obs)
            seen.append(goals.progress)
            assert g[V.GOAL_TOOL_TIP_CENTER].shape == (3,)
        # Replaying the expert's own states walks the reference forward, never back.
        assert seen == sorted(seen) and seen[-1] >= len(ref.joints) - 10
    finally:
        goals.close()
