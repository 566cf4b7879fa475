"""Label-free perception on real twin frames, checked against the twin's ground truth (the oracle),
and its answers to bad input: every case gives ``valid=False`` with a reason or a documented choice."""

from __future__ import annotations

import numpy as np
import pytest

from dexhier import vocabulary as V
from perception.object_perception import LabelFreePerception, PerceptionConfig, backproject, farthest_points
from perception.observer import CAMERAS, ObjectObserver
from sim.camera import camera_intrinsics
from sim.expert import ExpertPolicy
from sim.twin import TwinConfig, TwinEnv


def _frames(seed: int, phases: tuple[str, ...]) -> dict[str, dict]:
    """The first frame of each expert phase: depths, joints, truth."""
    cfg = TwinConfig(task="tweezer_pick", cameras=("workspace",), points=True, points_camera="workspace",
                     points_size=(320, 240), perception_cameras=CAMERAS)  # fmt: skip
    env = TwinEnv(cfg)
    try:
        expert, out = ExpertPolicy(env), {}
        obs = env.reset(seed)
        expert.reset()
        for _ in range(200):
            if expert.phase in phases and expert.phase not in out:
                out[expert.phase] = {
                    "depth": {c: obs[V.depth_hd_key(c)] for c in CAMERAS},
                    "intr": {c: camera_intrinsics(env.model, c, 320, 240) for c in CAMERAS},
                    "names": env.robot.joint_names,
                    "q": np.concatenate([obs[V.OBS_ARM_QPOS], obs[V.OBS_HAND_QPOS]]),
                    "points": obs[V.OBS_POINTS], "labels": obs[V.OBS_POINTS_LABEL],
                    "gap": env.tip_gap(), "object": env.privileged_state().object_pos,
                    "width": env.instance.object.width, "cell": env.config.cell,
                }  # fmt: skip
            if len(out) == len(phases):
                break
            obs, *_ = env.step(expert.select_action(obs))
        return out
    finally:
        env.close()


@pytest.fixture(scope="module")
def frames() -> dict[str, dict]:
    return _frames(1003, ("approach", "descend", "close"))


@pytest.fixture(scope="module")
def perception(frames) -> LabelFreePerception:
    return LabelFreePerception(frames["approach"]["cell"])


def _run(perception, f, **over):
    return perception.perceive_depth(f["depth"], f["intr"], f["names"], f["q"], **over)


@pytest.mark.parametrize("phase", ["approach", "descend", "close"])
def test_estimates_match_the_twin_without_labels(perception, frames, phase):
    f = frames[phase]
    est = _run(perception, f)
    assert est.valid and est.object_valid, (est.reason, est.object_reason)
    assert abs(est.tip_gap - f["gap"]) < 0.002
    assert np.linalg.norm(est.object_center - f["object"]) < 0.004
    assert abs(est.object_width - f["width"]) < 0.003
    assert est.tool_points.shape == (perception.config.n_points, 3)


def test_object_points_are_the_objects_by_the_oracle_labels(perception, frames):
    f = frames["descend"]
    est = _run(perception, f)
    # The twin's labels are the oracle: every returned object point lies on an object-labelled pixel.
    obj = f["points"][f["labels"] == V.SEG_LABELS["object"]]
    d = np.linalg.norm(est.object_points[:, None] - obj[None], axis=-1).min(1)
    assert np.quantile(d, 0.9) < 0.002


def test_nan_empty_and_all_table_clouds_are_invalid_with_reasons(perception, frames):
    f = frames["approach"]
    nan = {c: np.full_like(d, np.nan) for c, d in f["depth"].items()}
    assert not _run(perception, {**f, "depth": nan}).valid
    empty = {c: np.zeros_like(d) for c, d in f["depth"].items()}
    est = _run(perception, {**f, "depth": empty})
    assert not est.valid and "plane" in est.reason
    table = np.stack(np.meshgrid(np.linspace(0.3, 0.7, 200), np.linspace(-0.2, 0.3, 200)), -1).reshape(-1, 2)
    cloud = np.concatenate([table, np.zeros((len(table), 1))], 1).astype(np.float32)
    est = perception.perceive(cloud, f["names"], f["q"])
    assert not est.valid and "tool" in est.reason
    assert not est.object_valid and est.object_reason


