"""Held-out object shapes (``--objects heldout``): they build, never appear in training sampling,
and the expert (the oracle's source) picks each of them."""

from __future__ import annotations

import numpy as np
import pytest

from sim.cell import HELDOUT_SHAPES, OBJECT_SHAPES, CellBuildError, CellConfig, ObjectParams, build_cell
from sim.expert import ExpertPolicy
from sim.rollout import run_episode
from sim.tasks import make_task
from sim.twin import TwinConfig, TwinEnv


@pytest.mark.parametrize("shape", HELDOUT_SHAPES)
def test_heldout_shapes_build_with_their_width_and_height(shape):
    obj = ObjectParams(shape=shape, width=0.012, height=0.02)
    model, _ = build_cell(CellConfig(), obj)
    g = model.geom("object_geom")
    half = model.geom_aabb[g.id][3:]  # local bounding half-extents
    assert 0.0119 <= 2 * half[0] <= 0.0121 * 1.16
    assert abs(2 * half[2] - 0.02) < 1e-3


def test_unknown_shapes_are_refused_with_the_valid_ones():
    with pytest.raises(CellBuildError, match="capsule"):
        ObjectParams(shape="torus")


def test_training_sampling_never_draws_heldout_shapes():
    task = make_task("tweezer_pick")
    shapes = {task.sample(np.random.default_rng(s)).object.shape for s in range(200)}
    assert shapes == set(OBJECT_SHAPES)
    held = {task.sample(np.random.default_rng(s), HELDOUT_SHAPES).object.shape for s in range(200)}
    assert held == set(HELDOUT_SHAPES)


def test_objects_setting_is_checked():
    with pytest.raises(ValueError, match="heldout"):
        TwinConfig(objects="other")


def test_the_expert_picks_one_of_each_heldout_shape():
    env = TwinEnv(TwinConfig(task="tweezer_pick", render=False, points=False, objects="heldout"))
    expert, done = ExpertPolicy(env), {}
    try:
        for seed in range(1000, 1040):
            env.reset(seed)
            shape = env.instance.object.shape
            if shape in done:
                continue
            done[shape] = run_episode(env, expert, seed).success
            if len(done) == len(HELDOUT_SHAPES):
                break
    finally:
        env.close()
    assert done == dict.fromkeys(HELDOUT_SHAPES, True)
