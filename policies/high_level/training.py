"""Training the subgoal generator (``dexhier train subgoal``) on episode datasets, expert or teleop.

Pairs are (frame t, frame t + k, task) of the same episode, k uniform in ``GeneratorConfig.offsets``
(clipped to the episode's last frame). Recipe: AdamW, warm-up + cosine decay, EMA of the weights
(saved as the checkpoint), gradient clipping at 1. Checkpoints and the resumable state every
``checkpoint_every`` steps; the same command resumes; data parallel under torchrun like the low
level (`policies.optim`).

Validation: per-pixel MSE (images in [-1, 1]) between one sampled subgoal and the true future frame
of held-out episodes, next to the MSE of simply repeating the current frame: a generator that does
not beat that baseline has learned nothing about progress.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dexhier import vocabulary as V
from dexhier.checkpoints import (
    load_train_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_train_state,
)
from dexhier.episodes import EpisodeDataset
from policies.high_level.generator import GeneratorConfig, SubgoalGenerator, build_unet, images_to_model
from policies.optim import allreduce_gradients, dist_info, ema_update, fit, warmup_cosine


class SubgoalPairs:
    """Every episode's camera frames at the generator's resolution, with its task id."""

    def __init__(self, roots: Sequence[str | Path], camera: str, size: int, min_steps: int) -> None:
        if not roots:
            raise ValueError("no dataset given")
        self.frames: list[torch.Tensor] = []  # per episode: float (T, 3, size, size) in [-1, 1]
        self.task_names: list[str] = []
        key = V.rgb_key(camera)
        for root in roots:
            ds = EpisodeDataset(root)
            for ep in ds:
                if len(ep) < min_steps:
                    continue
                if key not in ep.keys:
                    raise ValueError(f"{ep.path}: no {key!r} images (cameras: {ds.meta.get('cameras')})")
                task = ep.meta.get("task") or ds.meta.get("task")
                if not task:
                    raise ValueError(f"{ep.path}: the episode meta names no task")
                self.frames.append(images_to_model(ep[key], size))
                self.task_names.append(str(task))
        if not self.frames:
            raise ValueError(f"no episodes with >= {min_steps} steps in {list(map(str, roots))}")
        self.tasks = tuple(sorted(set(self.task_names)))

    def __len__(self) -> int:
        return len(self.frames)

    def subset(self, episodes: Sequence[int]) -> SubgoalPairs:
        out = SubgoalPairs.__new__(SubgoalPairs)
        out.frames = [self.frames[i] for i in episodes]
        out.task_names = [self.task_names[i] for i in episodes]
        out.tasks = self.tasks
        return out

    def sample(
        self, n: int, offsets: tuple[int, int], tasks: tuple[str, ...], rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(current, future, task ids): (n, 3, S, S), (n, 3, S, S), (n,); episodes weighted by length."""
        lengths = np.array([len(f) for f in self.frames])
        eps = rng.choice(len(self.frames), size=n, p=lengths / lengths.sum())
        cur, fut, ids = [], [], []
        for e in eps:
            frames = self.frames[e]
            t = int(rng.integers(0, len(frames) - 1))
            k = int(rng.integers(offsets[0], offsets[1] + 1))
            cur.append(frames[t])
            fut.append(frames[min(t + k, len(frames) - 1)])
            ids.append(tasks.index(self.task_names[e]))
        return torch.stack(cur), torch.stack(fut), torch.tensor(ids, dtype=torch.long)


@dataclass(frozen=True)
class HighLevelRecipe:
    """What the high level's trainers share. Counts are optimizer steps or samples."""

    steps: int = 6000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup: int = 200
    checkpoint_every: int = 500
    val_episodes: float = 0.05
    seed: int = 0
    camera: str = "scene"
    image_size: int = 32
    offsets: tuple[int, int] = (10, 20)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.warmup < 1:
            raise ValueError("steps, batch_size, checkpoint_every and warmup must be >= 1")
        if not 0.0 <= self.val_episodes < 0.5:
            raise ValueError("val_episodes must be in [0, 0.5)")

    def recipe_key(self) -> str:
        """What must match to resume: everything but the step budget and checkpoint period."""
        doc = asdict(self)
        doc.pop("steps"), doc.pop("checkpoint_every")
        return json.dumps(doc, sort_keys=True, default=str)


