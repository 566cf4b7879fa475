"""Hand retargeting: human keypoints to the LEAP-like hand's joints (dexhier.teleop.retarget)."""

import dataclasses

import numpy as np
import pytest

from dexhier.teleop.retarget import (
    OPERATOR_LEFT_TO_HAND,
    HandRetargeter,
    RetargetConfig,
    keypoints_from_robot,
)
from dexhier.vocabulary import HAND_JOINTS


@pytest.fixture(scope="module")
def rt() -> HandRetargeter:
    return HandRetargeter(RetargetConfig(alpha=1.0))


def _postures(rt: HandRetargeter, n: int, seed: int = 0) -> np.ndarray:
    """(n, 16) random postures in the middle 60 % of every joint's range, rad.

    The full LEAP ranges include hyperextended / fully abducted corners where the 4-DoF thumb has
    separate IK branches; there the solver can end in a local minimum (about 8 % of uniform
    full-range samples leave a tip > 3 mm off), which says nothing about whether it works.
    """
    rng = np.random.default_rng(seed)
    return rt.lower + rng.uniform(0.2, 0.8, size=(n, len(rt.joint_names))) * (rt.upper - rt.lower)


def _flat_right_hand() -> np.ndarray:
    """(21, 3) m: a flat right hand in the wrist frame (x along the fingers, y thumb side, z dorsal)."""
    k = np.zeros((21, 3))
    for base, y, length in ((5, 0.025, 0.09), (9, 0.0, 0.1), (13, -0.02, 0.095), (17, -0.038, 0.075)):
        mcp_x = 0.095 if base == 9 else 0.09
        for j in range(4):  # MCP, PIP, DIP, tip evenly along the finger
            k[base + j] = (mcp_x + length * j / 3, y, 0.0)
    k[1:5] = [(0.03, 0.025, -0.01), (0.055, 0.05, -0.015), (0.08, 0.065, -0.02), (0.1, 0.08, -0.025)]
    return k


def test_joint_names_and_limits(rt):
    assert set(rt.joint_names) == set(HAND_JOINTS)
    assert len(rt.joint_names) == len(HAND_JOINTS)
    assert rt.lower.shape == rt.upper.shape == (16,)
    assert np.all(rt.lower < 0) and np.all(rt.upper > 0)  # q = 0 (open hand) is a valid posture
    assert rt.fingertip_vectors(np.zeros(16)).shape == (4, 3)
    assert 1.3 < rt.scaling < 1.8  # LEAP-size hand: ~1.5x a human hand


def test_round_trip_matches_fingertips(rt):
    """Keypoints made from a robot posture retarget to a posture with the same fingertip vectors."""
    errors, baselines = [], []
    for q in _postures(rt, 8):
        keypoints = keypoints_from_robot(q, rt)
        rt.reset()
        for _ in range(3):  # a static hand streamed for three frames
            out = rt.retarget(keypoints)
        want = rt.fingertip_vectors(q)
        errors.append(np.linalg.norm(rt.fingertip_vectors(out) - want, axis=1).max())
        baselines.append(np.linalg.norm(rt.fingertip_vectors(np.zeros(16)) - want, axis=1).max())
    errors, baselines = np.array(errors), np.array(baselines)
    print(
        f"round trip: max tip error {errors.max() * 1e3:.4f} mm, q=0 baseline {baselines.min() * 1e3:.0f} mm"
    )
    # Measured: 0.003 mm here (1.3 mm worst of 100 such postures); the open hand is 150+ mm off.
    # One solver iteration per frame would leave 4.5 mm, two 0.8 mm; no mid-range restart 4.6 mm.
    assert errors.max() < 0.0005
    assert np.all(errors < 0.01 * baselines)


def test_single_call_is_close_already(rt):
    q = _postures(rt, 1, seed=3)[0]
    rt.reset()
    out = rt.retarget(keypoints_from_robot(q, rt))
    # Measured 0.05 mm: from the open hand, one frame of 12 iterations nearly converges.
    assert np.linalg.norm(rt.fingertip_vectors(out) - rt.fingertip_vectors(q), axis=1).max() < 0.001


def test_flat_right_hand_opens_the_robot_hand():
    """The default operator_to_hand (a reflection: the twin's hand is a mirrored right hand)."""
    rt = HandRetargeter(RetargetConfig(alpha=1.0))
    for _ in range(3):
        q = rt.retarget(_flat_right_hand())
    named = dict(zip(rt.joint_names, q, strict=True))
    for f in ("if", "mf", "rf"):
        assert all(abs(named[f"{f}_{j}"]) < 0.1 for j in ("mcp", "pip", "dip")), named
        assert abs(named[f"{f}_rot"]) < 0.2, named
    # The proper rotation that keeps fingers and palm would swap index and ring sides.
    wrong = HandRetargeter(RetargetConfig(alpha=1.0, operator_to_hand=OPERATOR_LEFT_TO_HAND))
    for _ in range(3):
        q_wrong = wrong.retarget(_flat_right_hand())
    assert abs(dict(zip(wrong.joint_names, q_wrong, strict=True))["if_rot"]) > 0.3


