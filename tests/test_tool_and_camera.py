"""Unit tests of the tweezer geometry law and the pinhole camera helpers (no simulation)."""

import math

import numpy as np
import pytest

from sim.camera import Intrinsics, depth_to_points
from sim.tool import TweezerParams


def test_tip_gap_law_and_inverse():
    p = TweezerParams()
    for theta in np.linspace(p.theta_closed, p.theta_open, 7):
        gap = p.tip_gap(theta)
        assert gap == pytest.approx(p.gap_at_zero + 2 * p.arm_length * math.sin(theta))
        assert p.theta_for_gap(gap) == pytest.approx(theta, abs=1e-12)
    assert p.tip_gap(p.theta_closed) == pytest.approx(0.0, abs=1e-12)
    assert p.tip_gap(p.theta_open) == pytest.approx(p.max_gap)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arm_length": 0.01},
        {"gap_at_zero": 0.0},
        {"max_gap": 0.001, "gap_at_zero": 0.002},
        {"stiffness": -1.0},
    ],
)
def test_bad_tweezer_params_raise(kwargs):
    with pytest.raises(ValueError):
        TweezerParams(**kwargs)


def test_depth_to_points_inverts_projection():
    rng = np.random.default_rng(0)
    intr = Intrinsics.from_fovy(50.0, 40, 30)
    depth = rng.uniform(0.3, 2.0, (30, 40)).astype(np.float32)
    depth[3, 4] = 0.0  # no return
    depth[5, 6] = np.nan
    pts, _ = depth_to_points(depth, intr)
    assert pts.shape == (30 * 40 - 2, 3)
    uv = pts[:, :2] / pts[:, 2:3] * [intr.fx, intr.fy] + [intr.cx, intr.cy]
    v, u = np.nonzero(np.isfinite(depth) & (depth > 0))
    np.testing.assert_allclose(uv, np.stack([u, v], 1), atol=1e-3)
    np.testing.assert_allclose(pts[:, 2], depth[v, u], rtol=1e-6)


def test_depth_to_points_applies_pose_and_labels():
    intr = Intrinsics.from_fovy(60.0, 8, 6)
    depth = np.full((6, 8), 1.0, np.float32)
    labels = np.arange(48, dtype=np.int8).reshape(6, 8)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pts_cam, _ = depth_to_points(depth, intr)
    pts, lab = depth_to_points(depth, intr, rot, np.array([1.0, 2.0, 3.0]), labels)
    np.testing.assert_allclose(pts, pts_cam @ rot.T + [1.0, 2.0, 3.0], atol=1e-6)
    assert lab.tolist() == list(range(48))


def test_depth_shape_mismatch_raises():
    with pytest.raises(ValueError, match="does not match"):
        depth_to_points(np.ones((5, 5), np.float32), Intrinsics.from_fovy(60.0, 8, 6))
