"""Training the low-level policy (``dexhier train lowlevel``), on one process or under torchrun.

Recipe: AdamW, linear warm-up then cosine decay, EMA of the weights (BESO: 0.999) used for
evaluation and saved as the checkpoint; hindsight goals with whole-goal dropout for
classifier-free guidance; independent random shift and colour jitter on observation and goal
images; Gaussian noise on the measured tip gap (the affordance encoder's error at run time).

Data parallel: under ``torchrun --nproc_per_node N`` (env ``WORLD_SIZE`` > 1) each rank draws its
own batches and the gradients are averaged with an all-reduce (gloo on CPU, NCCL on GPUs); rank 0
writes checkpoints. A checkpoint and the resumable training state are written every
``checkpoint_every`` steps; running the same command again resumes from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dexhier.checkpoints import (
    load_train_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_train_state,
)
from policies.low_level.config import PolicyConfig
from policies.low_level.dataset import ChunkDataset, GoalSampling, augment_images
from policies.low_level.diffusion import make_diffusion
from policies.low_level.policy import ACTION, GOAL_GAP, PROPRIO, LowLevelPolicy, build_net, images_to_tensor
from policies.normalization import MinMaxNormalizer
from policies.optim import allreduce_gradients, dist_info, ema_update, fit, warmup_cosine


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Counts are optimizer steps or samples; lengths in m."""

    steps: int = 6000
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    val_episodes: float = 0.05
    """Fraction of episodes held out for the validation chunk error."""
    gap_noise: float = 0.0003
    """Std of the noise on the measured (and goal) tip gap, m."""
    shift: int = 1
    """Random-shift augmentation, px. The object is 1-3 px wide in the 64x64 scene view, and independent
    4 px shifts of observation and goal images blur where the goal image puts the arm by about 5 cm
    (the first recipe, with 4 px, missed the object by that much and picked 0 of 8)."""
    jitter: float = 0.2
    init_from: str | None = None
    """A low-level checkpoint whose (EMA) weights and normalization start this run: fine-tuning.
    Not part of the recipe: once a run has a training state, that state is where it resumes from."""
    goals: GoalSampling = field(default_factory=GoalSampling)
    aux_weight: float = 0.5
    """Weight of the auxiliary localization losses (object position from the observation images, tool
    tip from the goal image; twin data only). Without them the policy ignored its images."""
    balance_datasets: bool = True
    """Draw each ``--data`` dataset equally often (else each step equally often)."""
    seed: int = 0
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be >= 1")
        if not 0.0 <= self.val_episodes < 0.5:
            raise ValueError("val_episodes must be in [0, 0.5)")
        if self.shift < 0 or self.jitter < 0 or self.warmup < 1:
            raise ValueError("shift and jitter must be >= 0, warmup >= 1")
        if self.init_from is not None and not (Path(self.init_from) / "config.json").is_file():
            raise FileNotFoundError(f"--init-from: no low-level checkpoint at {self.init_from}")

    def recipe_key(self) -> str:
        """What must match to resume: everything but the step budget, checkpoint period and start."""
        doc = asdict(self)
        doc.pop("steps"), doc.pop("checkpoint_every"), doc.pop("init_from")
        return json.dumps(doc, sort_keys=True, default=str)