@pytest.mark.parametrize(
    "keypoints",
    [
        np.zeros((21, 3)),  # everything at the wrist
        np.random.default_rng(1).normal(size=(21, 3)) * 1.0,  # ~1 m away in all directions
        np.full((21, 3), 1e3),
        -np.full((21, 3), 1e3),
    ],
    ids=["at_wrist", "one_metre", "far_plus", "far_minus"],
)
def test_outputs_stay_finite_and_within_limits(keypoints):
    rt = HandRetargeter()
    for _ in range(3):
        q = rt.retarget(keypoints)
        assert q.shape == (16,)
        assert np.all(np.isfinite(q))
        assert np.all(q >= rt.lower) and np.all(q <= rt.upper)


def test_random_keypoints_within_limits(rt):
    rng = np.random.default_rng(2)
    rt.reset()
    for _ in range(20):
        q = rt.retarget(rng.uniform(-0.25, 0.25, size=(21, 3)))
        assert np.all(np.isfinite(q)) and np.all(q >= rt.lower) and np.all(q <= rt.upper)


def test_low_pass_filter_step_response():
    target = _postures(HandRetargeter(), 1, seed=5)[0]
    raw = HandRetargeter(RetargetConfig(alpha=1.0))
    smooth = HandRetargeter(RetargetConfig(alpha=0.5))
    keypoints = keypoints_from_robot(target, raw)
    q0 = np.zeros(16)
    first_raw = raw.retarget(keypoints)
    first = smooth.retarget(keypoints)
    # The solver does not see the filter: the first output is exactly alpha of the way.
    np.testing.assert_allclose(first, q0 + 0.5 * (first_raw - q0), atol=1e-12)

    outs = [first] + [smooth.retarget(keypoints) for _ in range(15)]
    final = raw.retarget(keypoints)
    for _ in range(15):
        final = raw.retarget(keypoints)
    gaps = [np.abs(o - final).max() for o in outs]
    assert all(b <= a + 1e-6 for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < 1e-3


def test_invalid_keypoints_raise_and_keep_state(rt):
    q = _postures(rt, 1, seed=7)[0]
    good = keypoints_from_robot(q, rt)
    rt.reset()
    expected = rt.retarget(good)
    rt.reset()
    nan = good.copy()
    nan[8, 1] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        rt.retarget(nan)
    with pytest.raises(ValueError, match="not finite"):
        rt.retarget(np.full((21, 3), np.inf))
    for shape in ((20, 3), (21, 2), (63,)):
        with pytest.raises(ValueError, match="shape"):
            rt.retarget(np.zeros(shape))
    np.testing.assert_allclose(rt.retarget(good), expected)  # the bad frames changed nothing


def test_reset_clips_and_sets_the_output():
    rt = HandRetargeter(RetargetConfig(alpha=0.25))
    rt.reset(np.full(16, 10.0))
    q = rt.retarget(np.zeros((21, 3)))
    assert np.all(q <= rt.upper)
    with pytest.raises(ValueError, match="shape"):
        rt.reset(np.zeros(3))


@pytest.mark.parametrize(
    "change",
    [
        {"scaling": 0.0},
        {"scaling": -1.0},
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"iterations": 0},
        {"operator_to_hand": ((1.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, 0.0, 1.0))},
        {"operator_to_hand": ((1.0, 0.0), (0.0, 1.0))},
        {"huber_delta": 0.0},
    ],
)
def test_config_is_checked(change):
    with pytest.raises(ValueError):
        RetargetConfig(**change)


def test_config_is_frozen_and_accepts_arrays():
    cfg = RetargetConfig(operator_to_hand=np.eye(3), scaling=1.6)
    assert cfg.operator_to_hand == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 0.9  # type: ignore[misc]
    assert HandRetargeter(cfg).scaling == 1.6


def test_keypoints_from_robot_shape_and_tips(rt):
    q = _postures(rt, 1, seed=9)[0]
    k = keypoints_from_robot(q, rt)
    assert k.shape == (21, 3) and np.all(np.isfinite(k))
    np.testing.assert_allclose(k[0], 0.0)
    np.testing.assert_allclose(rt.targets(k), rt.fingertip_vectors(q), atol=1e-12)
