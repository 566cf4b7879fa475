"""The object-centric low level as a policy: ``predict_chunk``, ``select_action``, ``reset``.

Contract (the same as ``LowLevelPolicy``): ``predict_chunk(obs, goal) -> actions (H, A)`` is pure;
``select_action(obs, goal) -> action (A,)`` executes a chunk queue and replans every
``exec_steps``; ``reset(seed)`` clears it. Neither mutates its inputs.

Observation keys: ``arm/qpos``, ``hand/qpos`` (rad) and label-free perception's ``perception/*``
keys (``perception.observer.ObjectObserver``). Goal keys: ``goal/tool/tip_gap`` (1,) m and
``goal/tool/tip_center`` (3,) m in ``base_link``; ``goal=None`` is the goal-free policy.
Actions are absolute joint targets (rad), finite and inside the joint limits.

**Perception dropout holds.** With the object never seen, or no tool state measured for more than
``hold_after`` frames, ``select_action`` repeats its last target (the measured joints before any)
and counts it in ``holds``; the queue is cleared so the next valid frame replans.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dexhier import vocabulary as V
from dexhier.checkpoints import load_checkpoint, save_checkpoint
from policies.low_level import oc_features as F
from policies.low_level.edm import preconditioning, sample
from policies.low_level.object_centric import OCConfig, OCNet
from policies.normalization import MinMaxNormalizer

CHECKPOINT_TYPE = "dexhier.lowlevel_object_centric"
CONTROL_DT = 0.05
"""s: the control period the tip space's differential IK integrates over (20 Hz)."""
GOAL_TIP_CENTER = V.GOAL_TOOL_TIP_CENTER
AGE_NEVER = 10_000.0
"""``perception/object_age`` at or above this means the object was never seen (the observer's value)."""


