"""``dexhier eval probe``: does the object-centric low level use what it sees?

On recorded frames of the approach (tips above the object, within ``radius`` horizontally, before
contact), with the recorded perception keys as observation:

* **object shift**: the object estimate (its centre and its points) moved by ``shift`` m along +-x
  and +-y; the predicted approach point (the tips at the chunk's end, by forward kinematics of the
  predicted joints) should move with it (``object_shift_response`` = mean displacement along the
  shift / shift; 1 = follows exactly). Measured goal-free and with the goal moved with the object.
* **goal swap**: another episode's goal instead of the frame's; the chunk's change (rad) against
  the change from the sampling noise alone (``goal_swap_ratio`` > 1: the goal is read).
* **perception dropout**: an object never seen, and no tool state for more than ``hold_after``
  frames: the policy must hold (the measured joints before any target, then its last target).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dexhier import vocabulary as V
from dexhier.episodes import EpisodeDataset


@dataclass(frozen=True)
class ProbeConfig:
    frames: int = 60
    shift: float = 0.02
    radius: float = 0.08
    seed: int = 0


def _frames(root: str | Path, cfg: ProbeConfig) -> list[dict[str, Any]]:
    rng = np.random.default_rng(cfg.seed)
    ds = EpisodeDataset(root)
    out = []
    for ep in ds:
        if V.PERC_OBJECT not in ep.keys:
            raise ValueError(f"{root}: no perception keys; record with `dexhier collect expert --perception`")
        obj, tips = np.asarray(ep[V.PERC_OBJECT]), np.asarray(ep[V.PERC_TIP_CENTER])
        horiz = np.linalg.norm(obj[:, :2] - tips[:, :2], axis=1)
        above = tips[:, 2] - obj[:, 2] > 0.02
        fresh = np.asarray(ep[V.PERC_OBJECT_VALID])[:, 0] > 0
        cand = np.nonzero((horiz < cfg.radius) & above & fresh)[0]
        cand = cand[cand < len(ep) - 20]
        if len(cand) == 0:
            continue
        t = int(rng.choice(cand))
        step = {k: np.asarray(ep[k][t]) for k in (V.OBS_ARM_QPOS, V.OBS_HAND_QPOS, *V.PERCEPTION_KEYS)}
        g = t + 20
        goal = {V.GOAL_TOOL_TIP_GAP: np.asarray(ep[V.OBS_TOOL_TIP_GAP][g]).reshape(1),
                V.GOAL_TOOL_TIP_CENTER: np.asarray(ep[V.PERC_TIP_CENTER][g])}  # fmt: skip
        out.append(
            {"obs": step, "goal": goal, "names": list(ds.meta["arm_joints"]) + list(ds.meta["hand_joints"])}
        )
        if len(out) >= cfg.frames:
            break
    if len(out) < 2:
        raise ValueError(f"{root}: fewer than 2 approach frames to probe")
    return out


def _shifted(obs: dict[str, np.ndarray], delta: np.ndarray) -> dict[str, np.ndarray]:
    o = dict(obs)
    obj = o[V.PERC_OBJECT].copy()
    obj[:3] += delta
    o[V.PERC_OBJECT] = obj
    o[V.PERC_OBJECT_POINTS] = (o[V.PERC_OBJECT_POINTS] + delta).astype(np.float32)
    return o


def probe(checkpoint: str | Path, data: str | Path, cfg: ProbeConfig | None = None) -> dict[str, Any]:
    from perception.cell_geometry import CellGeometry
    from policies.low_level.oc_policy import ObjectCentricPolicy

    cfg = cfg or ProbeConfig()
    pol = ObjectCentricPolicy.load(checkpoint)
    frames = _frames(data, cfg)
    geo = CellGeometry()
    tool = geo.cell.tool

    def tips_after(obs, goal, seed) -> np.ndarray:
        chunk = pol.predict_chunk(obs, goal, torch.Generator().manual_seed(seed))
        geo.set_joints(pol.joint_names, chunk[-1], theta=tool.theta_for_gap(float(obs[V.PERC_TIP_GAP][0])))
        return geo.tip_center()

    dirs = [np.array(d, float) * cfg.shift for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0))]
    resp_free, resp_goal = [], []
    for i, f in enumerate(frames):
        base_free, base_goal = tips_after(f["obs"], None, i), tips_after(f["obs"], f["goal"], i)
        for d in dirs:
            moved = _shifted(f["obs"], d)
            goal = {**f["goal"], V.GOAL_TOOL_TIP_CENTER: f["goal"][V.GOAL_TOOL_TIP_CENTER] + d}
            resp_free.append(float((tips_after(moved, None, i) - base_free) @ d) / cfg.shift**2)
            resp_goal.append(float((tips_after(moved, goal, i) - base_goal) @ d) / cfg.shift**2)
    swap, noise = [], []
    for i, f in enumerate(frames):
        other = frames[(i + len(frames) // 2) % len(frames)]["goal"]
        # the other goal keeps its offset from its own object: re-anchor it on this frame's object
        a = pol.predict_chunk(f["obs"], f["goal"], torch.Generator().manual_seed(i))
        b = pol.predict_chunk(f["obs"], f["goal"], torch.Generator().manual_seed(i + 10_000))
        c = pol.predict_chunk(f["obs"], other, torch.Generator().manual_seed(i))
        noise.append(float(np.abs(a - b).mean()))
        swap.append(float(np.abs(a - c).mean()))
    f = frames[0]
    never = {**f["obs"], V.PERC_OBJECT_AGE: np.array([10_000.0])}
    blind = {**f["obs"], V.PERC_VALID: np.zeros(1)}
    q = np.concatenate([f["obs"][V.OBS_ARM_QPOS], f["obs"][V.OBS_HAND_QPOS]])
    pol.reset(0)
    holds = [np.allclose(pol.select_action(never, f["goal"]), np.clip(q, pol.lower, pol.upper))]
    pol.select_action(f["obs"], f["goal"])  # a target is sent; a long dropout then repeats the last one
    for _ in range(pol.config.hold_after):
        pol.select_action(blind, f["goal"])
    last = pol._last.copy()
    holds.append(np.allclose(pol.select_action(blind, f["goal"]), last))
    return {
        "frames": len(frames),
        "shift_m": cfg.shift,
        "object_shift_response_goal_free": float(np.mean(resp_free)),
        "object_shift_response_with_goal": float(np.mean(resp_goal)),
        "object_shift_moved_m_goal_free": float(np.mean(resp_free)) * cfg.shift,
        "object_shift_moved_m_with_goal": float(np.mean(resp_goal)) * cfg.shift,
        "goal_swap_change_rad": float(np.mean(swap)),
        "sampling_noise_change_rad": float(np.mean(noise)),
        "goal_swap_ratio": float(np.mean(swap) / max(np.mean(noise), 1e-9)),
        "dropout_holds": bool(all(holds)),
        "dropout_hold_count": int(pol.holds),
    }