@dataclass(frozen=True)
class SubgoalTrainConfig(HighLevelRecipe):
    """The generator's recipe: AdamW, warm-up + cosine, EMA 0.999."""

    ema_decay: float = 0.999
    channels: tuple[int, ...] = (32, 48, 64)
    init_from: str | None = None
    """A generator checkpoint to start from (fine-tuning, e.g. to add a task): its EMA weights,
    with the class-embedding rows mapped by task name; a task it does not know starts from its
    null-task row."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_from is not None and not (Path(self.init_from) / "config.json").is_file():
            raise FileNotFoundError(f"--init-from: no generator checkpoint at {self.init_from}")

    def recipe_key(self) -> str:
        doc = json.loads(super().recipe_key())
        doc.pop("init_from")  # a resume continues whatever the run started from
        return json.dumps(doc, sort_keys=True, default=str)


class SubgoalTrainer:
    """One training run into ``out``; see the module docstring."""

    def __init__(self, data: Sequence[str | Path], out: str | Path, cfg: SubgoalTrainConfig) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.rank, self.world = dist_info()
        pairs = SubgoalPairs(data, cfg.camera, cfg.image_size, min_steps=2)
        self.gen_cfg = GeneratorConfig(
            tasks=pairs.tasks, camera=cfg.camera, image_size=cfg.image_size, offsets=cfg.offsets,
            channels=cfg.channels,
        )  # fmt: skip
        order = np.random.default_rng(cfg.seed).permutation(len(pairs))
        n_val = int(round(cfg.val_episodes * len(pairs)))
        self.train_set = pairs.subset(sorted(order[n_val:]))
        self.val_set = pairs.subset(sorted(order[:n_val])) if n_val else None
        torch.manual_seed(cfg.seed)
        self.model = SubgoalGenerator(self.gen_cfg)
        self.ema = build_unet(self.gen_cfg)
        self.ema.load_state_dict(self.model.unet.state_dict())
        self.ema.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        if not self._resume() and cfg.init_from is not None:
            self._init_from(cfg.init_from)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank + 7919 * self.step)
        self.rng = np.random.default_rng([cfg.seed, self.rank, self.step])

    def _init_from(self, directory: str) -> None:
        start = SubgoalGenerator.load(directory)
        old, new = start.config, self.gen_cfg
        same = ("camera", "image_size", "channels", "layers_per_block", "norm_groups", "attention")
        if any(getattr(old, k) != getattr(new, k) for k in same):
            raise ValueError(f"--init-from {directory}: another network, camera or image size than this run")
        weights = start.unet.state_dict()
        key = "class_embedding.weight"
        rows = weights[key]
        null = rows[len(old.tasks)]
        weights[key] = torch.stack(
            [rows[old.tasks.index(t)] if t in old.tasks else null for t in new.tasks] + [null]
        )
        self.model.unet.load_state_dict(weights)
        self.ema.load_state_dict(weights)

    def _resume(self) -> bool:
        state = load_train_state(self.out)
        if state is None:
            return False
        tensors, meta = state
        if meta.get("recipe") != self.cfg.recipe_key() or meta.get("tasks") != list(self.gen_cfg.tasks):
            raise ValueError(
                f"{self.out} holds training state of another recipe or data; use a new --out or delete "
                f"{self.out}/train_state.*"
            )
        self.model.unet.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        optimizer_from_tensors(self.opt, tensors, meta["optimizer"])
        self.step = int(meta["step"])
        return True

    def generator(self) -> SubgoalGenerator:
        """The EMA weights as a generator (shares the EMA module)."""
        return SubgoalGenerator(self.gen_cfg, self.ema)

    def save(self, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.generator().save(self.out, metrics)
        opt_t, opt_meta = optimizer_to_tensors(self.opt)
        tensors = {**{f"net.{k}": v for k, v in self.model.unet.state_dict().items()},
                   **{f"ema.{k}": v for k, v in self.ema.state_dict().items()}, **opt_t}  # fmt: skip
        meta = {"step": self.step, "optimizer": opt_meta, "recipe": self.cfg.recipe_key(),
                "tasks": list(self.gen_cfg.tasks), "world_size": self.world}  # fmt: skip
        save_train_state(self.out, tensors, meta)

    def train_step(self) -> float:
        cfg = self.cfg
        self.model.unet.train()
        cur, fut, ids = self.train_set.sample(cfg.batch_size, cfg.offsets, self.gen_cfg.tasks, self.rng)
        loss = self.model.loss(cur, fut, ids, self.gen)
        for g in self.opt.param_groups:
            g["lr"] = warmup_cosine(self.step, cfg.steps, cfg.warmup, cfg.lr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            allreduce_gradients(self.model.unet, self.world)
        torch.nn.utils.clip_grad_norm_(self.model.unet.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        ema_update(self.ema, self.model.unet, cfg.ema_decay, self.step)
        return float(loss.detach())

    @torch.no_grad()
    def validate(self, n: int = 32) -> dict[str, float]:
        """Per-pixel MSE of one sample vs the true future frame, and of repeating the current frame."""
        data = self.val_set or self.train_set
        cur, fut, ids = data.sample(n, self.cfg.offsets, self.gen_cfg.tasks, np.random.default_rng(12345))
        x = self.generator().sample(cur, ids, candidates=1, gen=torch.Generator().manual_seed(0))[:, 0]
        return {
            "val_mse": float(((x - fut) ** 2).mean()),
            "val_mse_copy_current": float(((cur - fut) ** 2).mean()),
        }


def train_subgoal(
    data: Sequence[str | Path],
    out: str | Path,
    cfg: SubgoalTrainConfig,
    log: Callable[[str], None] = print,
    bar: Any = None,
) -> dict[str, Any]:
    """Train (or resume) the generator into ``out``; returns the final metrics (``bar``: tqdm-like)."""
    trainer = SubgoalTrainer(data, out, cfg)
    n_params = sum(p.numel() for p in trainer.model.unet.parameters()) / 1e6
    n_val = len(trainer.val_set) if trainer.val_set is not None else 0
    tasks = list(trainer.gen_cfg.tasks)
    log(f"data: {len(trainer.train_set)} training episodes, {n_val} validation; tasks {tasks}; "
        f"{n_params:.2f} M parameters; world size {trainer.world}")  # fmt: skip
    describe = lambda m: (f", val MSE {m['val_mse']:.4f} (repeating the current frame: "  # noqa: E731
                          f"{m['val_mse_copy_current']:.4f})")  # fmt: skip
    return fit(trainer, cfg.steps, cfg.checkpoint_every, log, bar, describe)


# --- the subgoal filter ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressTrainConfig(HighLevelRecipe):
    """The progress classifier's recipe (AdamW, warm-up + cosine, no EMA)."""

    steps: int = 3000
    batch_size: int = 128
    warmup: int = 100
    val_episodes: float = 0.1


