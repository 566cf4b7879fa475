"""The goal-conditioned low-level policy: observation + goal -> a chunk of arm and hand joint targets.

Contract (docs/ARCHITECTURE.md, "Low-level policy"): ``predict_chunk(obs, goal) -> actions (H, A)``
is pure; ``select_action(obs, goal) -> action (A,)`` keeps a queue of the current chunk (and the
proprio history) and replans every ``exec_steps``; ``reset()`` clears both. Neither mutates its inputs.

Observation keys (``dexhier.vocabulary``): ``arm/qpos`` (n_arm,), ``hand/qpos`` (n_hand,),
``tool/tip_gap`` (1,) in m, and ``rgb/<camera>`` uint8 (S, S, 3) for each configured camera.
Proprio keys may carry a leading history axis (T_o, n), oldest first. Goal keys: ``goal/rgb``
uint8 (S, S, 3) and ``goal/tool/tip_gap`` (1,) in m; ``goal=None`` runs goal-free. Actions are
absolute joint targets in rad, arm then hand, always finite and inside the joint limits.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dexhier import vocabulary as V
from dexhier.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from policies.low_level.config import PolicyConfig, RobotLayout
from policies.low_level.diffusion import make_diffusion
from policies.low_level.network import InferenceNet, LowLevelNet
from policies.normalization import MinMaxNormalizer

CHECKPOINT_TYPE = "dexhier.lowlevel_policy"
PROPRIO = "proprio"
ACTION = "action"
GOAL_GAP = "goal_gap"


def build_net(cfg: PolicyConfig, layout: RobotLayout) -> LowLevelNet:
    return LowLevelNet(
        cfg.net, layout.proprio_dim, layout.action_dim, cfg.horizon, cfg.obs_horizon, len(cfg.cameras)
    )


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., S, S, 3) -> float (..., 3, S, S) in [0, 1]."""
    t = torch.from_numpy(np.array(images, dtype=np.float32, copy=True)).div_(255.0)
    return t.movedim(-1, -3)


