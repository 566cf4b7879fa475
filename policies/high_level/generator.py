"""Subgoal-image generator: an image-to-image diffusion model built from diffusers parts.

The UNet (`diffusers.UNet2DModel`) sees the noisy subgoal concatenated on channels with the current
image (InstructPix2Pix's layout) and the task as a class embedding; index ``len(tasks)`` is the
null task. Training drops the image and the task independently (``cond_dropout`` each), so
sampling can apply two-way classifier-free guidance as InstructPix2Pix does::

    eps = uncond + image_w * (image - uncond) + task_w * (full - image)

where ``uncond`` sees neither condition, ``image`` only the current image, ``full`` both. The
three passes and the N candidates go through the UNet as one batch. The scheduler is DDIM with
trailing timestep spacing and a zero-terminal-SNR cosine schedule, v-prediction, which keeps
few-step sampling (4 to 8 steps) sharp.

Images are float tensors (B, 3, S, S) in [-1, 1]; S is ``GeneratorConfig.image_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel

from dexhier.checkpoints import CheckpointError, load_checkpoint, save_checkpoint

CHECKPOINT_TYPE = "dexhier.subgoal_generator"


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator's model and sampling settings.

    ``image_size``: side of the generated square image, px (the dataset's camera images are
    resized to it; the low level gets it resized back). ``offsets``: training pairs are (frame t,
    frame t + k) with k uniform in this range, control steps. ``channels``: UNet widths per
    resolution level (each a multiple of ``norm_groups``); ``attention`` in the lowest level only.
    Guidance weights of 1 need a single UNet pass per step (the latency budget on a CPU: N = 4
    candidates + selection in about 230 ms on one busy core); training drops both conditions
    anyway, so guided sampling stays available through `with_overrides`.
    """

    tasks: tuple[str, ...]
    camera: str = "scene"
    image_size: int = 32
    offsets: tuple[int, int] = (10, 20)
    channels: tuple[int, ...] = (32, 48, 64)
    layers_per_block: int = 1
    norm_groups: int = 16
    attention: bool = False
    train_timesteps: int = 1000
    steps: int = 4
    image_guidance: float = 1.0
    task_guidance: float = 1.0
    cond_dropout: float = 0.1
    candidates: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "offsets", tuple(self.offsets))
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be non-empty and unique, got {self.tasks}")
        levels = len(self.channels)
        if self.image_size < 8 or self.image_size % (2 ** (levels - 1)):
            raise ValueError(
                f"image_size {self.image_size} must be >= 8 and divisible by {2 ** (levels - 1)}"
            )
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of norm_groups {self.norm_groups}")
        lo, hi = self.offsets
        if not 1 <= lo <= hi:
            raise ValueError(f"offsets {self.offsets}: need 1 <= min <= max")
        if not 1 <= self.steps <= self.train_timesteps:
            raise ValueError(f"steps {self.steps} must be in [1, {self.train_timesteps}]")
        if not 0 <= self.cond_dropout < 0.5:
            raise ValueError("cond_dropout must be in [0, 0.5)")
        if self.candidates < 1:
            raise ValueError("candidates must be >= 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> GeneratorConfig:
        return cls(**doc)

    def with_overrides(self, **kw: Any) -> GeneratorConfig:
        """The same model with other sampling settings (steps, guidance, candidates)."""
        allowed = {"steps", "image_guidance", "task_guidance", "candidates"}
        bad = set(kw) - allowed
        if bad:
            raise ValueError(f"cannot override {sorted(bad)}; sampling settings are {sorted(allowed)}")
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def build_unet(cfg: GeneratorConfig) -> UNet2DModel:
    levels = len(cfg.channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=6,
        out_channels=3,
        block_out_channels=cfg.channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_groups,
        attention_head_dim=cfg.channels[-1] // 2,
        num_class_embeds=len(cfg.tasks) + 1,
    )


def build_scheduler(cfg: GeneratorConfig) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=cfg.train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        clip_sample=False,
    )


