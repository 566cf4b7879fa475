"""The camera layout: the workspace camera is configurable, checked, and sees the object through an
expert episode where the scene camera does not (the measurement that chose it)."""

from __future__ import annotations

import pytest

from sim.cell import CameraMount, CellBuildError, CellConfig
from sim.visibility import VisibilityConfig, measure, summarize


def test_workspace_camera_sees_the_object_in_every_phase():
    res = measure("tweezer_pick", 1, 1003, ["workspace", "scene"], VisibilityConfig(every=4))
    assert res["workspace"]["seen_fraction"] == 1.0
    assert res["workspace"]["object_px_median"] > 5 * max(res["scene"]["object_px_median"], 1)
    assert res["any_camera_seen_fraction"] == 1.0


def test_a_camera_mount_moves_the_view():
    # A mount looking away from the table sees no object at all.
    away = CameraMount(pos=(0.49, -0.30, 0.16), target=(0.49, -0.8, 0.3), fovy=55.0)
    res = measure(
        "tweezer_pick",
        1,
        1003,
        ["workspace"],
        VisibilityConfig(every=10),
        cell=CellConfig(workspace_camera=away),
    )
    assert res["workspace"]["seen_fraction"] == 0.0


@pytest.mark.parametrize(
    "kw",
    [
        {"pos": (0.0, 0.0, float("nan")), "target": (0.5, 0, 0), "fovy": 50.0},
        {"pos": (0.5, 0.0, 0.5), "target": (0.5, 0.0, 0.0), "fovy": 50.0},  # straight down: no up vector
        {"pos": (0.0, 0.0, 0.3), "target": (0.5, 0.0, 0.0), "fovy": 179.0},
    ],
)
def test_bad_mounts_are_refused(kw):
    with pytest.raises(CellBuildError):
        CameraMount(**kw)


def test_summary_counts_frames_seen_by_any_camera():
    rows = [
        ("approach", {"a": (40, 1), "b": (0, 0)}),
        ("close", {"a": (0, 0), "b": (50, 2)}),
        ("lift", {"a": (1, 0), "b": (2, 0)}),
    ]
    res = summarize(rows, ["a", "b"], 30)
    assert res["a"]["seen_fraction"] == pytest.approx(1 / 3)
    assert res["any_camera_seen_fraction"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        summarize([], ["a"], 30)