class Trainer:
    """One training run into ``out``; see the module docstring."""

    def __init__(self, data: Sequence[str | Path], out: str | Path, cfg: TrainConfig) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.rank, self.world = dist_info()
        self.train_set, self.val_set = ChunkDataset.split(data, cfg.policy, cfg.val_episodes, cfg.seed)
        self.layout = self.train_set.layout
        aux = self.train_set.aux
        known = np.isfinite(aux).all(1)
        aux_stats = aux[known] if known.any() else np.zeros((1, 6))
        self.normalizer = MinMaxNormalizer.fit(
            {
                PROPRIO: self.train_set.proprio,
                ACTION: self.train_set.actions,
                GOAL_GAP: self.train_set.proprio[:, -1:],
                "aux_object": aux_stats[:, :3],
                "aux_goal_tip": aux_stats[:, 3:],
            }
        )
        torch.manual_seed(cfg.seed)
        self.net = build_net(cfg.policy, self.layout)
        self.ema = build_net(cfg.policy, self.layout)
        self.ema.load_state_dict(self.net.state_dict())
        self.ema.requires_grad_(False)
        self.diffusion = make_diffusion(cfg.policy)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     betas=(0.9, 0.999))  # fmt: skip
        self.step = 0
        if not self._resume() and cfg.init_from is not None:
            self._init_from(cfg.init_from)
        # Dropout draws from the global generator: a different stream per rank and per resume.
        torch.manual_seed(cfg.seed * 1_000_003 + self.rank * 7919 + self.step)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank + 7919 * self.step)
        self.rng = np.random.default_rng([cfg.seed, self.rank, self.step])

    # -------------------------------------------------------------------- state
    def _init_from(self, directory: str) -> None:
        """Start from a trained checkpoint: its EMA weights for both nets, its normalization widened
        to cover this run's data (a task that moves elsewhere, e.g. to the bin)."""
        start = LowLevelPolicy.load(directory, traced=False)
        if start.layout != self.layout or start.config.net != self.cfg.policy.net:
            raise ValueError(f"--init-from {directory}: another robot layout or network than this run's")
        weights = start.net.state_dict()
        self.net.load_state_dict(weights)
        self.ema.load_state_dict(weights)
        mine = self.normalizer
        if not np.isfinite(self.train_set.aux).all(1).any():  # no aux labels (teleop): the start's aux ranges
            lo, hi = dict(mine.lo), dict(mine.hi)
            for key in ("aux_object", "aux_goal_tip"):
                lo[key], hi[key] = start.normalizer.lo[key], start.normalizer.hi[key]
            mine = MinMaxNormalizer(lo, hi)
        self.normalizer = start.normalizer.union(mine)

    def _resume(self) -> bool:
        """Load the training state in ``out``, if any; True when there was one."""
        state = load_train_state(self.out)
        if state is None:
            return False
        tensors, meta = state
        if meta.get("recipe") != self.cfg.recipe_key():
            raise ValueError(
                f"{self.out} holds training state of another recipe or data; use a new --out or delete "
                f"{self.out}/train_state.*"
            )
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        optimizer_from_tensors(self.opt, tensors, meta["optimizer"])
        self.normalizer = MinMaxNormalizer.from_json(meta["normalizer"])
        self.step = int(meta["step"])
        return True

    def policy(self) -> LowLevelPolicy:
        """The EMA weights as a policy (shares the EMA module)."""
        return LowLevelPolicy(self.cfg.policy, self.layout, self.normalizer, self.ema, traced=False)

    def save(self, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.policy().save(self.out, metrics)
        opt_t, opt_meta = optimizer_to_tensors(self.opt)
        tensors = {**{f"net.{k}": v for k, v in self.net.state_dict().items()},
                   **{f"ema.{k}": v for k, v in self.ema.state_dict().items()}, **opt_t}  # fmt: skip
        meta = {"step": self.step, "optimizer": opt_meta, "normalizer": self.normalizer.to_json(),
                "recipe": self.cfg.recipe_key(), "world_size": self.world}  # fmt: skip
        save_train_state(self.out, tensors, meta)

    # -------------------------------------------------------------------- steps
    def batch_tensors(self, batch: dict[str, np.ndarray], train: bool) -> dict[str, torch.Tensor]:
        cfg, norm = self.cfg, self.normalizer
        proprio, goal_gap = batch["proprio"].astype(np.float64), batch["goal_gap"].astype(np.float64)
        if train and cfg.gap_noise > 0:
            proprio[..., -1] += self.rng.normal(0, cfg.gap_noise, proprio.shape[:-1])
            goal_gap += self.rng.normal(0, cfg.gap_noise, goal_gap.shape)
        images = images_to_tensor(batch["images"])
        goal_image = images_to_tensor(batch["goal_image"])
        if train:
            b, c = images.shape[:2]
            images = augment_images(images.flatten(0, 1), cfg.shift, cfg.jitter, self.gen).view(images.shape)
            goal_image = augment_images(goal_image, cfg.shift, cfg.jitter, self.gen)
        f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        return {
            "images": images,
            "proprio": f32(norm.normalize(PROPRIO, proprio)),
            "goal_image": goal_image,
            "goal_gap": f32(norm.normalize(GOAL_GAP, goal_gap)),
            "actions": f32(norm.normalize(ACTION, batch["actions"].astype(np.float64))),
        }

    def train_step(self) -> float:
        cfg = self.cfg
        self.net.train()
        batch = self.train_set.sample(cfg.batch_size, self.rng, cfg.goals, cfg.balance_datasets)
        t = self.batch_tensors(batch, train=True)
        keep = torch.rand(cfg.batch_size, generator=self.gen) >= cfg.policy.goal_dropout
        cond = self.net.encode(t["images"], t["proprio"], t["goal_image"], t["goal_gap"], keep)
        loss = self.diffusion.loss(self.net, cond, t["actions"], self.gen)
        if cfg.aux_weight > 0:
            loss = loss + cfg.aux_weight * self._aux_loss(cond, batch, keep)
        lr = warmup_cosine(self.step, cfg.steps, cfg.warmup, cfg.lr)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            allreduce_gradients(self.net, self.world)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        ema_update(self.ema, self.net, cfg.ema_decay, self.step)
        return float(loss.detach())

    def _aux_loss(self, cond: torch.Tensor, batch: dict[str, np.ndarray], keep: torch.Tensor) -> torch.Tensor:
        obj_pred, tip_pred = self.net.auxiliary(cond, len(self.cfg.policy.cameras))
        loss = cond.new_zeros(())
        for pred, key, mask in ((obj_pred, "aux_object", None), (tip_pred, "aux_goal_tip", keep)):
            target = self.normalizer.normalize(key, batch[key].astype(np.float64))
            target = torch.as_tensor(target, dtype=torch.float32)
            ok = torch.isfinite(target).all(1)
            if mask is not None:
                ok &= mask  # a dropped goal has no image to localize from
            if ok.any():
                loss = loss + torch.nn.functional.mse_loss(pred[ok], target[ok])
        return loss

    @torch.no_grad()
    def validate(self, n: int = 256) -> dict[str, float]:
        """Chunk error of 3-step samples of the EMA policy on held-out episodes (normalized units)."""
        data = self.val_set or self.train_set
        rng = np.random.default_rng(12345)
        t = self.batch_tensors(data.sample(n, rng, self.cfg.goals), train=False)
        self.ema.eval()
        cond = self.ema.encode(t["images"], t["proprio"], t["goal_image"], t["goal_gap"])
        shape = tuple(t["actions"].shape)
        x = self.diffusion.sample(
            self.ema, cond, shape, self.cfg.policy.steps, 1.0, torch.Generator().manual_seed(0)
        )
        err = (x - t["actions"]).abs()
        return {"val_chunk_mae": float(err.mean()), "val_first_action_mae": float(err[:, 0].mean())}


def train(
    data: Sequence[str | Path],
    out: str | Path,
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
    bar: Any = None,
) -> dict[str, Any]:
    """Train (or resume) into ``out``; returns the final metrics. ``bar`` is a tqdm-like object."""
    trainer = Trainer(data, out, cfg)
    log(f"data: {len(trainer.train_set)} training steps from {trainer.train_set.num_episodes} episodes, "
        f"{trainer.val_set.num_episodes if trainer.val_set else 0} validation episodes; "
        f"{sum(p.numel() for p in trainer.net.parameters()) / 1e6:.2f} M parameters; "
        f"world size {trainer.world}")  # fmt: skip
    describe = lambda m: f", val chunk MAE {m['val_chunk_mae']:.4f} (normalized)"  # noqa: E731
    return fit(trainer, cfg.steps, cfg.checkpoint_every, log, bar, describe)