class ProgressTrainer:
    """One training run of the progress classifier into ``out``."""

    def __init__(self, data: Sequence[str | Path], out: str | Path, cfg: ProgressTrainConfig) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.rank, self.world = dist_info()
        pairs = SubgoalPairs(data, cfg.camera, cfg.image_size, min_steps=2)
        order = np.random.default_rng(cfg.seed).permutation(len(pairs))
        self.n_val = int(round(cfg.val_episodes * len(pairs)))
        self.train_set = pairs.subset(sorted(order[self.n_val :]))
        self.val_set = pairs.subset(sorted(order[: self.n_val])) if self.n_val else self.train_set
        torch.manual_seed(cfg.seed)
        self.model, self.tasks = self._make_model(pairs.tasks)
        self.train_ids = [self.tasks.index(t) for t in self.train_set.task_names]
        self.val_ids = [self.tasks.index(t) for t in self.val_set.task_names]
        self.opt = torch.optim.AdamW(self.model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        state = load_train_state(self.out)
        if state is not None:
            tensors, meta = state
            if meta.get("recipe") != cfg.recipe_key() or meta.get("tasks") != list(self.tasks):
                raise ValueError(
                    f"{self.out} holds training state of another recipe or data; use a new --out"
                )
            self.model.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
            optimizer_from_tensors(self.opt, tensors, meta["optimizer"])
            self.step = int(meta["step"])
        self.rng = np.random.default_rng([cfg.seed, self.rank, self.step])

    def _make_model(self, tasks: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
        from policies.high_level.progress import ProgressClassifier, ProgressConfig

        self.pcfg = ProgressConfig(tasks=tasks, image_size=self.cfg.image_size)
        return ProgressClassifier(self.pcfg), self.pcfg.tasks

    def _batch(self, data: SubgoalPairs, ids: list[int], n: int, rng: np.random.Generator) -> tuple:
        from policies.high_level.progress import progress_batch

        return progress_batch(data.frames, ids, n, self.cfg.offsets, len(self.pcfg.tasks), self.pcfg.mix, rng)

    def train_step(self) -> float:
        from policies.high_level.progress import bce

        cfg = self.cfg
        self.model.net.train()
        cur, cand, task, label, _ = self._batch(self.train_set, self.train_ids, cfg.batch_size, self.rng)
        return self._optimize(bce(self.model.net(cur, cand, task), label))

    def _optimize(self, loss: torch.Tensor) -> float:
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = warmup_cosine(self.step, cfg.steps, cfg.warmup, cfg.lr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            allreduce_gradients(self.model.net, self.world)
        self.opt.step()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Accuracy on held-out pairs, overall and per kind (positive, wrong task, reversed, wrong goal)."""
        cur, cand, task, label, kinds = self._batch(
            self.val_set, self.val_ids, 1024, np.random.default_rng(12345)
        )
        self.model.net.eval()
        correct = ((self.model.net(cur, cand, task) > 0).float() == label).numpy()
        names = ("positive", "wrong_task", "reversed", "wrong_goal")
        acc = {
            f"val_acc_{names[k]}": float(correct[kinds == k].mean()) for k in range(4) if (kinds == k).any()
        }
        return {"val_acc": float(correct.mean()), **acc}

    def save(self, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.model.save(self.out, metrics)
        opt_t, opt_meta = optimizer_to_tensors(self.opt)
        tensors = {**{f"net.{k}": v for k, v in self.model.net.state_dict().items()}, **opt_t}
        meta = {"step": self.step, "optimizer": opt_meta, "recipe": self.cfg.recipe_key(),
                "tasks": list(self.tasks), "world_size": self.world}  # fmt: skip
        save_train_state(self.out, tensors, meta)


def train_progress(
    data: Sequence[str | Path],
    out: str | Path,
    cfg: ProgressTrainConfig,
    log: Callable[[str], None] = print,
    bar: Any = None,
) -> dict[str, Any]:
    """Train (or resume) the progress classifier into ``out``; returns the final metrics."""
    return _fit_pairs(
        ProgressTrainer(data, out, cfg), log, bar, lambda m: f", val accuracy {m['val_acc']:.3f}"
    )


def _fit_pairs(trainer: ProgressTrainer, log: Callable[[str], None], bar: Any, describe: Callable) -> dict:
    log(f"data: {len(trainer.train_set)} training episodes, {trainer.n_val} validation; "
        f"tasks {list(trainer.tasks)}; world size {trainer.world}")  # fmt: skip
    return fit(trainer, trainer.cfg.steps, trainer.cfg.checkpoint_every, log, bar, describe)


# --- the value (reachability) selection --------------------------------------------------------------


@dataclass(frozen=True)
class ReachabilityTrainConfig(ProgressTrainConfig):
    """The reachability estimator's recipe: the classifier's, with the distance horizon."""

    horizon: int = 60


class ReachabilityTrainer(ProgressTrainer):
    """Regresses normalized temporal distances (``policies.high_level.reachability``)."""

    cfg: ReachabilityTrainConfig

    def _make_model(self, tasks: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
        from policies.high_level.reachability import ReachabilityConfig, ReachabilityEstimator

        rcfg = ReachabilityConfig(tasks=tasks, image_size=self.cfg.image_size, horizon=self.cfg.horizon,
                                  target=float(np.mean(self.cfg.offsets)) / self.cfg.horizon)  # fmt: skip
        return ReachabilityEstimator(rcfg), rcfg.tasks

    def _batch(self, data: SubgoalPairs, ids: list[int], n: int, rng: np.random.Generator) -> tuple:
        from policies.high_level.reachability import distance_batch

        return distance_batch(data.frames, ids, n, self.cfg.horizon, rng)

    def train_step(self) -> float:
        from policies.high_level.reachability import distance_loss

        cur, goal, task, target, _ = self._batch(
            self.train_set, self.train_ids, self.cfg.batch_size, self.rng
        )
        self.model.net.train()
        return self._optimize(distance_loss(self.model.forward(cur, goal, task), target))

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean absolute distance error on forward pairs (in steps) and the share of reversed and
        foreign pairs judged unreachable."""
        cur, goal, task, target, kinds = self._batch(
            self.val_set, self.val_ids, 1024, np.random.default_rng(12345)
        )
        self.model.net.eval()
        d = self.model.forward(cur, goal, task)
        fwd, back = kinds == 0, kinds != 0
        reach = self.model.config.reach
        return {
            "val_distance_mae_steps": float((d - target).abs()[fwd].mean()) * self.cfg.horizon,
            "val_unreachable_recall": float((d[back] > reach).float().mean()) if back.any() else float("nan"),
            "val_forward_reachable": float((d[fwd & (target.numpy() < reach)] <= reach).float().mean()),
        }


def train_reachability(
    data: Sequence[str | Path],
    out: str | Path,
    cfg: ReachabilityTrainConfig,
    log: Callable[[str], None] = print,
    bar: Any = None,
) -> dict[str, Any]:
    """Train (or resume) the reachability estimator into ``out``; returns the final metrics."""
    describe = lambda m: f", val distance MAE {m['val_distance_mae_steps']:.1f} steps"  # noqa: E731
    return _fit_pairs(ReachabilityTrainer(data, out, cfg), log, bar, describe)
