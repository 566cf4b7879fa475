"""Training the affordance encoder on synthetic clouds (``dexhier train affordance``).

Recipe (2 CPU cores): generate ``n_train`` + ``n_val`` synthetic samples (cached in
``OUT/data/``), then AdamW with a cosine learning-rate schedule on smooth-L1 losses of the
normalized regression targets plus a binary cross-entropy for graspability. A checkpoint and
the resumable training state are written every ``checkpoint_every`` steps; running the same
command again resumes from them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dexhier.checkpoints import (
    load_train_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_train_state,
)
from perception.encoder import (
    PAIR_TARGETS,
    TOOL_TARGETS,
    AffordanceEncoder,
    AffordanceNet,
    EncoderConfig,
    Normalizer,
)
from perception.synthetic import SyntheticConfig, generate


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Counts are samples or optimizer steps."""

    n_train: int = 12000
    n_val: int = 1000
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    checkpoint_every: int = 500
    jitter: float = 0.0003
    """Std of the per-point jitter added in training, m."""
    seed: int = 0
    workers: int = 2
    net: EncoderConfig = field(default_factory=EncoderConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if (
            min(self.n_train, self.n_val, self.steps, self.batch_size, self.checkpoint_every, self.workers)
            < 1
        ):
            raise ValueError("sample counts, steps, batch size, checkpoint interval and workers must be >= 1")


def dataset(path: Path, n: int, seed: int, cfg: TrainConfig, progress: Callable[[int], None] | None) -> dict:
    """Load the cached synthetic set at ``path`` or generate and cache it."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    data = generate(n, seed, cfg.synthetic, workers=cfg.workers, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)
    return data


def losses(net: AffordanceNet, norm: Normalizer, batch: dict[str, np.ndarray], jitter: float = 0.0) -> dict:
    """Loss terms of one batch (dict of arrays as produced by the generator)."""
    tool, obj = batch["tool"], batch["object"]
    if jitter > 0:
        tool = tool + np.random.normal(0, jitter, tool.shape).astype(np.float32)
        obj = obj + np.random.normal(0, jitter, obj.shape).astype(np.float32)
    tool_n, obj_n = norm.inputs(tool, obj)
    out = net(tool_n, obj_n)
    mask = torch.as_tensor(batch["object_valid"], dtype=torch.float32)
    tool_loss = F.smooth_l1_loss(out["tool"], norm.targets(batch, TOOL_TARGETS), beta=0.1)
    pair_err = F.smooth_l1_loss(out["pair"], norm.targets(batch, PAIR_TARGETS), beta=0.1, reduction="none")
    denom = mask.sum().clamp(min=1.0)
    pair_loss = (pair_err.mean(-1) * mask).sum() / denom
    bce = F.binary_cross_entropy_with_logits(
        out["graspable_logit"], torch.as_tensor(batch["graspable"], dtype=torch.float32), reduction="none"
    )
    grasp_loss = (bce * mask).sum() / denom
    return {
        "total": tool_loss + pair_loss + 0.5 * grasp_loss,
        "tool": tool_loss,
        "pair": pair_loss,
        "grasp": grasp_loss,
    }


def metrics(encoder: AffordanceEncoder, data: dict[str, np.ndarray], batch: int = 256) -> dict[str, float]:
    """Errors of an encoder on a labelled set (millimetres and degrees for humans)."""
    preds: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(data["tool"]), batch):
        out = encoder.predict_batch(data["tool"][i : i + batch], data["object"][i : i + batch])
        for k, v in out.items():
            preds.setdefault(k, []).append(v)
    p = {k: np.concatenate(v) for k, v in preds.items()}
    ok = data["object_valid"].astype(bool)
    grasp_pred = p["graspable_prob"] >= 0.5
    return {
        "samples": int(len(data["tool"])),
        "tip_gap_mae_mm": float(1000 * np.abs(p["tip_gap"] - data["tip_gap"]).mean()),
        "tip_gap_p95_mm": float(1000 * np.quantile(np.abs(p["tip_gap"] - data["tip_gap"]), 0.95)),
        "angle_mae_deg": float(np.degrees(np.abs(p["opening_angle"] - data["opening_angle"]).mean())),
        "max_gap_mae_mm": float(1000 * np.abs(p["max_gap"] - data["max_gap"]).mean()),
        "object_samples": int(ok.sum()),
        "approach_opening_mae_mm": float(
            1000 * np.abs(p["approach_opening"] - data["approach_opening"])[ok].mean()
        ),
        "contact_opening_mae_mm": float(
            1000 * np.abs(p["contact_opening"] - data["contact_opening"])[ok].mean()
        ),
        "graspable_accuracy": float((grasp_pred == data["graspable"].astype(bool))[ok].mean()),
        "graspable_negatives": int((~data["graspable"].astype(bool))[ok].sum()),
    }


def train(
    out: Path, cfg: TrainConfig, log: Callable[[str], None] = print, bar: Any = None
) -> dict[str, float]:
    """Train (or resume) into ``out``; returns the validation metrics of the final checkpoint.

    ``bar`` is an optional progress object with ``update(n)``/``set_postfix(**kw)`` (tqdm).
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    log(f"data: {cfg.n_train} train + {cfg.n_val} validation synthetic clouds (cached in {out / 'data'})")

    def progress(what: str, total: int) -> Callable[[int], None]:
        marks = {round(total * f / 10) for f in range(1, 11)}

        def report(done: int) -> None:
            if any(done >= m > done - cfg.synthetic.samples_per_tool for m in marks):
                log(f"{what}: {done}/{total} clouds ({time.perf_counter() - t0:.0f} s)")

        return report

    train_path = out / "data" / f"train_s{cfg.seed}_n{cfg.n_train}.npz"
    train_set = dataset(train_path, cfg.n_train, cfg.seed, cfg, progress("train data", cfg.n_train))
    val_path = out / "data" / f"val_s{cfg.seed + 1}_n{cfg.n_val}.npz"
    val_set = dataset(val_path, cfg.n_val, cfg.seed + 1, cfg, progress("validation data", cfg.n_val))
    log(f"data ready in {time.perf_counter() - t0:.0f} s")
    norm = Normalizer.fit(train_set)
    net = AffordanceNet(cfg.net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    state = load_train_state(out)
    if state is not None and state[1].get("recipe") == _recipe_key(cfg):
        tensors, meta = state
        net.load_state_dict({k[len("net.") :]: v for k, v in tensors.items() if k.startswith("net.")})
        optimizer_from_tensors(opt, tensors, meta["optimizer"])
        norm = Normalizer(**meta["normalizer"])
        step = int(meta["step"])
        log(f"resuming at step {step}")
    encoder = AffordanceEncoder(net, norm, cfg.net, cfg.synthetic.cloud)
    rng = np.random.default_rng(cfg.seed + 7 + step)
    n = len(train_set["tool"])
    if bar is not None:
        bar.update(step)
    while step < cfg.steps:
        net.train()
        idx = rng.integers(0, n, cfg.batch_size)
        batch = {k: v[idx] for k, v in train_set.items()}
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = losses(net, norm, batch, cfg.jitter)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss['total'].item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            net.eval()
            m = metrics(encoder, val_set)
            encoder.save(out, {**m, "step": step, "train_seconds": time.perf_counter() - t0})
            opt_tensors, opt_meta = optimizer_to_tensors(opt)
            tensors = {**{f"net.{k}": v for k, v in net.state_dict().items()}, **opt_tensors}
            save_train_state(out, tensors, {"step": step, "optimizer": opt_meta, "normalizer": asdict(norm),
                                            "recipe": _recipe_key(cfg)})  # fmt: skip
            log(f"step {step}: val tip-gap MAE {m['tip_gap_mae_mm']:.2f} mm, "
                f"graspable acc {m['graspable_accuracy']:.3f}")  # fmt: skip
    net.eval()
    return metrics(encoder, val_set)


def _recipe_key(cfg: TrainConfig) -> str:
    """What must match for a resume: the data and the network (not the step budget)."""
    return f"{cfg.seed}-{cfg.n_train}-{cfg.n_val}-{cfg.net}-{cfg.batch_size}"