def images_to_model(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (..., H, W, 3) RGB -> float (N, 3, size, size) in [-1, 1] (area resize when needed).

    Raises ValueError on anything but uint8 RGB images (a float image, BGR-as-4-channels, CHW).
    """
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB (..., H, W, 3), got dtype {a.dtype}")
    if a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"images must have shape (..., H, W, 3) with RGB last, got {a.shape}")
    # A copy: episode arrays are read-only and torch does not take non-writable memory.
    x = torch.from_numpy(np.array(a.reshape(-1, *a.shape[-3:]), copy=True)).float().movedim(-1, 1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x / 127.5 - 1.0


def model_to_images(x: torch.Tensor, size: int | None = None) -> np.ndarray:
    """float (..., 3, S, S) in [-1, 1] -> uint8 (..., size, size, 3), bilinear resize when asked."""
    shape = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    out = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(1, -1)
    return out.reshape(*shape, *out.shape[1:]).numpy()


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (S, S, 3) RGB -> uint8 (size, size, 3): area-downsampled or bilinear-upsampled, as the
    generator's inputs and outputs are (``images_to_model``, ``model_to_images``)."""
    if image.shape[0] == size:
        return image
    return model_to_images(images_to_model(image, min(size, image.shape[0])), size)[0]


class SubgoalGenerator:
    """The generator: a UNet, its scheduler and config. ``sample`` is pure given its generator."""

    def __init__(self, cfg: GeneratorConfig, unet: UNet2DModel | None = None) -> None:
        self.config = cfg
        self.unet = unet if unet is not None else build_unet(cfg)
        self.scheduler = build_scheduler(cfg)
        self.null_task = len(cfg.tasks)

    def task_ids(self, tasks: Sequence[str]) -> torch.Tensor:
        """Class labels of ``tasks``; ValueError naming the known tasks for an unknown one."""
        ids = []
        for t in tasks:
            if t not in self.config.tasks:
                raise ValueError(f"unknown task {t!r}; this generator knows {list(self.config.tasks)}")
            ids.append(self.config.tasks.index(t))
        return torch.tensor(ids, dtype=torch.long)

    # ---------------------------------------------------------------- training
    def loss(
        self, current: torch.Tensor, target: torch.Tensor, task: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """v-prediction MSE for a batch of (current, future) images (B, 3, S, S) and task ids (B,)."""
        b = current.shape[0]
        p = self.config.cond_dropout
        drop_image = torch.rand(b, generator=gen) < p
        drop_task = torch.rand(b, generator=gen) < p
        current = torch.where(drop_image[:, None, None, None], torch.zeros_like(current), current)
        task = torch.where(drop_task, torch.full_like(task, self.null_task), task)
        noise = torch.randn(target.shape, generator=gen)
        t = torch.randint(0, self.config.train_timesteps, (b,), generator=gen)
        noisy = self.scheduler.add_noise(target, noise, t)
        v = self.scheduler.get_velocity(target, noise, t)
        pred = self.unet(torch.cat([noisy, current], 1), t, class_labels=task).sample
        return F.mse_loss(pred, v)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        current: torch.Tensor,
        task: torch.Tensor,
        candidates: int | None = None,
        steps: int | None = None,
        gen: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Candidate subgoals (B, N, 3, S, S) in [-1, 1] for ``current`` (B, 3, S, S), ``task`` (B,)."""
        cfg = self.config
        n = candidates or cfg.candidates
        steps = steps or cfg.steps
        b, _, s, _ = current.shape
        if current.shape[1:] != (3, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"current must be (B, 3, {cfg.image_size}, {cfg.image_size}), got {tuple(current.shape)}"
            )
        cur = current.repeat_interleave(n, 0)
        tsk = task.repeat_interleave(n, 0)
        bn = b * n
        null = torch.full_like(tsk, self.null_task)
        wi, wt = cfg.image_guidance, cfg.task_guidance
        # Only the passes the guidance weights need, in one batch: with both weights 1 the formula
        # reduces to the fully conditioned pass alone.
        passes: list[tuple[torch.Tensor, torch.Tensor]] = [(cur, tsk)]
        if wt != 1.0 or wi != 1.0:
            passes.append((cur, null))  # image only
        if wi != 1.0:
            passes.append((torch.zeros_like(cur), null))  # unconditional
        cond_img = torch.cat([p[0] for p in passes])
        cond_task = torch.cat([p[1] for p in passes])
        sched = build_scheduler(cfg)  # a private copy: set_timesteps mutates it
        sched.set_timesteps(steps)
        x = torch.randn((bn, 3, s, s), generator=gen)
        self.unet.eval()
        for t in sched.timesteps:
            inp = torch.cat([x] * len(passes))
            pred = self.unet(torch.cat([inp, cond_img], 1), t, class_labels=cond_task).sample
            out = pred.chunk(len(passes))
            full = out[0]
            image = out[1] if len(out) > 1 else full
            uncond = out[2] if len(out) > 2 else image
            guided = uncond + wi * (image - uncond) + wt * (full - image)
            x = sched.step(guided, t, x).prev_sample
        return x.clamp(-1, 1).view(b, n, 3, s, s)

    # ---------------------------------------------------------------- checkpoints
    def save(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        stats = {"image": {"scale": 1 / 127.5, "offset": -1.0, "note": "uint8 RGB -> [-1, 1]"}}
        return save_checkpoint(
            directory,
            CHECKPOINT_TYPE,
            {"generator": self.config.to_json()},
            self.unet.state_dict(),
            stats,
            metrics,
        )

    @classmethod
    def load(cls, directory: str | Path, **overrides: Any) -> SubgoalGenerator:
        """Load a checkpoint; ``overrides`` change sampling settings (steps, guidance, candidates)."""
        doc, weights, _stats = load_checkpoint(directory, CHECKPOINT_TYPE)
        try:
            cfg = GeneratorConfig.from_json(doc["config"]["generator"]).with_overrides(**overrides)
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{directory}: bad subgoal generator config: {err}") from err
        unet = build_unet(cfg)
        try:
            unet.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{directory}: weights do not match the config: {err}") from err
        return cls(cfg, unet.eval())
