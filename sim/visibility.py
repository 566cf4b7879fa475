"""How well each camera of the cell sees the object and the tool tips through expert episodes.

The cell's cameras are chosen by this measurement (``dexhier eval visibility``): for every
recorded frame and camera, the segmentation render counts the pixels on the object and on the
tweezer's tip pads. The twin's labels are used here as a test oracle only: this is a design-time
measurement of camera placement, never a run-time input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

from sim.cell import OBJECT_BODY
from sim.rendering import CameraRenderer
from sim.tool import ARM_BODIES


@dataclass(frozen=True)
class VisibilityConfig:
    """Parameters of the measurement.

    Attributes:
        size: (width, height) of the segmentation render, px (a depth camera's resolution).
        every: measure every ``every``-th control step.
        min_pixels: an object with at least this many visible pixels counts as seen (enough points
            for a centroid and a width).
    """

    size: tuple[int, int] = (320, 240)
    every: int = 2
    min_pixels: int = 30

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"size must be (width, height) >= 8 px, got {self.size}")
        if self.every < 1 or self.min_pixels < 1:
            raise ValueError("every and min_pixels must be >= 1")


def _body_geoms(model: mujoco.MjModel, bodies: Sequence[str]) -> np.ndarray:
    ids = {model.body(b).id for b in bodies}
    return np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in ids], dtype=np.int64)


def _tip_pad_geoms(model: mujoco.MjModel) -> np.ndarray:
    names = [f"{b}_tip_pad" for b in ARM_BODIES]
    return np.array([model.geom(n).id for n in names], dtype=np.int64)


def frame_visibility(
    renderer: CameraRenderer, model, data, cameras: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """Per camera: (object pixels, tip-pad pixels) in the current state."""
    obj, tips = _body_geoms(model, [OBJECT_BODY]), _tip_pad_geoms(model)
    out = {}
    for cam in cameras:
        ids = renderer.geom_ids(data, cam)
        out[cam] = (int(np.isin(ids, obj).sum()), int(np.isin(ids, tips).sum()))
    return out


def measure(
    task: str,
    episodes: int,
    seed: int,
    cameras: Sequence[str],
    config: VisibilityConfig | None = None,
    cell=None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """Object visibility through ``episodes`` expert episodes (seeds ``seed`` .. ``seed + episodes - 1``).

    Returns per camera: median and 10th-percentile object pixels, the fraction of frames in which
    the object is seen (``>= min_pixels``), and the same split by the expert's phase; and
    ``any_camera_seen_fraction``: frames in which at least one camera sees the object.
    """
    from sim.expert import ExpertPolicy
    from sim.twin import TwinConfig, TwinEnv

    cfg = config or VisibilityConfig()
    kw = {} if cell is None else {"cell": cell}
    env = TwinEnv(TwinConfig(task=task, render=False, points=False, **kw))
    expert = ExpertPolicy(env)
    rows: list[tuple[str, dict[str, tuple[int, int]]]] = []
    renderer, model_id = None, None
    try:
        for i in range(episodes):
            obs = env.reset(seed + i)
            expert.reset()
            if model_id != id(env.model):  # the model is rebuilt at every reset
                if renderer is not None:
                    renderer.close()
                renderer, model_id = CameraRenderer(env.model, *cfg.size), id(env.model)
            step, done = 0, False
            while not done:
                if step % cfg.every == 0:
                    rows.append((expert.phase, frame_visibility(renderer, env.model, env.data, cameras)))
                obs, _, term, trunc, _ = env.step(expert.select_action(obs))
                done, step = term or trunc, step + 1
            if progress:
                progress(1)
    finally:
        if renderer is not None:
            renderer.close()
        env.close()
    return summarize(rows, cameras, cfg.min_pixels)


def summarize(
    rows: Sequence[tuple[str, dict[str, tuple[int, int]]]], cameras: Sequence[str], min_pixels: int
) -> dict[str, object]:
    """Aggregate per-frame (phase, {camera: (object px, tip px)}) rows."""
    if not rows:
        raise ValueError("no frames measured")
    res: dict[str, object] = {"frames": len(rows), "min_pixels": min_pixels}
    seen_any = np.zeros(len(rows), bool)
    phases = sorted({p for p, _ in rows})
    for cam in cameras:
        obj = np.array([r[cam][0] for _, r in rows])
        tips = np.array([r[cam][1] for _, r in rows])
        seen = obj >= min_pixels
        seen_any |= seen
        res[cam] = {
            "object_px_median": float(np.median(obj)),
            "object_px_p10": float(np.quantile(obj, 0.1)),
            "tip_px_median": float(np.median(tips)),
            "seen_fraction": float(seen.mean()),
            "seen_fraction_by_phase": {
                p: float(np.mean([s for s, (q, _) in zip(seen, rows, strict=True) if q == p])) for p in phases
            },
        }
    res["any_camera_seen_fraction"] = float(seen_any.mean())
    return res