def test_non_finite_points_are_dropped_not_fatal(perception, frames):
    f = frames["descend"]
    depth = {c: d.copy() for c, d in f["depth"].items()}
    depth["workspace"][::7, ::5] = np.nan
    depth["wrist"][::3, ::11] = np.inf
    est = _run(perception, {**f, "depth": depth})
    assert est.valid and est.object_valid


def test_bad_joints_shapes_and_cameras_give_reasons(perception, frames):
    f = frames["approach"]
    est = perception.perceive_depth(f["depth"], f["intr"], ["nope"], [0.0])
    assert not est.valid and "joint" in est.reason
    est = perception.perceive_depth(f["depth"], f["intr"], f["names"], np.full(len(f["q"]), np.nan))
    assert not est.valid
    bad = {**f["depth"], "workspace": f["depth"]["workspace"][:100]}
    assert not perception.perceive_depth(bad, f["intr"], f["names"], f["q"]).valid
    assert not perception.perceive_depth({"nocam": f["depth"]["wrist"]}, f["intr"], f["names"], f["q"]).valid
    assert not perception.perceive(np.zeros((5, 2), np.float32), f["names"], f["q"]).valid
    assert not perception.perceive(np.zeros((5, 3), np.int32), f["names"], f["q"]).valid
    assert not perception.perceive(f["points"], f["names"], f["q"], transform=np.full((4, 4), np.nan)).valid


def _without_object(f) -> np.ndarray:
    return f["points"][f["labels"] != V.SEG_LABELS["object"]]


def test_an_object_outside_the_workspace_is_not_reported(perception, frames):
    f = frames["approach"]
    obj = f["points"][f["labels"] == V.SEG_LABELS["object"]]
    moved = obj + np.array([0.0, -0.16 - obj[:, 1].mean() + (-0.05), 0.0], np.float32)  # y < -0.20
    cloud = np.concatenate([_without_object(f), moved])
    est = perception.perceive(cloud, f["names"], f["q"])
    assert not est.object_valid and "outside" in est.object_reason


def test_with_a_second_object_the_one_nearest_the_tips_is_taken(perception, frames):
    f = frames["descend"]
    obj = f["points"][f["labels"] == V.SEG_LABELS["object"]]
    cloud = np.concatenate([f["points"], obj + np.array([0.0, 0.07, 0.0], np.float32)])
    est = perception.perceive(cloud, f["names"], f["q"])
    assert est.object_valid and est.clusters == 2
    assert np.linalg.norm(est.object_center - f["object"]) < 0.005


def test_an_object_pinched_by_the_tool_is_still_found(perception, frames):
    f = frames["close"]
    est = _run(perception, f)
    assert est.object_valid, est.object_reason
    assert np.linalg.norm(est.object_center - f["object"]) < 0.006


def test_observer_holds_the_last_object_and_counts_its_age(frames):
    f = frames["approach"]
    obs_ = ObjectObserver(f["cell"])
    first = obs_.observe_depth(f["depth"], f["names"], f["q"])
    assert first[V.PERC_OBJECT_VALID][0] == 1 and first[V.PERC_OBJECT_AGE][0] == 0
    blind = {c: np.zeros_like(d) for c, d in f["depth"].items()}
    held = obs_.observe_depth(blind, f["names"], f["q"])
    assert held[V.PERC_OBJECT_VALID][0] == 0 and held[V.PERC_OBJECT_AGE][0] == 1
    np.testing.assert_array_equal(held[V.PERC_OBJECT], first[V.PERC_OBJECT])
    obs_.reset()
    never = obs_.observe_depth(blind, f["names"], f["q"])
    assert never[V.PERC_OBJECT_AGE][0] >= 10_000 and not np.any(never[V.PERC_TOOL_POINTS])


def test_config_is_checked_when_built():
    with pytest.raises(ValueError):
        PerceptionConfig(plane_margin=-1.0)
    with pytest.raises(ValueError):
        PerceptionConfig(crop_min=(1, 1, 1), crop_max=(0, 0, 0))
    with pytest.raises(ValueError):
        PerceptionConfig(tool_camera_stride=0)


def test_helpers_handle_small_and_bad_inputs(frames):
    assert farthest_points(np.zeros((0, 3)), 8).shape == (8, 3)
    pts = farthest_points(np.eye(3), 8)
    assert pts.shape == (8, 3) and {tuple(p) for p in pts} == {tuple(r) for r in np.eye(3, dtype=np.float32)}
    f = frames["approach"]
    with pytest.raises(ValueError):
        backproject(np.zeros((10, 10)), f["intr"]["wrist"], np.eye(4))
