"""Training data and trainer of the object-centric low level (``dexhier train lowlevel-oc``).

Samples: every step ``t`` of every episode with its perception keys; the action chunk is the
actions actually sent from ``t`` on (padded with the last), as offsets from the measured joints;
the goal is hindsight: the perceived tips and the measured tip gap ``U{goal_min..goal_max}`` steps
later, the tips relative to the object as perceived at ``t``. Episodes recorded without
label-free perception are refused with the command that records it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dexhier import vocabulary as V
from dexhier.episodes import EpisodeDataset
from policies.low_level import oc_features as F
from policies.low_level.edm import sample_training_sigma, training_target
from policies.low_level.object_centric import OCConfig
from policies.low_level.tip_actions import tip_rows, wrap
from policies.normalization import MinMaxNormalizer
from policies.optim import allreduce_gradients, dist_info, ema_update, warmup_cosine


@dataclass(frozen=True)
class OCTrainConfig:
    """Optimisation settings. ``goal_min``/``goal_max``: hindsight goal offsets (steps)."""

    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    goal_min: int = 15
    goal_max: int = 25
    val_fraction: float = 0.05
    object_noise: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.lr <= 0 or not 0 <= self.val_fraction < 0.5:
            raise ValueError("batch >= 1, lr > 0 and val_fraction in [0, 0.5) are required")
        if not 1 <= self.goal_min <= self.goal_max:
            raise ValueError("need 1 <= goal_min <= goal_max")


class OCData:
    """All steps of the given datasets in memory: arrays indexed by a global step index."""

    def __init__(self, roots: Sequence[str | Path], horizon: int, action_space: str = "joint") -> None:
        self.horizon, self.action_space = horizon, action_space
        kin = None
        arrays: dict[str, list[np.ndarray]] = {}
        starts, ends, names = [], [], None
        n = 0
        for root in roots:
            ds = EpisodeDataset(root)
            meta_names = list(ds.meta.get("arm_joints", [])) + list(ds.meta.get("hand_joints", []))
            if names is None:
                names, self.meta = meta_names, ds.meta
            elif names != meta_names:
                raise ValueError(f"{root}: joints {meta_names} differ from the first dataset's {names}")
            for ep in ds:
                missing = [k for k in V.PERCEPTION_KEYS if k not in ep.keys]
                if missing:
                    raise ValueError(
                        f"{root}: episode {ep.index} has no label-free perception keys ({missing[0]}, ...); "
                        "record them with `dexhier collect expert --perception` (older datasets cannot be "
                        "converted: their perception-resolution depth was not kept)"
                    )
                obs = {k: np.asarray(ep[k]) for k in (V.OBS_ARM_QPOS, V.OBS_HAND_QPOS, *V.PERCEPTION_KEYS)}
                rows = {
                    "proprio": F.proprio(obs),
                    "extra": F.extra(obs),
                    "tool_points": F.points(obs, V.PERC_TOOL_POINTS),
                    "object_points": F.points(obs, V.PERC_OBJECT_POINTS),
                    "action": np.asarray(ep[V.ACTION]),
                    "gap": np.asarray(ep[V.OBS_TOOL_TIP_GAP]).reshape(-1, 1),
                    "tips": obs[V.PERC_TIP_CENTER],
                    "centre": obs[V.PERC_OBJECT][:, :3],
                }
                if action_space == "tip":
                    if kin is None:
                        from policies.low_level.tip_actions import TipKinematics

                        kin = TipKinematics(meta_names)
                    rows["tip_target"] = tip_rows(kin, rows["action"])
                    rows["tip_now"] = tip_rows(kin, rows["proprio"])
                for k, v in rows.items():
                    arrays.setdefault(k, []).append(v)
                starts.append(n)
                n += len(ep)
                ends.append(n)
        if n == 0:
            raise ValueError(f"no episodes in {', '.join(map(str, roots))}")
        self.joint_names = names
        self.data = {k: np.concatenate(v) for k, v in arrays.items()}
        self.episode_start, self.episode_end = np.array(starts), np.array(ends)
        self.step_episode = np.repeat(np.arange(len(starts)), np.diff([0, *ends]))

    @property
    def episodes(self) -> int:
        return len(self.episode_start)

    def steps_of(self, episodes: np.ndarray) -> np.ndarray:
        return np.nonzero(np.isin(self.step_episode, episodes))[0]

    def batch(self, idx: np.ndarray, rng: np.random.Generator, cfg: OCTrainConfig) -> dict[str, np.ndarray]:
        """Raw inputs, goal and action-offset chunk (B, H, A) of the global steps ``idx``."""
        d, H = self.data, self.horizon
        end = self.episode_end[self.step_episode[idx]] - 1
        ks = np.minimum(idx[:, None] + np.arange(H)[None], end[:, None])
        if self.action_space == "tip":
            chunk = d["tip_target"][ks] - d["tip_now"][idx][:, None]
            chunk[..., 3] = wrap(chunk[..., 3])
        else:
            chunk = d["action"][ks] - d["proprio"][idx][:, None]
        g = np.minimum(idx + rng.integers(cfg.goal_min, cfg.goal_max + 1, len(idx)), end)
        extra = d["extra"][idx].copy()
        if cfg.object_noise > 0:  # perception's centroid error, so the goal offset tolerates it
            extra[:, 1:4] += rng.normal(0, cfg.object_noise, (len(idx), 3))
        centre = d["tips"][idx] + extra[:, 1:4]
        goal = np.concatenate([d["gap"][g], d["tips"][g] - centre], axis=1)
        return {
            "proprio": d["proprio"][idx], "extra": extra, "tool_points": d["tool_points"][idx],
            "object_points": d["object_points"][idx], "goal": goal, "action": chunk.reshape(len(idx), -1),
        }  # fmt: skip

    def fit_normalizer(self, cfg: OCTrainConfig) -> MinMaxNormalizer:
        rng = np.random.default_rng(cfg.seed)
        idx = np.arange(len(self.data["proprio"]))
        b = self.batch(idx, rng, cfg)
        return MinMaxNormalizer.fit({k: b[k] for k in ("proprio", "extra", "goal", "action")})


def to_tensors(b: dict[str, np.ndarray], norm: MinMaxNormalizer) -> dict[str, torch.Tensor]:
    out = {
        k: torch.as_tensor(norm.normalize(k, b[k]), dtype=torch.float32) for k in ("proprio", "extra", "goal")
    }
    out["tool_points"] = torch.as_tensor(b["tool_points"])
    out["object_points"] = torch.as_tensor(b["object_points"])
    return out


class OCTrainer:
    """One optimisation of an ``OCNet`` (the ``policies.optim.Trainable`` protocol)."""

    def __init__(self, policy, data: OCData, cfg: OCTrainConfig, steps: int, out: Path) -> None:
        self.policy, self.data, self.cfg, self.steps, self.out = policy, data, cfg, steps, out
        self.rank, self.world = dist_info()
        self.rng = np.random.default_rng(cfg.seed + self.rank)
        self.gen = torch.Generator().manual_seed(cfg.seed + self.rank)
        eps = np.random.default_rng(cfg.seed).permutation(data.episodes)
        n_val = max(1, round(cfg.val_fraction * data.episodes)) if data.episodes > 1 else 0
        self.val_steps, self.train_steps = data.steps_of(eps[:n_val]), data.steps_of(eps[n_val:])
        self.net = policy.net.train()
        self.ema = copy.deepcopy(self.net).eval()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0

    def train_step(self) -> float:
        cfg, pol = self.cfg, self.policy
        for group in self.opt.param_groups:
            group["lr"] = warmup_cosine(self.step, self.steps, cfg.warmup, cfg.lr)
        idx = self.rng.choice(self.train_steps, cfg.batch)
        raw = self.data.batch(idx, self.rng, cfg)
        t = to_tensors(raw, pol.norm)
        clean = torch.as_tensor(pol.norm.normalize("action", raw["action"]), dtype=torch.float32)
        clean = clean.view(len(idx), pol.config.horizon, -1)
        drop = torch.rand(len(idx), generator=self.gen) < pol.config.goal_dropout
        cond = self.net.encode(t, t["goal"], drop)
        sigma = sample_training_sigma(pol.config.edm, len(idx), self.gen)
        noise = torch.randn(clean.shape, generator=self.gen)
        x_in, c_noise, target = training_target(clean, noise, sigma, pol.config.edm.sigma_data)
        loss = torch.nn.functional.mse_loss(self.net.denoise(x_in, c_noise, cond), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            allreduce_gradients(self.net, self.world)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        ema_update(self.ema, self.net, min(0.999, (1 + self.step) / (10 + self.step)), self.step)
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Mean absolute error of sampled chunks on held-out episodes, in normalized units."""
        if len(self.val_steps) == 0:
            return {}
        pol = self.policy
        rng = np.random.default_rng(1)
        idx = rng.choice(self.val_steps, min(512, len(self.val_steps)), replace=False)
        raw = self.data.batch(idx, rng, self.cfg)
        pred = pol.sample_normalized(
            self.ema, to_tensors(raw, pol.norm), generator=torch.Generator().manual_seed(0)
        )
        truth = torch.as_tensor(pol.norm.normalize("action", raw["action"]), dtype=torch.float32)
        err = (pred.flatten(1) - truth).abs()
        return {
            "val_chunk_mae": float(err.mean()),
            "val_first_action_mae": float(err[:, : pred.shape[-1]].mean()),
        }

    def save(self, metrics: dict[str, Any]) -> None:
        if self.rank == 0:
            self.policy.net = self.ema
            self.policy.save(self.out, metrics)
            self.policy.net = self.net