class LowLevelPolicy:
    """BESO-style policy (or its DDPM peer) with its normalization and robot layout.

    Build with :meth:`load` from a checkpoint directory, or directly from parts in training.
    ``traced`` runs inference through TorchScript traces of the network (same outputs, faster);
    it is meant for fixed weights, so training uses the eager network.
    """

    def __init__(
        self,
        config: PolicyConfig,
        layout: RobotLayout,
        normalizer: MinMaxNormalizer,
        net: LowLevelNet | None = None,
        traced: bool = True,
    ) -> None:
        self.config, self.layout, self.normalizer = config, layout, normalizer
        self.net = (net or build_net(config, layout)).eval()
        self.traced = traced
        self._fast = InferenceNet(self.net) if traced else self.net
        self.diffusion = make_diffusion(config)
        self._lower = np.asarray(layout.lower)
        self._upper = np.asarray(layout.upper)
        self.nonfinite_fallbacks = 0
        """How many times a non-finite network output was replaced by holding the measured position."""
        self.reset()

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        cfg = {"policy": self.config.to_json(), "robot": self.layout.to_json()}
        return save_checkpoint(
            directory, CHECKPOINT_TYPE, cfg, self.net.state_dict(), self.normalizer.to_json(), metrics
        )

    @classmethod
    def load(cls, directory: str | Path, traced: bool = True, **overrides: Any) -> LowLevelPolicy:
        """Load a checkpoint; ``overrides`` change sampling settings (steps, sampler, cfg_lambda, ...)."""
        doc, weights, stats = load_checkpoint(directory, CHECKPOINT_TYPE)
        try:
            config = PolicyConfig.from_json(doc["config"]["policy"]).with_overrides(**overrides)
            layout = RobotLayout.from_json(doc["config"]["robot"])
            normalizer = MinMaxNormalizer.from_json(stats)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{directory}: bad low-level policy config: {err}") from err
        net = build_net(config, layout)
        try:
            missing, unexpected = net.load_state_dict(weights, strict=False)
        except RuntimeError as err:  # shapes differ from the config's
            raise CheckpointError(f"{directory}: weights do not match the config: {err}") from err
        if missing or unexpected:
            raise CheckpointError(
                f"{directory}: weights do not match the config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        return cls(config, layout, normalizer, net, traced=traced)

    # ------------------------------------------------------------------ inputs
    def _vector(self, obs: Mapping[str, Any], key: str, n: int, name: str = "observation") -> np.ndarray:
        if key not in obs:
            raise KeyError(f"{name} lacks {key!r}")
        a = np.asarray(obs[key], dtype=np.float64)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != n:
            raise ValueError(f"{name} {key!r} has shape {np.shape(obs[key])}; expected ({n},) or (T, {n})")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} {key!r} has non-finite values")
        return a

    def _image(self, obs: Mapping[str, Any], key: str, name: str = "observation") -> np.ndarray:
        if key not in obs:
            raise KeyError(f"{name} lacks {key!r}")
        img = np.asarray(obs[key])
        s = self.config.image_size
        if img.dtype != np.uint8 or img.shape != (s, s, 3):
            raise ValueError(f"{name} {key!r} is {img.dtype} {img.shape}; expected uint8 ({s}, {s}, 3) RGB")
        return img

    def proprio(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Proprio history (T, P) from an observation: arm and hand joints (rad), tip gap (m)."""
        arm = self._vector(obs, V.OBS_ARM_QPOS, len(self.layout.arm_joints))
        hand = self._vector(obs, V.OBS_HAND_QPOS, len(self.layout.hand_joints))
        gap = self._vector(obs, V.OBS_TOOL_TIP_GAP, 1)
        if not arm.shape[0] == hand.shape[0] == gap.shape[0]:
            raise ValueError("arm, hand and tool histories have different lengths")
        return np.concatenate([arm, hand, gap], axis=1)

    def _condition(self, proprio: np.ndarray, obs: Mapping[str, Any], goal: Mapping[str, Any] | None):
        cfg = self.config
        t_o = cfg.obs_horizon
        hist = proprio[-t_o:]
        if len(hist) < t_o:  # pad the start of an episode with the first measurement
            hist = np.concatenate([np.repeat(hist[:1], t_o - len(hist), 0), hist])
        images = np.stack([self._image(obs, V.rgb_key(c)) for c in cfg.cameras])
        if goal is None:
            goal_img = np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8)
            goal_gap = np.zeros((1, 1))
        else:
            goal_img = self._image(goal, V.GOAL_RGB, "goal")
            goal_gap = self._vector(goal, V.GOAL_TOOL_TIP_GAP, 1, "goal")[-1:]
        p = torch.as_tensor(self.normalizer.normalize(PROPRIO, hist), dtype=torch.float32)[None]
        g = torch.as_tensor(self.normalizer.normalize(GOAL_GAP, goal_gap), dtype=torch.float32)
        mask = torch.tensor([goal is not None])
        return self._fast.encode(images_to_tensor(images)[None], p, images_to_tensor(goal_img)[None], g, mask)

    # ------------------------------------------------------------------ inference
    def predict_chunk(
        self,
        obs: Mapping[str, Any],
        goal: Mapping[str, Any] | None,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """A chunk (H, A) of absolute joint targets (rad) from ``obs`` and ``goal``; pure."""
        return self._chunk(self.proprio(obs), obs, goal, generator)

    @torch.inference_mode()
    def _chunk(self, proprio, obs, goal, generator) -> np.ndarray:
        cfg = self.config
        cond = self._condition(proprio, obs, goal)
        lam = cfg.cfg_lambda if goal is not None else 1.0  # goal-free already uses the null goal
        x = self.diffusion.sample(
            self._fast, cond, (1, cfg.horizon, self.layout.action_dim), cfg.steps, lam, generator
        )
        # Inside the training range (normalized [-1, 1]), as BESO clips to the data's min / max.
        actions = self.normalizer.denormalize(ACTION, x[0].clamp(-1.0, 1.0).double().numpy())
        bad = ~np.isfinite(actions)
        if bad.any():  # never send NaN: hold the measured joint positions instead
            self.nonfinite_fallbacks += 1
            hold = np.broadcast_to(proprio[-1, : self.layout.action_dim], actions.shape)
            actions = np.where(bad, hold, actions)
        return np.clip(actions, self._lower, self._upper)

    def reset(self, seed: int | None = None) -> None:
        """Clear the action queue and the history; ``seed`` makes the sampling noise reproducible."""
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._history: collections.deque[np.ndarray] = collections.deque(maxlen=self.config.obs_horizon)
        self._ensemble: list[tuple[int, np.ndarray]] = []
        self._t = 0
        self.generator = torch.Generator().manual_seed(0 if seed is None else int(seed))

    def select_action(self, obs: Mapping[str, Any], goal: Mapping[str, Any] | None) -> np.ndarray:
        """The next joint targets (A,), replanning when the queue is empty (or every step when ensembling)."""
        current = self.proprio(obs)[-1]
        self._history.append(current)
        hist = np.stack(self._history)
        cfg = self.config
        if cfg.temporal_ensemble:
            self._ensemble.append((self._t, self._chunk(hist, obs, goal, self.generator)))
            self._ensemble = [(t0, c) for t0, c in self._ensemble if self._t - t0 < cfg.horizon]
            ages = np.array([self._t - t0 for t0, _ in self._ensemble], dtype=np.float64)
            w = np.exp(-cfg.ensemble_decay * ages)
            preds = np.stack([c[self._t - t0] for t0, c in self._ensemble])
            action = (w[:, None] * preds).sum(0) / w.sum()
        else:
            if not self._queue:
                self._queue.extend(self._chunk(hist, obs, goal, self.generator)[: cfg.exec_steps])
            action = self._queue.popleft()
        self._t += 1
        return np.clip(action, self._lower, self._upper)