class ObjectCentricPolicy:
    """Network + normalization + joint names and limits. Build with :meth:`load` or from parts."""

    def __init__(
        self,
        config: OCConfig,
        joint_names,
        lower,
        upper,
        norm: MinMaxNormalizer,
        net=None,
        n_arm: int = 6,
        cell=None,
    ) -> None:
        self.config, self.joint_names, self.n_arm = config, tuple(joint_names), int(n_arm)
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.norm = norm
        n = len(self.joint_names)
        self.action_dim = n if config.action_space == "joint" else 4 + n - self.n_arm
        self.net = (net or OCNet(config, n, self.action_dim)).eval()
        self.kin = None
        if config.action_space == "tip":
            from policies.low_level.tip_actions import TipKinematics

            self.kin = TipKinematics(self.joint_names, cell)
        self.holds = 0
        self.ik_dt = CONTROL_DT
        self.reset()

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        cfg = {"policy": self.config.to_json(), "joint_names": list(self.joint_names), "n_arm": self.n_arm,
               "lower": self.lower.tolist(), "upper": self.upper.tolist()}  # fmt: skip
        return save_checkpoint(
            directory, CHECKPOINT_TYPE, cfg, self.net.state_dict(), self.norm.to_json(), metrics
        )

    @classmethod
    def load(cls, directory: str | Path, cell=None, **overrides: Any) -> ObjectCentricPolicy:
        """Load a checkpoint; ``cell`` (the configured ``CellConfig``) serves the tip space's IK."""
        doc, weights, stats = load_checkpoint(directory, CHECKPOINT_TYPE)
        c = doc["config"]
        config = OCConfig.from_json({**c["policy"], **{k: v for k, v in overrides.items() if v is not None}})
        norm = MinMaxNormalizer.from_json(stats)
        pol = cls(config, c["joint_names"], c["lower"], c["upper"], norm, n_arm=c.get("n_arm", 6), cell=cell)
        pol.net.load_state_dict(weights)
        return pol

    # ------------------------------------------------------------ inference
    def _inputs(self, obs: Mapping[str, Any], goal: Mapping[str, Any] | None):
        F.check(obs)
        for key in (V.PERC_TOOL_POINTS, V.PERC_OBJECT_POINTS):
            if np.shape(obs[key]) != (self.config.n_points, 3):
                raise ValueError(f"{key} must be ({self.config.n_points}, 3), got {np.shape(obs[key])}")
        q = F.proprio(obs)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f"proprio has {q.shape} values, the policy has {len(self.joint_names)} joints")
        raw = {"proprio": q[None], "extra": F.extra(obs)[None],
               "tool_points": F.points(obs, V.PERC_TOOL_POINTS)[None],
               "object_points": F.points(obs, V.PERC_OBJECT_POINTS)[None]}  # fmt: skip
        t = {
            k: torch.as_tensor(self.norm.normalize(k, raw[k]), dtype=torch.float32)
            for k in ("proprio", "extra")
        }
        t["tool_points"] = torch.as_tensor(raw["tool_points"])
        t["object_points"] = torch.as_tensor(raw["object_points"])
        if goal is not None:
            gap = np.asarray(goal[V.GOAL_TOOL_TIP_GAP], float).reshape(1)
            tips = np.asarray(goal[GOAL_TIP_CENTER], float).reshape(3)
            if not (np.all(np.isfinite(gap)) and np.all(np.isfinite(tips))):
                raise ValueError("goal has non-finite values")
            g = F.goal(gap, tips, obs)[None]
            t["goal"] = torch.as_tensor(self.norm.normalize("goal", g), dtype=torch.float32)
        return q, t

    @torch.no_grad()
    def sample_normalized(self, net: OCNet, t: dict[str, torch.Tensor], generator=None) -> torch.Tensor:
        """Normalized action-offset chunks (B, H, A) for normalized inputs ``t`` (goal optional)."""
        cfg = self.config
        cond = net.encode(t, t.get("goal"))
        # Classifier-free guidance: uncond + lambda (cond - uncond), the goal-free pass only if needed.
        guide = t.get("goal") is not None and cfg.cfg_lambda != 1.0
        uncond = net.encode(t, None) if guide else None
        sd = cfg.edm.sigma_data

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            c_skip, c_out, c_in, c_noise = preconditioning(sigma.view(-1, 1, 1), sd)
            f = net.denoise(c_in * x, c_noise.view(-1), cond)
            if guide:
                f_u = net.denoise(c_in * x, c_noise.view(-1), uncond)
                f = f_u + cfg.cfg_lambda * (f - f_u)
            return c_skip * x + c_out * f

        shape = (len(cond), cfg.horizon, self.action_dim)
        return sample(denoise, shape, cfg.edm, cfg.steps, cfg.sampler, generator=generator).clamp(-1.0, 1.0)

    def predict_chunk(
        self, obs: Mapping[str, Any], goal: Mapping[str, Any] | None, generator=None
    ) -> np.ndarray:
        """(H, A) absolute joint targets (rad) for one observation and goal; pure."""
        return self._chunk(obs, goal, generator, self.config.horizon)

    def _chunk(self, obs, goal, generator, n: int) -> np.ndarray:
        """The first ``n`` steps of a chunk (the tip space's IK runs for those only)."""
        q, t = self._inputs(obs, goal)
        x = self.sample_normalized(self.net, t, generator)
        offsets = self.norm.denormalize("action", x.reshape(1, -1).numpy()).reshape(self.config.horizon, -1)[
            :n
        ]
        if self.kin is not None:  # tip space: the arm by IK from the measured joints, a fresh solution
            self.kin.reset_ik(q[: self.n_arm], self.ik_dt)
            chunk = self.kin.joints(q, np.nan_to_num(offsets))
        else:
            chunk = q[None] + offsets
        bad = ~np.isfinite(chunk)
        chunk[bad] = np.broadcast_to(q, chunk.shape)[bad]
        return np.clip(chunk, self.lower, self.upper)

    # --------------------------------------------------------------- control
    def reset(self, seed: int | None = None) -> None:
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self.holds = 0
        self._tool_dropout = 0
        self._last: np.ndarray | None = None

    def must_hold(self, obs: Mapping[str, Any]) -> bool:
        """True when perception cannot support an action: the object never seen, or no tool state
        measured for more than ``hold_after`` frames. (An object estimate may age while the object
        sits hidden in the tips; its last estimate then still places it.)"""
        if float(np.asarray(obs.get(V.PERC_VALID, [0.0]))[0]) > 0.0:
            self._tool_dropout = 0
        else:
            self._tool_dropout += 1
        age = float(np.asarray(obs.get(V.PERC_OBJECT_AGE, [np.inf]))[0])
        never_object = not age < AGE_NEVER
        return never_object or self._tool_dropout > self.config.hold_after

    def select_action(self, obs: Mapping[str, Any], goal: Mapping[str, Any] | None) -> np.ndarray:
        """The next joint target (A,): from the queue, replanning when it is empty. Under perception
        dropout, a hold: the last target sent (as a trajectory controller keeps its last setpoint, so
        a grip keeps its squeeze), or the measured joints before any."""
        if self.must_hold(obs):
            self._queue.clear()
            self.holds += 1
            held = self._last if self._last is not None else F.proprio(obs).astype(float)
            return np.clip(held, self.lower, self.upper)
        if not self._queue:
            self._queue.extend(self._chunk(obs, goal, self._gen, self.config.exec_steps))
        self._last = self._queue.popleft()
        return self._last