def train(
    data: Sequence[str | Path],
    out: str | Path,
    policy_cfg: OCConfig,
    cfg: OCTrainConfig,
    steps: int,
    checkpoint_every: int = 1000,
    log=print,
    bar: Any = None,
) -> dict[str, Any]:
    """Train an object-centric low level from scratch into ``out``; returns the final metrics."""
    from policies.low_level.oc_policy import ObjectCentricPolicy
    from policies.optim import fit

    torch.manual_seed(cfg.seed)
    d = OCData(data, policy_cfg.horizon, policy_cfg.action_space)
    meta = d.meta
    policy = ObjectCentricPolicy(
        policy_cfg,
        d.joint_names,
        meta["action_lower"],
        meta["action_upper"],
        d.fit_normalizer(cfg),
        n_arm=len(meta["arm_joints"]),
    )
    trainer = OCTrainer(policy, d, cfg, steps, Path(out))
    params = sum(p.numel() for p in policy.net.parameters()) / 1e6
    log(f"data: {len(trainer.train_steps)} training steps from {d.episodes} episodes "
        f"({len(trainer.val_steps)} validation steps); {params:.2f} M parameters")  # fmt: skip
    describe = lambda m: f", val chunk MAE {m.get('val_chunk_mae', float('nan')):.4f} (normalized)"  # noqa: E731
    return fit(trainer, steps, checkpoint_every, log, bar, describe)
