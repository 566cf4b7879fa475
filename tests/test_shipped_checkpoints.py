"""The checkpoints shipped in checkpoints/: the MANIFEST matches the files, and they load and run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dexhier import vocabulary as V
from dexhier.checkpoints import CONFIG_FILE, WEIGHTS_FILE, file_sha256

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"


def _manifest() -> list[list[str]]:
    lines = (ROOT / "MANIFEST").read_text().splitlines()
    return [ln.split("\t") for ln in lines if ln and not ln.startswith("#")]


def test_manifest_lines_match_the_shipped_files() -> None:
    rows = _manifest()
    names = {r[0] for r in rows}
    assert {"affordance", "lowlevel", "lowlevel_ddpm"} <= names
    for name, type_, sha, seed, metrics, command in rows:
        d = ROOT / name
        assert file_sha256(d / WEIGHTS_FILE) == sha, f"{name}: weights differ from the MANIFEST"
        doc = json.loads((d / CONFIG_FILE).read_text())
        assert doc["type"] == type_
        assert int(seed) >= 0 and isinstance(json.loads(metrics), dict)
        assert command.startswith("dexhier ")
        assert (d / WEIGHTS_FILE).stat().st_size < 8 * 2**20, f"{name} is not small"


@pytest.mark.sim
@pytest.mark.parametrize("name", ["lowlevel", "lowlevel_ddpm"])
def test_shipped_low_level_policies_act_in_the_twin(name: str) -> None:
    from dexhier.goal_rollout import LowLevelOptions, env_config
    from policies.low_level import LowLevelPolicy
    from sim.twin import TwinEnv

    policy = LowLevelPolicy.load(ROOT / name, steps=None if name == "lowlevel" else 10)
    env = TwinEnv(env_config("tweezer_pick", LowLevelOptions(checkpoint=str(ROOT / name))))
    obs = env.reset(3)
    goal = {V.GOAL_RGB: obs[V.rgb_key(policy.config.goal_camera)], V.GOAL_TOOL_TIP_GAP: np.array([0.01])}
    for _ in range(3):
        action = policy.select_action(obs, goal)
        assert np.all(np.isfinite(action))
        assert np.all(action >= env.action_spec.lower) and np.all(action <= env.action_spec.upper)
        obs = env.step(action)[0]
    assert policy.layout.arm_joints == env.robot.arm_joints
    assert policy.layout.hand_joints == env.robot.hand_joints
    env.close()


@pytest.mark.sim
def test_shipped_object_centric_low_level_acts_on_label_free_perception() -> None:
    from dexhier.goal_rollout import LowLevelOptions, env_config
    from dexhier.oc_rollout import ObjectCentricRollout
    from sim.twin import TwinEnv

    ckpt = ROOT / "lowlevel_oc_pick"
    assert (ckpt / "config.json").is_file(), "checkpoints/lowlevel_oc_pick is missing"
    opts = LowLevelOptions(checkpoint=str(ckpt), lookahead=8)
    env = TwinEnv(env_config("tweezer_pick", opts))
    try:
        rollout = ObjectCentricRollout(env, opts)
        obs = env.reset(3)
        rollout.reset()
        tips0 = np.linalg.norm(env.privileged_state().tip_center - env.privileged_state().object_pos)
        for _ in range(10):
            action = rollout.select_action(obs)
            assert np.all(np.isfinite(action))
            assert np.all(action >= env.action_spec.lower) and np.all(action <= env.action_spec.upper)
            obs = env.step(action)[0]
        assert rollout.policy.holds == 0
        # It moves towards the object: the tips get closer within half a second (the twin's truth
        # is the oracle here, never an input).
        tips = np.linalg.norm(env.privileged_state().tip_center - env.privileged_state().object_pos)
        assert tips < tips0 - 0.02
        assert rollout.policy.joint_names == env.robot.joint_names
    finally:
        env.close()
